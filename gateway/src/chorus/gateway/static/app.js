// Chorus web page: start a team, watch it think, steer it, export it.
//
// Everything comes from the gateway's REST + SSE API (/api/v1). Model output is only ever
// put in the page with textContent (never parsed as HTML), so it cannot inject markup.
//
// Resume: the page keeps the run being watched (its id, the last seq seen and the rendered
// transcript) in sessionStorage and the run id in the URL (#run=<id>). A reload renders the
// saved transcript and resumes the stream with Last-Event-ID = last seq, so nothing repeats.
//
// run_resumed: the run continues on another orchestrator replica from its checkpoint at
// fromSeq; what events after fromSeq built (the interrupted turn's partial message) is
// removed — items remember the seq that created them, turns a snapshot at each boundary
// (tool call finished, message completed), where checkpoints are taken — and a notice says
// the turn starts again.
//
// Cards: every message gets its own card under its own agent, in seq order, for every team
// kind. A turn (agent_started … agent_finished) is one card; a message outside a turn — a
// MagenticOne orchestrator's facts, plan, instructions and final answer — is a card of its
// own, closed when it completes. Artifacts (charts) show inside the card of the turn whose
// tool made them, images inline.
//
// Input (issue 21, human in the loop): `input_requested` adds an input card to the
// transcript — an approval shows the agent, the tool's name and its arguments (pretty JSON)
// with Approve / Deny (Deny asks for an optional reason); a text request shows the prompt,
// a textarea and Send. The card posts to POST /runs/{id}/input with a requestId made once
// per card, so a double click answers once. `input_received` (or the reply of that POST)
// shows the outcome on the card and its buttons go. A reload rebuilds the card from the
// saved transcript or from the replayed events: pending until an input_received follows.
// The conversation list marks conversations whose run waits ("waiting for you").
//
// Delete (issue 20's leftover): the run head's Delete and each conversation's × ask for a
// confirmation, then call DELETE /runs/{id} or DELETE /conversations/{id} (an active run is
// cancelled first by the gateway). The run shown goes from the page when it, or its
// conversation, was deleted.
"use strict";

const API = "/api/v1";
const STORE_KEY = "chorus.run";
const KEY_KEY = "chorus.apiKey";
const SAVE_EVERY_MS = 300;
const TERMINAL = new Set(["run_completed", "run_failed", "run_cancelled"]);
const ACTIVE = new Set(["queued", "running", "awaiting_input"]);
const STATUS_TEXT = { awaiting_input: "waiting for you" };

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
};

// ---------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.status || "";
    this.details = err.details || [];
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, init);
  if (resp.status === 401 && (resp.headers.get("WWW-Authenticate") || "").startsWith("Bearer")) {
    showKeyPanel();
  }
  if (!resp.ok) {
    let payload = null;
    try { payload = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, payload);
  }
  if (resp.status === 204) return null;
  return resp.json();
}

function showKeyPanel() { $("apikey-panel").hidden = false; }

function banner(message) {
  const node = $("banner");
  node.textContent = message || "";
  node.hidden = !message;
}

// ---------------------------------------------------------------------------------------
// SSE over fetch (so Authorization headers work), parsed frame by frame.

async function readEvents(path, { afterSeq = 0, signal, onEvent }) {
  const headers = { ...authHeaders(), Accept: "text/event-stream" };
  if (afterSeq > 0) headers["Last-Event-ID"] = String(afterSeq);
  const resp = await fetch(API + path, { headers, signal, credentials: "same-origin" });
  if (resp.status === 204) return "ended";
  if (!resp.ok) {
    let payload = null;
    try { payload = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, payload);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "closed";
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
      }
      if (!data.length) continue;
      const payload = JSON.parse(data.join("\n"));
      if (type === "error") throw new ApiError(payload.error.code, payload);
      if (onEvent(type, payload) === "stop") return "ended";
    }
  }
}

// ---------------------------------------------------------------------------------------
// The run model (what is saved for resume) and its rendering

let model = null;        // {runId, lastSeq, status, title, maxTurns, turn, turns[], agents[], outcome}
let watching = null;     // AbortController of the current stream
let saveTimer = null;

function newModel(runId) {
  return { runId, lastSeq: 0, status: "queued", title: "", maxTurns: 0, turn: 0,
           turns: [], agents: [], outcome: null };
}

function save() {
  if (!model) return;
  try { sessionStorage.setItem(STORE_KEY, JSON.stringify(model)); } catch (_) { /* quota */ }
}

function scheduleSave() {
  if (saveTimer === null) saveTimer = setTimeout(() => { saveTimer = null; save(); }, SAVE_EVERY_MS);
}

function openTurn(agent) {
  for (let i = model.turns.length - 1; i >= 0; i--) {
    const t = model.turns[i];
    if (t.kind === "turn" && t.agent === agent && !t.done) return t;
  }
  return null;
}

// The agent's open card, or a new one: `started` when an agent_started opened it (then
// agent_finished closes it), else a message outside a turn (its message_completed does).
function newTurn(agent, seq, { turn = 0, started = false, done = false } = {}) {
  const t = { kind: "turn", agent, turn, started, text: "", reasoning: "", tools: [],
              artifacts: [], done, seq, last: seq, marks: [] };
  model.turns.push(t);
  return t;
}

function currentTurn(agent, seq) {
  const t = openTurn(agent);
  if (t) { t.last = seq; return t; }
  // A turn paused by a request for input goes on in a new card below the input card.
  const paused = model.turns.findLast((x) => x.kind === "turn" && x.agent === agent);
  if (paused && paused.paused && !paused.continued) {
    paused.continued = true;
    return newTurn(agent, seq, { turn: paused.turn, started: paused.started });
  }
  return newTurn(agent, seq);
}

// The agent's card holding tool call `id` (the latest first), or null.
function toolOwner(agent, id) {
  if (!id) return null;
  for (let i = model.turns.length - 1; i >= 0; i--) {
    const t = model.turns[i];
    if (t.kind === "turn" && t.agent === agent && t.tools.some((x) => x.id === id)) return t;
  }
  return null;
}

// A turn's state after a boundary event (where the orchestrator may checkpoint the run).
function mark(t, seq, done = t.done) {
  (t.marks = t.marks || []).push({ seq, text: t.text, reasoning: t.reasoning,
                                   tools: JSON.parse(JSON.stringify(t.tools)),
                                   artifacts: (t.artifacts || []).slice(), done });
}

// Forgets what events after `fromSeq` built: items they created go, turns they changed go
// back to their last boundary at or before it (or to empty when they had none).
function dropAfter(fromSeq) {
  model.turns = model.turns.filter((item) => (item.seq || 0) <= fromSeq);
  for (const t of model.turns) {
    if (t.kind !== "turn" || (t.last || 0) <= fromSeq) continue;
    const marks = (t.marks || []).filter((m) => m.seq <= fromSeq);
    const back = marks.length ? marks[marks.length - 1]
                              : { text: "", reasoning: "", tools: [], artifacts: [], done: false };
    t.text = back.text; t.reasoning = back.reasoning; t.done = back.done;
    t.tools = JSON.parse(JSON.stringify(back.tools));
    t.artifacts = (back.artifacts || []).slice();
    t.marks = marks;
    t.last = marks.length ? marks[marks.length - 1].seq : t.seq;
  }
}

// Applies one event to the model; returns the transcript item it changed (or null).
function apply(type, ev) {
  const seq = Number(ev.seq || 0);
  if (seq && seq <= model.lastSeq) return null;   // never apply an event twice
  if (seq) model.lastSeq = seq;
  const agent = ev.agent || "";
  switch (type) {
    case "run_started": {
      const run = ev.runStarted.run || {};
      const spec = run.spec || {};
      model.status = "running";
      model.conversationId = run.conversationId || "";
      model.title = spec.template || "custom team";
      model.maxTurns = spec.maxTurns || (spec.team && spec.team.maxTurns) || 0;
      // a human agent (issue 21) has no model or temperature to steer
      model.agents = ((spec.team && spec.team.agents) || []).filter((a) => !a.human).map((a) => ({
        name: a.name, temperature: a.temperature, systemPrompt: a.systemPrompt || "",
        model: a.model ? `${a.model.provider || ""}/${a.model.model || ""}` : "",
      }));
      return null;
    }
    case "agent_started":
      return newTurn(agent, seq, { turn: ev.agentStarted.turn || 0, started: true });
    case "text_delta": {
      const t = currentTurn(agent, seq);
      t.text += ev.textDelta.text || "";
      return t;
    }
    case "reasoning_delta": {
      const t = currentTurn(agent, seq);
      t.reasoning += ev.reasoningDelta.text || "";
      return t;
    }
    case "tool_call_started": {
      const t = currentTurn(agent, seq);
      const call = ev.toolCallStarted.call || {};
      t.tools.push({ id: call.id || "", name: call.name || "", args: call.arguments || "",
                     result: null, success: null });
      return t;
    }
    case "tool_call_finished": {
      const call = ev.toolCallFinished.call || {};
      const owner = toolOwner(agent, call.id);   // an approved call: in the card that made it
      if (owner) owner.last = seq;
      const t = owner || currentTurn(agent, seq);
      let tool = t.tools.find((x) => x.id && x.id === call.id);
      if (!tool) { tool = { id: call.id || "", name: call.name || "", args: call.arguments || "" }; t.tools.push(tool); }
      tool.result = ev.toolCallFinished.result || "";
      tool.success = !!ev.toolCallFinished.success;
      mark(t, seq);
      return t;
    }
    case "message_completed": {
      const t = currentTurn(agent, seq);
      const content = (ev.messageCompleted.message || {}).content || "";
      if (content) t.text = content;   // the whole message is authoritative
      if (!t.started) t.done = true;   // a message outside a turn: its own card, closed
      mark(t, seq, true);
      return t;
    }
    case "agent_finished": {
      const t = currentTurn(agent, seq);
      t.done = true;
      return t;
    }
    case "agent_updated": {
      const upd = ev.agentUpdated;
      const a = model.agents.find((x) => x.name === (upd.agent || {}).name);
      if (a) {
        if ("temperature" in (upd.agent || {})) a.temperature = upd.agent.temperature;
        if ((upd.fields || []).includes("system_prompt")) a.systemPrompt = upd.agent.systemPrompt || "";
      }
      const note = { kind: "note", seq, text: `${(upd.agent || {}).name} updated (${(upd.fields || []).join(", ")}) by ${upd.updatedBy || "?"}` };
      model.turns.push(note);
      if (a) refreshAgentForm(a);
      return note;
    }
    case "progress":
      model.turn = ev.progress.turn || 0;
      model.maxTurns = ev.progress.maxTurns || model.maxTurns;
      return null;
    case "artifact": {   // in the card of the turn whose tool made it
      const art = ev.artifact;
      const t = openTurn(agent) || newTurn(agent, seq, { done: true });
      t.last = seq;
      (t.artifacts = t.artifacts || []).push(
        { seq, name: art.name || "", mime: art.mimeType || "", data: art.data || "" });
      return t;
    }
    case "run_resumed": {
      const resumed = ev.runResumed || {};
      const fromSeq = Number(resumed.fromSeq || 0);
      dropAfter(fromSeq);
      const note = { kind: "note", seq, resumed: true,
                     text: `Run resumed (attempt ${resumed.attempt || "?"}) from event ${fromSeq}` +
                           " on another replica: the interrupted turn starts again." };
      model.turns.push(note);
      return note;
    }
    case "input_requested": {
      const r = ev.inputRequested || {};
      const call = r.toolCall || {};
      model.status = "awaiting_input";
      const open = openTurn(r.agent || agent);
      if (open) {   // its card closes here; what the agent does after the answer gets its own
        open.done = true; open.paused = true; open.last = seq; mark(open, seq, true);
        if (rendered.has(open)) renderItem(open);
      }
      const item = { kind: "input", seq, inputId: r.inputId || "",
                     approval: r.kind === "INPUT_KIND_APPROVAL", agent: r.agent || agent,
                     prompt: r.prompt || "", tool: call.name || "", args: call.arguments || "",
                     expireTime: r.expireTime || "", requestId: newRequestId(),
                     answer: null, error: "" };
      model.turns.push(item);
      scheduleConversations();
      return item;
    }
    case "input_received": {
      const r = ev.inputReceived || {};
      if (model.status === "awaiting_input") model.status = "running";
      scheduleConversations();
      return answerCard(r);
    }
    case "run_completed":
      model.status = "completed";
      model.outcome = { kind: "completed", text: ev.runCompleted.finalAnswer || "(no answer)" };
      return null;
    case "run_failed": {
      const err = ev.runFailed.error || {};
      model.status = "failed";
      model.outcome = { kind: "failed", text: `Failed: ${err.message || err.code || "unknown error"}` };
      return null;
    }
    case "run_cancelled": {
      const c = ev.runCancelled.cancellation || {};
      model.status = "cancelled";
      model.outcome = { kind: "cancelled", text: `Cancelled by ${c.requestedBy || "?"}${c.reason ? `: ${c.reason}` : ""}` };
      return null;
    }
    default:
      return null;
  }
}

const rendered = new Map();   // transcript item → its DOM node

function renderItem(item) {
  let node = rendered.get(item);
  if (!node) {
    node = el("div", item.kind === "turn" ? "turn" : item.kind);
    rendered.set(item, node);
    $("transcript").appendChild(node);
  }
  if (item.kind === "note") {
    node.textContent = item.text;
    node.classList.toggle("resumed", !!item.resumed);
    return;
  }
  if (item.kind === "input") {
    renderInput(item, node);
    return;
  }
  if (item.kind === "artifact") {   // a transcript saved by an earlier version of the page
    node.replaceChildren(el("div", "turn-head", `${item.agent}: ${item.name} (${item.mime})`),
                         artifactNode(item));
    return;
  }
  node.dataset.agent = item.agent;
  node.classList.toggle("active", !item.done);
  // A human agent's turn is its input card: the empty card it paused stays out of sight.
  node.hidden = !!item.paused && !item.text && !item.reasoning && !item.tools.length &&
                !(item.artifacts || []).length;
  let head = node.querySelector(".turn-head");
  if (!head) {
    head = el("div", "turn-head");
    head.append(el("span", "turn-agent", item.agent), el("span", "turn-number", item.turn ? `turn ${item.turn}` : ""));
    const reasoning = el("details", "turn-reasoning");
    reasoning.hidden = true;
    reasoning.append(el("summary", null, "reasoning"), el("pre"));
    node.append(head, reasoning, el("div", "turn-tools"), el("div", "turn-artifacts"),
                el("div", "turn-text"));
  }
  const reasoning = node.querySelector(".turn-reasoning");
  reasoning.hidden = !item.reasoning;
  reasoning.querySelector("pre").textContent = item.reasoning;
  const tools = node.querySelector(".turn-tools");
  while (tools.children.length < item.tools.length) {
    const d = el("details", "tool");
    d.append(el("summary"), el("div", "hint", "arguments"), el("pre", "tool-args"), el("div", "hint", "result"), el("pre", "tool-result"));
    tools.appendChild(d);
  }
  item.tools.forEach((tool, i) => {
    const d = tools.children[i];
    const state = tool.success === null || tool.success === undefined ? "running…" : tool.success ? "ok" : "failed";
    d.classList.toggle("failed", tool.success === false);
    d.querySelector("summary").textContent = `tool: ${tool.name} — ${state}`;
    d.querySelector(".tool-args").textContent = tool.args;
    d.querySelector(".tool-result").textContent = tool.result === null || tool.result === undefined ? "" : tool.result;
  });
  const artifacts = node.querySelector(".turn-artifacts");
  const shown = item.artifacts || [];
  if (artifacts.children.length !== shown.length) {
    artifacts.replaceChildren(...shown.map(artifactNode));
  }
  node.querySelector(".turn-text").textContent = item.text;
}

// ---------------------------------------------------------------------------------------
// Input cards (issue 21)

function newRequestId() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

function inputCard(inputId) {
  return model.turns.find((x) => x.kind === "input" && x.inputId === inputId) || null;
}

// Records an answer (an input_received event, or the reply of our own POST) on its card.
function answerCard(received) {
  const item = inputCard(received.inputId || "");
  if (!item) return null;
  const decision = received.decision || null;
  item.answer = { by: received.by || "", expired: !!received.expired,
                  text: received.text === undefined ? null : received.text,
                  approved: decision ? !!decision.approved : null,
                  reason: decision ? (decision.reason || "") : "" };
  item.error = "";
  return item;
}

function prettyJson(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

function answerText(item) {
  const a = item.answer;
  if (a.expired) return item.approval ? "Expired: nobody answered, so the call was denied" : "Expired: nobody answered";
  if (item.approval) {
    return a.approved ? `Approved by ${a.by || "?"}${a.reason ? `: ${a.reason}` : ""}`
                      : `Denied by ${a.by || "?"}${a.reason ? `: ${a.reason}` : ""}`;
  }
  return `Answered by ${a.by || "?"}: ${a.text || ""}`;
}

function renderInput(item, node) {
  node.className = "input-card";
  node.dataset.testid = "input-card";
  node.dataset.inputId = item.inputId;
  node.dataset.state = item.answer ? (item.answer.expired ? "expired"
    : item.approval ? (item.answer.approved ? "approved" : "denied") : "answered") : "pending";
  const head = el("div", "input-head");
  head.append(el("span", "turn-agent", item.agent || "the run"),
              el("span", null, item.approval ? "asks to run a tool" : "asks you"));
  const parts = [head];
  if (item.prompt) parts.push(el("div", "input-prompt", item.prompt));
  if (item.approval) {
    parts.push(el("div", "input-tool", `tool: ${item.tool}`));
    parts.push(el("pre", "input-args", prettyJson(item.args)));
  }
  if (item.answer) {
    parts.push(el("div", `input-outcome ${node.dataset.state}`, answerText(item)));
    node.replaceChildren(...parts);
    return;
  }
  if (TERMINAL.has(`run_${model.status}`)) {   // cancelled (or failed) while it waited
    node.dataset.state = "closed";
    parts.push(el("div", "input-outcome closed", `Not answered: the run ${model.status}`));
    node.replaceChildren(...parts);
    return;
  }
  const actions = el("div", "input-actions");
  const error = el("div", "input-error", item.error || "");
  error.hidden = !item.error;
  if (item.approval) {
    const approve = el("button", "primary input-approve", "Approve");
    const deny = el("button", "danger input-deny", "Deny");
    approve.type = deny.type = "button";
    const denyForm = el("div", "input-deny-form");
    denyForm.hidden = true;
    const reason = el("input", "input-reason");
    reason.placeholder = "Why (optional)";
    reason.maxLength = 1000;
    const confirm = el("button", "danger input-deny-confirm", "Deny the call");
    const back = el("button", "link", "back");
    confirm.type = back.type = "button";
    denyForm.append(reason, confirm, back);
    approve.addEventListener("click", () => submitInput(item, node, { decision: { approved: true } }));
    deny.addEventListener("click", () => { denyForm.hidden = false; actions.hidden = true; reason.focus(); });
    back.addEventListener("click", () => { denyForm.hidden = true; actions.hidden = false; });
    confirm.addEventListener("click", () => submitInput(item, node, {
      decision: { approved: false, reason: reason.value.trim() } }));
    reason.addEventListener("keydown", (e) => { if (e.key === "Enter") confirm.click(); });
    actions.append(approve, deny);
    parts.push(actions, denyForm);
  } else {
    const text = el("textarea", "input-text");
    text.rows = 3;
    text.placeholder = "Your answer";
    const send = el("button", "primary input-send", "Send");
    send.type = "button";
    send.addEventListener("click", () => {
      if (!text.value.trim()) { text.focus(); return; }
      submitInput(item, node, { text: text.value });
    });
    actions.append(send);
    parts.push(text, actions);
  }
  parts.push(error);
  node.replaceChildren(...parts);
}

async function submitInput(item, node, answer) {
  if (item.answer || node.dataset.sending) return;   // a double click answers once
  node.dataset.sending = "1";
  node.querySelectorAll("button, textarea, input").forEach((b) => { b.disabled = true; });
  try {
    const reply = await api(`/runs/${encodeURIComponent(model.runId)}/input`, {
      method: "POST", body: { inputId: item.inputId, ...answer, requestId: item.requestId } });
    answerCard((reply.event && reply.event.inputReceived) || {});
    if (model.status === "awaiting_input") model.status = "running";
    scheduleSave();
  } catch (err) {
    // Already answered (elsewhere, or expired): the stream shows the outcome soon.
    item.error = err.code === "FAILED_PRECONDITION" ? `Not answered: ${err.message}` : `Could not answer: ${err.message}`;
  } finally {
    delete node.dataset.sending;
  }
  renderItem(item);
  renderHead();
}

// An artifact: an image shown inline (SVG too: an <img> runs no script), else a download.
function artifactNode(art) {
  const figure = el("figure", "artifact");
  figure.dataset.name = art.name;
  const href = `data:${art.mime};base64,${art.data}`;
  if (/^image\/(png|jpeg|gif|webp|svg\+xml)$/.test(art.mime)) {
    const img = el("img"); img.src = href; img.alt = art.name; figure.appendChild(img);
  } else {
    const a = el("a", null, `download ${art.name}`); a.href = href; a.download = art.name;
    figure.appendChild(a);
  }
  figure.appendChild(el("figcaption", null, `${art.name} (${art.mime})`));
  return figure;
}

function renderHead() {
  $("run").hidden = false;
  $("run-title").textContent = model.title ? `${model.title} · ${model.runId.slice(0, 8)}` : model.runId.slice(0, 8);
  const status = $("status");
  status.textContent = STATUS_TEXT[model.status] || model.status;
  status.className = `status ${model.status}`;
  const active = ACTIVE.has(model.status);
  $("cancel").disabled = !active;
  const bar = $("progress");
  bar.max = Math.max(model.maxTurns || 1, 1);
  bar.value = Math.min(model.turn, bar.max);
  $("progress-label").textContent = model.maxTurns ? `turn ${model.turn} of ${model.maxTurns}` : (model.turn ? `turn ${model.turn}` : "");
  const outcome = $("outcome");
  outcome.hidden = !model.outcome;
  if (model.outcome) {
    outcome.className = `outcome ${model.outcome.kind}`;
    const title = { completed: "Final answer", failed: "Run failed", cancelled: "Run cancelled" };
    outcome.replaceChildren(el("span", "outcome-title", title[model.outcome.kind] || ""),
                            el("span", "outcome-text", model.outcome.text));
  }
  document.querySelectorAll(".agent button").forEach((b) => { b.disabled = !active; });
}

function renderAgents() {
  const box = $("agents");
  box.replaceChildren();
  $("agents-panel").hidden = !model || !model.agents.length;
  if (!model) return;
  const active = ACTIVE.has(model.status);
  for (const agent of model.agents) {
    const form = $("agent-template").content.firstElementChild.cloneNode(true);
    form.dataset.agent = agent.name;
    form.querySelector(".agent-name").textContent = agent.name;
    form.querySelector(".agent-model").textContent = agent.model;
    const temp = form.querySelector(".agent-temperature");
    temp.value = agent.temperature === undefined || agent.temperature === null ? "" : agent.temperature;
    const prompt = form.querySelector(".agent-prompt");
    prompt.value = agent.systemPrompt;
    form.querySelector("button").disabled = !active;
    form.addEventListener("submit", (e) => { e.preventDefault(); updateAgent(agent, temp, prompt, form); });
    box.appendChild(form);
  }
}

// Shows an agent's current values in its form, leaving a field the user is editing alone.
function refreshAgentForm(agent) {
  const form = document.querySelector(`#agents form[data-agent="${CSS.escape(agent.name)}"]`);
  if (!form) return;
  const temp = form.querySelector(".agent-temperature");
  const prompt = form.querySelector(".agent-prompt");
  if (document.activeElement !== temp) {
    temp.value = agent.temperature === undefined || agent.temperature === null ? "" : agent.temperature;
  }
  if (document.activeElement !== prompt) prompt.value = agent.systemPrompt;
}

function renderAll() {
  rendered.clear();
  $("transcript").replaceChildren();
  for (const item of model.turns) renderItem(item);
  renderHead();
  renderAgents();
}

// ---------------------------------------------------------------------------------------
// Watching a run (with resume)

async function watch(runId, { restored = false } = {}) {
  if (watching) watching.abort();
  const controller = new AbortController();
  watching = controller;
  if (!restored || !model || model.runId !== runId) {
    model = newModel(runId);
  }
  history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
  renderAll();
  save();
  let failures = 0;
  while (!controller.signal.aborted && !TERMINAL.has(`run_${model.status}`)) {
    const seqBefore = model.lastSeq;
    try {
      const end = await readEvents(`/runs/${encodeURIComponent(runId)}/events`, {
        afterSeq: model.lastSeq,
        signal: controller.signal,
        onEvent: (type, ev) => {
          if (watching !== controller) return "stop";
          const item = apply(type, ev);
          // run_resumed: the interrupted turn's nodes go; the end: unanswered cards close
          if (type === "run_resumed" || TERMINAL.has(type)) renderAll();
          else if (item) renderItem(item);
          if (type === "run_started") renderAgents();
          renderHead();
          scheduleSave();
          failures = 0;
          return TERMINAL.has(type) ? "stop" : undefined;
        },
      });
      if (end === "ended") break;
      if (model.lastSeq === seqBefore) {
        // The stream closed without news (a gateway restarting): back off, then resume.
        failures += 1;
        await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** failures, 8000)));
      }
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
        banner(`Cannot watch the run: ${err.message}`);
        break;
      }
      failures += 1;
      banner(`Connection lost (${err.message}); resuming…`);
      await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** failures, 8000)));
      continue;
    }
    banner("");
  }
  if (watching === controller) {
    banner("");
    save();
    renderHead();
    loadConversations();
  }
}

async function startRun(event) {
  event.preventDefault();
  banner("");
  const spec = { template: $("template").value, input: $("topic").value };
  const overrides = {};
  document.querySelectorAll("#agent-models select").forEach((select) => {
    if (select.value !== select.dataset.default) {
      const [provider, ...rest] = select.value.split("/");
      overrides[select.dataset.agent] = { provider, model: rest.join("/") };
    }
  });
  if (Object.keys(overrides).length) spec.modelOverrides = overrides;
  const maxTurns = parseInt($("max-turns").value, 10);
  if (maxTurns > 0) spec.maxTurns = maxTurns;
  spec.requestId = crypto.randomUUID ? crypto.randomUUID() : String(Date.now());
  $("start").disabled = true;
  try {
    const reply = await api("/runs", { method: "POST", body: spec });
    watch(reply.id);
  } catch (err) {
    banner(`Could not start: ${err.message}`);
  } finally {
    $("start").disabled = false;
  }
}

async function cancelRun() {
  if (!model) return;
  $("cancel").disabled = true;
  try {
    const reply = await api(`/runs/${encodeURIComponent(model.runId)}/cancel`, {
      method: "POST", body: { reason: "cancelled from the web page" } });
    if (!reply.cancelled) banner(reply.message);
  } catch (err) {
    banner(`Cancel failed: ${err.message}`);
    renderHead();
  }
}

// Stops showing the current run: its stream, its saved transcript and its #run= go.
function closeRun() {
  if (watching) watching.abort();
  watching = null;
  model = null;
  sessionStorage.removeItem(STORE_KEY);
  history.replaceState(null, "", location.pathname + location.search);
  rendered.clear();
  $("transcript").replaceChildren();
  $("run").hidden = true;
  renderAgents();
}

async function deleteRun() {
  if (!model) return;
  const runId = model.runId;
  const active = ACTIVE.has(model.status);
  const question = `Delete this run${active ? " (it is cancelled first)" : ""} with its events? `
    + "Its messages stay in the conversation. This cannot be undone.";
  if (!window.confirm(question)) return;
  $("delete-run").disabled = true;
  let note = "";
  try {
    await api(`/runs/${encodeURIComponent(runId)}`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 404) {
      banner(`Delete failed: ${err.message}`);
      $("delete-run").disabled = false;
      return;
    }
    note = "The run was already deleted.";
  }
  $("delete-run").disabled = false;
  if (model && model.runId === runId) closeRun();
  banner(note);
  loadConversations();
}

async function deleteConversation(conversation, item) {
  const name = conversation.title ? `"${conversation.title}"` : "this conversation";
  if (!window.confirm(`Delete ${name} with its messages and runs? Its active runs are `
      + "cancelled first. This cannot be undone.")) return;
  let note = "";
  try {
    await api(`/conversations/${encodeURIComponent(conversation.id)}`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 404) { banner(`Delete failed: ${err.message}`); return; }
    note = "The conversation was already deleted.";
  }
  item.remove();
  if (model && model.conversationId === conversation.id) closeRun();
  banner(note);
}

async function exportRun() {
  if (!model) return;
  try {
    const resp = await fetch(`${API}/runs/${encodeURIComponent(model.runId)}/export`,
                             { headers: authHeaders(), credentials: "same-origin" });
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    const blob = await resp.blob();
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = `chorus-run-${model.runId}.json`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    banner(`Export failed: ${err.message}`);
  }
}

async function updateAgent(agent, tempInput, promptInput, form) {
  const body = {};
  const temp = tempInput.value.trim();
  if (temp !== "" && Number(temp) !== agent.temperature) body.temperature = Number(temp);
  if (promptInput.value !== agent.systemPrompt) body.systemPrompt = promptInput.value;
  const result = form.querySelector(".agent-result");
  if (!Object.keys(body).length) { result.textContent = "nothing changed"; return; }
  try {
    await api(`/runs/${encodeURIComponent(model.runId)}/agents/${encodeURIComponent(agent.name)}`,
              { method: "PATCH", body });
    result.textContent = "applied from the next turn";
  } catch (err) {
    result.textContent = err.message;
  }
}

// ---------------------------------------------------------------------------------------
// Templates, conversations, identity

let templates = [];
let models = [];

async function loadModels() {
  const reply = await api("/models");
  models = (reply.models || []).map((m) => `${m.ref.provider}/${m.ref.model}`);
}

async function loadTemplates() {
  const reply = await api("/teams");
  templates = reply.templates || [];
  const select = $("template");
  select.replaceChildren();
  for (const t of templates) {
    const opt = el("option", null, t.title ? `${t.name} — ${t.title}` : t.name);
    opt.value = t.name;
    select.appendChild(opt);
  }
  if (templates.some((t) => t.name === "duet")) select.value = "duet";
  describeTemplate();
}

function describeTemplate() {
  const t = templates.find((x) => x.name === $("template").value);
  $("template-description").textContent = t ? (t.description || "") : "";
  // The team's own turn limit, so "Max turns" shows what a run will use unless changed.
  $("max-turns").value = (t && t.spec && t.spec.maxTurns) || "";
  $("topic").placeholder = t && t.inputHint ? `The ${t.inputHint}` : "A topic, a task or a message";
  const box = $("agent-models");
  box.replaceChildren();
  for (const agent of (t && t.spec && t.spec.agents) || []) {
    if (agent.human) {   // a person (issue 21): no model to pick
      box.appendChild(el("label", "human-agent", `${agent.name}: you`));
      continue;
    }
    const current = `${(agent.model || {}).provider || ""}/${(agent.model || {}).model || ""}`;
    const label = el("label", null, agent.name);
    const select = el("select");
    select.dataset.agent = agent.name;
    select.dataset.default = current;
    for (const ref of new Set([current, ...models])) {
      const opt = el("option", null, ref);
      opt.value = ref;
      select.appendChild(opt);
    }
    select.value = current;
    label.appendChild(select);
    box.appendChild(label);
  }
}

let conversationsToken = "";

let conversationsTimer = null;

// Refreshes the conversation list soon (a run started or stopped waiting for a person).
function scheduleConversations() {
  if (conversationsTimer === null) {
    conversationsTimer = setTimeout(() => { conversationsTimer = null; loadConversations(); }, 500);
  }
}

// Conversations whose run waits for a person: an active run is its conversation's latest.
async function waitingConversations() {
  try {
    const reply = await api("/runs?status=awaiting_input&pageSize=100");
    return new Set((reply.runs || []).map((r) => r.conversationId));
  } catch (_) {
    return new Set();
  }
}

async function loadConversations(more = false) {
  try {
    const [reply, waiting] = await Promise.all([
      api(`/conversations?pageSize=20${more && conversationsToken ? `&pageToken=${encodeURIComponent(conversationsToken)}` : ""}`),
      waitingConversations(),
    ]);
    const list = $("conversations");
    if (!more) list.replaceChildren();
    for (const c of reply.conversations || []) {
      const li = el("li");
      li.dataset.conversation = c.id;
      const title = el("button", "conversation-title", c.title || "(untitled)");
      title.type = "button";
      if (waiting.has(c.id)) {
        const badge = el("span", "badge waiting", "waiting for you");
        badge.dataset.testid = "waiting-badge";
        title.appendChild(badge);
        li.classList.add("waiting");
      }
      title.appendChild(el("span", "conversation-time", c.updateTime ? new Date(c.updateTime).toLocaleString() : ""));
      const runs = el("ul", "runs");
      title.addEventListener("click", () => toggleRuns(c.id, runs));
      const remove = el("button", "conversation-delete", "×");
      remove.type = "button";
      remove.title = "Delete the conversation with its messages and runs";
      remove.setAttribute("aria-label", `Delete ${c.title || "the untitled conversation"}`);
      remove.dataset.testid = "delete-conversation";
      remove.addEventListener("click", () => deleteConversation(c, li));
      const head = el("div", "conversation-head");
      head.append(title, remove);
      li.append(head, runs);
      list.appendChild(li);
    }
    conversationsToken = reply.nextPageToken || "";
    $("more-conversations").hidden = !conversationsToken;
  } catch (err) {
    if (err.status !== 401) banner(`Conversations: ${err.message}`);
  }
}

async function toggleRuns(conversationId, list) {
  if (list.children.length) { list.replaceChildren(); return; }
  try {
    const reply = await api(`/runs?conversationId=${encodeURIComponent(conversationId)}`);
    for (const r of reply.runs || []) {
      const li = el("li");
      const status = (r.status || "").replace("RUN_STATUS_", "").toLowerCase();
      const when = r.createTime ? new Date(r.createTime).toLocaleTimeString() : "";
      const b = el("button", null, `${(r.spec && r.spec.template) || "run"} · ${status} · ${when}`);
      b.type = "button";
      b.dataset.run = r.id;
      b.addEventListener("click", () => watch(r.id));
      li.appendChild(b);
      list.appendChild(li);
    }
    if (!list.children.length) list.appendChild(el("li", "hint", "no runs"));
  } catch (err) {
    banner(`Runs: ${err.message}`);
  }
}

async function loadIdentity() {
  const me = await api("/user");
  $("whoami").textContent = `${me.user} (${me.authenticatedBy})`;
  $("apikey-panel").hidden = true;
}

async function boot() {
  try {
    await loadIdentity();
  } catch (err) {
    if (err.status === 401) { showKeyPanel(); banner("Sign in to use Chorus."); return; }
    banner(`Gateway unavailable: ${err.message}`);
    return;
  }
  banner("");
  await loadModels().catch((e) => banner(`Models: ${e.message}`));
  await Promise.all([loadTemplates().catch((e) => banner(`Teams: ${e.message}`)), loadConversations()]);
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("run");
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null"); } catch (_) { saved = null; }
  if (fromUrl && saved && saved.runId === fromUrl) {
    model = saved;
    if (templates.some((t) => t.name === saved.title)) {
      $("template").value = saved.title;
      describeTemplate();
    }
    watch(fromUrl, { restored: true });
  } else if (fromUrl) {
    watch(fromUrl);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("start-form").addEventListener("submit", startRun);
  $("template").addEventListener("change", describeTemplate);
  $("example").addEventListener("click", () => {
    const t = templates.find((x) => x.name === $("template").value);
    if (t && t.exampleInput) $("topic").value = t.exampleInput;
  });
  $("cancel").addEventListener("click", cancelRun);
  $("export").addEventListener("click", exportRun);
  $("delete-run").addEventListener("click", deleteRun);
  $("refresh-conversations").addEventListener("click", () => loadConversations());
  $("more-conversations").addEventListener("click", () => loadConversations(true));
  $("apikey-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_KEY, $("apikey").value.trim());
    $("apikey").value = "";
    boot();
  });
  window.addEventListener("pagehide", save);
  boot();
});
