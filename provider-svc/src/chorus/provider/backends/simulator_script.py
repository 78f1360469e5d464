"""What the simulator says: a deterministic `Script` (reasoning, text, tool calls, finish) per request.

`write_script(request, model, seed, max_output_tokens, output_tokens)` is a pure function:
the same arguments always give the same script. It decides, in this order:

1. **autogen orchestration prompts** (found by their text in the last message):
   * MagenticOne progress ledger (mentions `is_request_satisfied`) → the JSON ledger with
     the five keys, each `{"reason", "answer"}`, reasons in plain sentences. The next
     speaker rotates through the names listed after "select from:"; its instruction is
     the member's own description made an instruction plus the request (`technical_analyst,
     please compute moving averages … for this request: Analyse BTC …`), so the member's
     tools get the right arguments. The request is marked satisfied once the members have
     spoken `min(len(names), 3)` times after the plan (user-role messages after the first
     assistant message), so MagenticOne runs finish.
   * MagenticOne facts survey / fact-sheet update → a sheet with the four required headings,
     about the request.
   * MagenticOne plan / plan update → one bullet per team member saying what it does.
   * MagenticOne final answer → the members' findings (first sentence each) and a closing.
   * SelectorGroupChat speaker selection (`select the next role from [...]`, or the
     feedback "Please select ... from: [...]") → exactly one name from that list: the
     candidate who has spoken least in the quoted history (ties: list order).
2. **tools**: when tools are offered, tool choice is not NONE and the last message is a user
   (or system) message: the named tool (MODE_TOOL); else one call per intent of the input
   (`simulator_replies.intent_tools`: arithmetic → the calculator with the expression,
   `17.5% of 2,340` → `0.175 * 2340`; date or time → the clock; an asset → the tool with a
   symbol parameter that the system prompt names), several calls at once when the input asks
   several things; without an intent, the tool whose name and description share most words
   with the message (ties: request order). Other arguments are built from the JSON Schema.
   After tool results the reply states them in words (`17.5% of 2,340 is 409.5`, a JSON
   result's figures), then the agent's own take.
3. **text** otherwise: the agent's reply in its role (from its system prompt) about the task
   (the first user message), in sentences (`simulator_replies.reply`). `output_tokens` > 0
   instead gives exactly that many tokens of generic prose (benchmarks).

`sim-reasoning` first thinks aloud (reasoning tokens). A system prompt that asks for a
quoted upper-case word (`say "TERMINATE" when done`) gets that word at the end of replies
once the conversation has 4+ non-system messages, so mention-terminated teams finish.
Stop sequences cut the text (finish `stop`, raw `stop_sequence`); `max_output_tokens`
cuts it (finish `length`).

A token is a word with its leading space and trailing punctuation (about 1.3 real
tokenizer tokens); input usage is `chorus.provider.models.estimate_input_tokens`.
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from chorus.provider.backends import simulator_replies as replies
from chorus.provider.schemas import tool_schema
from chorus.v1 import chat_pb2, provider_service_pb2

FinishReason = provider_service_pb2.FinishReason
_TOOL_CHOICE = provider_service_pb2.ToolChoice


@dataclass(slots=True)
class Script:
    """One simulated reply.

    Attributes:
        reasoning: reasoning tokens, streamed first.
        text: text tokens.
        tool_calls: `(id, name, arguments JSON)` per call.
        finish / raw_finish: the finish reason.
    """

    reasoning: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    finish: int = FinishReason.FINISH_REASON_STOP
    raw_finish: str = "stop"


# --- word banks -------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_STOPWORDS = frozenset(
    _words(
        """about above after again against along also although among another answer anything
        around because been before being below between both cannot could does doing down during
        each either every first from further have having here hers herself himself itself just
        like make many might more most much must never often only other ought ours ourselves
        over please quite rather really said same several shall should since some such than
        that their theirs them themselves then there these they this those through under until
        upon very want were what when where whether which while whom whose will with within
        without would your yours yourself yourselves tell give explain describe write short
        brief following using used task request question reply respond response user assistant
        affect affects help helps work think need find show shows know compare summarize list
        best good better how why who the and for are but not you can its was has had into our
        out may one two any all get got see let use now new"""
    )
)
_ADJECTIVES = _words(
    """clear steady careful practical measured useful narrow broad early recent modest strong
    simple direct obvious subtle reliable consistent important helpful concrete realistic"""
)
_NOUNS = _words(
    """approach trade-off assumption estimate signal baseline pattern constraint risk option
    detail question outcome result step priority plan test example source summary"""
)
_VERBS = _words("suggests shows supports changes limits explains shapes affects improves clarifies")
_ADVERBS = _words("usually often clearly mostly largely probably arguably generally")
_OPENERS = (
    "In short,",
    "On balance,",
    "For now,",
    "In practice,",
    "To be fair,",
    "Put simply,",
    "At this point,",
    "Taken together,",
)
_TEMPLATES = (
    "{Opener} the case of {topic} {verb} a {adj} {noun} worth keeping in mind.",
    "The {adj} {noun} here is how {topic} relates to {topic2}.",
    "Much about {topic} {adv} depends on the {noun} we start from, so it helps to state it.",
    "A {adj} way to look at {topic} is to compare it with {topic2} over a few cases.",
    "If we treat {topic} as the main {noun}, the next {noun2} becomes easier to judge.",
    "{Opener} the evidence on {topic} is {adj}, not conclusive.",
    "One {adj} {noun} is that {topic} and {topic2} move together more than expected.",
    "That {verb} why a {adj} {noun} matters more than a long list of details.",
    "We can check this with a {adj} {noun2} before changing anything else.",
    "The {noun} behind {topic} is {adv} {adj}, which keeps the reasoning honest.",
    "It is worth separating what we know about {topic} from what we only assume.",
    "{Opener} I would start with {topic} and leave {topic2} for a second pass.",
    "A {num}-step {noun} keeps {topic} manageable without hiding the {noun2}.",
    "Most of the {noun} comes from {topic}, while {topic2} adds a {adj} {noun2}.",
    "There is a {adj} case for revisiting {topic} once the first {noun} is in.",
    "The latest {noun} on {topic} {verb} a {adj} pattern rather than a single cause.",
    "Looking at {topic} alongside {topic2} {adv} gives a {adj} picture.",
)
_FALLBACK_TOPICS = ("the question", "the context", "the goal", "the evidence", "the next step")
_THINKING = (
    "Let me work out what is being asked about {topic}.",
    "The key {noun} seems to be {topic2}; I should keep the answer {adj}.",
    "I will outline the main points first, then check them against the {noun2}.",
    "A {adj} answer should mention {topic} and say what remains uncertain.",
    "Before answering, I want to compare {topic} with {topic2}.",
)

_TOKEN_RE = re.compile(r"\s*\S+")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_ANY_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")


def tokenize(text: str) -> list[str]:
    """Tokens whose concatenation is exactly `text` (leading whitespace kept on each)."""
    tokens = _TOKEN_RE.findall(text)
    if tokens:
        tail = len(text) - sum(map(len, tokens))
        if tail:
            tokens[-1] += text[-tail:]
    return tokens


def topics(text: str, limit: int = 6) -> list[str]:
    """Up to `limit` topic phrases of `text` (runs of content words, at most two words
    each; names start their own run), in order of first appearance; lower-cased unless they
    look like names."""
    found: dict[str, str] = {}
    run: list[str] = []
    run_is_name = False

    def flush() -> None:
        if run:
            phrase = " ".join(run[-2:])
            found.setdefault(phrase.lower(), phrase)
            run.clear()

    for position, word in enumerate(_ANY_WORD_RE.findall(text)):
        key = word.lower()
        if len(word) < 3 or key in _STOPWORDS:
            flush()
        else:
            is_name = word[:1].isupper() and not word.isupper() and position > 0
            if run and is_name != run_is_name:
                flush()
            run_is_name = is_name
            run.append(word if is_name else key)
        if len(found) >= limit:
            break
    flush()
    return list(found.values())[:limit]


class _Prose:
    """Sentence generator over one conversation's topic words."""

    def __init__(self, rng: random.Random, topic_words: list[str]) -> None:
        self.rng = rng
        self.topics = topic_words or list(_FALLBACK_TOPICS)

    def _fill(self, template: str) -> str:
        r = self.rng
        t1, t2 = r.choice(self.topics), r.choice(self.topics)
        if t2 == t1 and len(self.topics) > 1:
            t2 = self.topics[(self.topics.index(t1) + 1) % len(self.topics)]
        sentence = template.format(
            Opener=r.choice(_OPENERS),
            topic=t1,
            Topic=t1[:1].upper() + t1[1:],
            topic2=t2,
            adj=r.choice(_ADJECTIVES),
            noun=r.choice(_NOUNS),
            noun2=r.choice(_NOUNS),
            verb=r.choice(_VERBS),
            adv=r.choice(_ADVERBS),
            num=r.choice(("two", "three", "four")),
        )
        return sentence[:1].upper() + sentence[1:]

    def sentence(self) -> str:
        return self._fill(self.rng.choice(_TEMPLATES))

    def thoughts(self, count: int) -> list[str]:
        return [self._fill(t) for t in self.rng.sample(_THINKING, min(count, len(_THINKING)))]

    def tokens(self, count: int, *, exact: bool) -> list[str]:
        """`count` tokens (exactly, cutting the last sentence) or whole sentences ≥ count.

        Long replies draw their sentences from a pool of `_POOL` generated ones, so a
        100k-token reply costs milliseconds, not a second, before its first token.
        """
        rng = self.rng
        pool = [self.sentence().split(" ") for _ in range(_POOL)] if count > 4 * _POOL else None
        out: list[str] = []
        extend = out.extend
        in_paragraph = 0
        while len(out) < count:
            words = rng.choice(pool) if pool is not None else self.sentence().split(" ")
            if not out:
                first = words[0]
            elif in_paragraph >= 3 and rng.random() < 0.4:
                first = "\n\n" + words[0]
                in_paragraph = 0
            else:
                first = " " + words[0]
            in_paragraph += 1
            out.append(first)
            # Interned: a token repeats across replies and live streams share one object
            # (8 bytes per token held instead of ~55 for a slow stream's whole reply).
            extend([intern(" " + w) for w in words[1:]])
        return out[:count] if exact else out


_POOL = 256
"""Sentences generated for long replies (see `_Prose.tokens`)."""


# --- orchestration prompts ----------------------------------------------------------------

_LEDGER_NAMES = re.compile(r"Who should speak next\? \(select from: ([^)]*)\)")
_TASK_RE = replies.TASK_RE
_TEAM_RE = re.compile(
    r"(?:assembled the following team:|team composition[^:]*:)\s*\n\s*\n(.*?)(?:\n\s*\n|$)", re.S
)
_SELECT_RE = re.compile(
    r"(?:select the next role from|select from:|select only one from:|"
    r"select a different name from:)\s*(\[[^\]]*\])"
)
_TERM_RE = re.compile(r"[\"'“]([A-Z][A-Z_]{3,})[\"'”]")


def _task_of(text: str) -> str:
    match = _TASK_RE.search(text)
    return match.group(1).strip() if match else text.strip()[:500]


def _team_of(text: str) -> list[str]:
    return list(_team_descriptions(text))


def _team_descriptions(text: str) -> dict[str, str]:
    """`name: description` lines of the team MagenticOne lists in its prompts."""
    match = _TEAM_RE.search(text)
    if not match:
        return {}
    out: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if ":" in line:
            name, _, description = line.partition(":")
            out[name.strip()] = " ".join(description.split())
    return out


def _action(description: str) -> str:
    """What a member does, as an instruction: `Market analyst: looks up price …` → `look
    up price …` (the description's first sentence, its verb made imperative)."""
    text = description.split(". ")[0].rstrip(".")
    if ":" in text[:40]:
        text = text.split(":", 1)[1].strip()
    words = text.split()
    if words and not (words[0].endswith("s") and not words[0].endswith("ss")):
        # no verb to start with ("A helpful assistant"): ask for the member's expertise
        return f"contribute as {text[:1].lower()}{text[1:]}"
    if words:
        first = words[0][:-1]
        if first.endswith("ie"):  # "applies" -> "apply"
            first = first[:-2] + "y"
        elif first.endswith(("che", "she", "xe", "se")) and words[0].endswith("es"):
            first = first[:-1]  # "searches" -> "search"
        words[0] = first
    if not words:
        return "contribute your part"
    # a second verb joined by "and" ("… and explains what they mean") follows the first
    return re.sub(
        r"\band (\w+[^s])s (?=(?:what|how|the|its|their|them|it|a|an)\b)",
        r"and \1 ",
        " ".join(words),
    )


def _ledger(prompt: str, request: provider_service_pb2.StreamChatRequest, prose: _Prose) -> str:
    match = _LEDGER_NAMES.search(prompt)
    names = [n.strip() for n in match.group(1).split(",") if n.strip()] if match else []
    team = _team_descriptions(prompt)
    names = names or list(team) or ["assistant"]
    task = _task_of(prompt)
    messages = list(request.messages)[:-1]
    first_assistant = next(
        (i for i, m in enumerate(messages) if m.role == chat_pb2.ROLE_ASSISTANT), None
    )
    spoken = (
        0
        if first_assistant is None
        else sum(1 for m in messages[first_assistant + 1 :] if m.role == chat_pb2.ROLE_USER)
    )
    planned = min(len(names), 3)
    done = spoken >= planned
    speaker = names[spoken % len(names)]
    contributed = names[: min(spoken, len(names))]
    action = _action(team.get(speaker, ""))
    ledger = {
        "is_request_satisfied": {
            "reason": (
                f"{_join(contributed)} have contributed and together they answer the request."
                if done
                else f"Not yet: {speaker} still has to {action}."
            ),
            "answer": done,
        },
        "is_in_loop": {
            "reason": "No: each turn so far added something new.",
            "answer": False,
        },
        "is_progress_being_made": {
            "reason": (
                "Yes: we are just starting."
                if not spoken
                else f"Yes: {spoken} of {planned} planned contributions are in."
            ),
            "answer": True,
        },
        "next_speaker": {
            "reason": f"The next step of the plan is {speaker}'s: {action}.",
            "answer": speaker,
        },
        "instruction_or_question": {
            "reason": f"{speaker} needs the request and what to do for it.",
            "answer": f"{speaker}, please {action}, for this request: {task}",
        },
    }
    return json.dumps(ledger, indent=4)


def _join(names: list[str]) -> str:
    if not names:
        return "The team"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _facts(prompt: str, prose: _Prose) -> str:
    task = _task_of(prompt)
    words = replies.topic_phrases(task, 4)
    asset = replies.asset_of(task)
    subject = asset or words[0]
    return (
        "1. GIVEN OR VERIFIED FACTS\n"
        f"- The request: {task}\n\n"
        "2. FACTS TO LOOK UP\n"
        f"- Current figures for {subject}: the ones the request depends on.\n\n"
        "3. FACTS TO DERIVE\n"
        f"- What those figures say about {', '.join(words[1:3]) or subject}.\n\n"
        "4. EDUCATED GUESSES\n"
        f"- A short, balanced answer on {subject} is possible once the figures are in."
    )


def _plan(prompt: str, prose: _Prose) -> str:
    team = _team_descriptions(prompt) or {"the team": ""}
    task = _task_of(prompt)
    lines = [f"- {name}: {_action(description)}." for name, description in list(team.items())[:4]]
    lines.append(f"- Combine the findings into one short, direct answer to: {task}")
    return "\n".join(lines)


def _final_answer(prompt: str, request: provider_service_pb2.StreamChatRequest) -> str:
    task = _task_of(prompt)
    words = replies.topic_phrases(task, 3)
    points: list[str] = []
    for m in request.messages[:-1]:
        if m.role == chat_pb2.ROLE_USER and m.name and m.name != "user":
            sentences = [x for x in re.split(r"(?<=[.!?])\s+", " ".join(m.content.split())) if x]
            if sentences:
                points.append(f"{m.name.replace('_', ' ')}: {sentences[0]}")
    lines = [f"Here is what the team found on {', '.join(words)}."]
    lines += [f"- {p}" for p in points[-4:]]
    lines.append(
        "Taken together, these points answer the request; the figures are a guide, not a "
        "guarantee, so weigh them against your own situation."
    )
    return "\n".join(lines)


def _selection(prompt: str, candidates: list[str]) -> str:
    history = prompt.split("Read the following conversation.", 1)[-1]
    spoken = {name: len(re.findall(rf"(?m)^{re.escape(name)}\s*:", history)) for name in candidates}
    return min(candidates, key=lambda name: (spoken[name], candidates.index(name)))


def _candidates(text: str) -> list[str] | None:
    found = _SELECT_RE.findall(text)
    if not found:
        return None
    try:
        names = ast.literal_eval(found[-1])
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


# --- tools ---------------------------------------------------------------------------------

_EXPR_RE = re.compile(r"[-+(]*\d[\d.\s]*(?:[-+*/^%][\s(]*\d[\d.\s)]*)+")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_MATH_WORDS = frozenset(
    _words("calculator calculate calc math arithmetic expression compute evaluate eval")
)
_PLACE_RE = re.compile(r"\b(?:in|at|for|of)\s+([A-Z][a-z]+(?:\s[A-Z][a-z]+)?)")


def _value(name: str, schema: dict[str, Any], text: str, rng: random.Random) -> Any:
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _value(name, schema[key][0], text, rng)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    lname = name.lower()
    if kind == "object":
        return _arguments(schema, text, rng)
    if kind == "array":
        return [_value(name, schema.get("items") or {}, text, rng)]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        numbers = _NUMBER_RE.findall(replies.normalized_numbers(text))
        value: float = float(numbers[0]) if numbers else float(rng.randint(1, 10))
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, int | float):
            value = max(value, lo)
        if isinstance(hi, int | float):
            value = min(value, hi)
        return int(value) if kind == "integer" else value
    if any(k in lname for k in ("expr", "formula", "equation", "calculation")):
        found = replies.expression_of(text)
        return found[0] if found else "2 + 2"
    if any(k in lname for k in ("city", "location", "place", "country", "region")):
        match = _PLACE_RE.search(text)
        return match.group(1) if match else "Paris"
    if "url" in lname:
        return "https://example.com"
    if "date" in lname or schema.get("format") in ("date", "date-time"):
        return "2026-01-15"
    if any(k in lname for k in ("symbol", "ticker", "coin", "asset")):
        return replies.asset_of(text) or "BTC"
    snippet = " ".join(text.split())[:200]
    return snippet or "example"


def _arguments(schema: dict[str, Any], text: str, rng: random.Random) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties") or {}
    required = schema.get("required")
    names = [n for n in props if required is None or n in required]
    return {n: _value(n, props[n] if isinstance(props[n], dict) else {}, text, rng) for n in names}


def _pick_tool(
    request: provider_service_pb2.StreamChatRequest, text: str
) -> provider_service_pb2.ToolDefinition:
    choice = request.tool_choice
    if choice.mode == _TOOL_CHOICE.MODE_TOOL:
        return next(t for t in request.tools if t.name == choice.tool_name)
    words = {w.lower() for w in _WORD_RE.findall(text)} | {
        w.lower() for w in re.findall(r"[A-Za-z]{3,}", text)
    }

    math = _EXPR_RE.search(text) is not None

    def score(tool: provider_service_pb2.ToolDefinition) -> int:
        own = set(re.split(r"[_\-\s]+", tool.name.lower())) | {
            w.lower() for w in _WORD_RE.findall(tool.description)
        }
        hint = 2 if math and own & _MATH_WORDS else 0  # "what is 6*7" names no tool
        return len((own - _STOPWORDS) & words) + hint

    best = max(request.tools, key=score)  # max keeps the first of equal scores
    return best


def _wants_tool(request: provider_service_pb2.StreamChatRequest) -> bool:
    if not request.tools or request.tool_choice.mode == _TOOL_CHOICE.MODE_NONE:
        return False
    return request.messages[-1].role in (chat_pb2.ROLE_USER, chat_pb2.ROLE_SYSTEM)


def _tool_result_reply(request: provider_service_pb2.StreamChatRequest, rng: random.Random) -> str:
    """The results of the last tool calls in words, then the agent's own take (an analyst
    reads the figures; an assistant stops at the answer)."""
    calls: dict[str, chat_pb2.ToolCall] = {}
    for m in request.messages:
        for c in m.tool_calls:
            calls[c.id] = c
    task = replies.task_text(request)
    results: list[str] = []
    for m in reversed(request.messages):
        if m.role != chat_pb2.ROLE_TOOL:
            break
        call = calls.get(m.tool_call_id)
        name = call.name if call else "tool"
        if m.is_error:
            excerpt = " ".join(m.content.split())[:160]
            results.append(f"The {name} tool failed ({excerpt}), so I will answer without it.")
        else:
            results.append(
                replies.describe_result(name, call.arguments if call else "", m.content, task)
            )
    results.reverse()
    role = replies.role_of(request)
    follow = [] if role.kind == "assistant" else [replies.follow_up(request, rng)]
    return " ".join([*results, *follow])


# --- the script ----------------------------------------------------------------------------


def _conversation_topics(request: provider_service_pb2.StreamChatRequest) -> list[str]:
    users = [m.content for m in request.messages if m.role == chat_pb2.ROLE_USER]
    source = users[-1] if users else (request.messages[-1].content if request.messages else "")
    found = topics(source)
    if len(found) < 3 and users:
        found += [t for t in topics(users[0]) if t not in found]
    return found[:6]


def _termination_word(request: provider_service_pb2.StreamChatRequest) -> str | None:
    talk = [m for m in request.messages if m.role != chat_pb2.ROLE_SYSTEM]
    if len(talk) < 4:
        return None
    for m in request.messages:
        if m.role == chat_pb2.ROLE_SYSTEM:
            match = _TERM_RE.search(m.content)
            if match:
                return match.group(1)
    return None


def _orchestration_reply(
    request: provider_service_pb2.StreamChatRequest, prose: _Prose
) -> str | None:
    last = request.messages[-1].content
    if "is_request_satisfied" in last and "next_speaker" in last:
        return _ledger(last, request, prose)
    if "GIVEN OR VERIFIED FACTS" in last or "rewrite the following fact sheet" in last:
        return _facts(last, prose)
    if "bullet-point plan" in last or "come up with a new plan" in last:
        return _plan(last, prose)
    if "provide the final answer to the original request" in last:
        return _final_answer(last, request)
    candidates = _candidates(last)
    if candidates is not None:
        return _selection(last, candidates)
    return None


def write_script(
    request: provider_service_pb2.StreamChatRequest,
    *,
    reasoning_model: bool,
    seed: int,
    max_output_tokens: int,
    output_tokens: int,
) -> Script:
    """The deterministic reply to `request` (see the module docstring for the rules)."""
    rng = random.Random(seed)
    prose = _Prose(rng, _conversation_topics(request))
    script = Script()
    if reasoning_model:
        thoughts = " ".join(prose.thoughts(3))
        script.reasoning = tokenize(thoughts)

    fixed = _orchestration_reply(request, prose)
    last = request.messages[-1]
    if fixed is not None:
        script.text = tokenize(fixed)
    elif _wants_tool(request):
        schemas = {t.name: tool_schema(t.parameters) for t in request.tools}
        forced = request.tool_choice.mode == _TOOL_CHOICE.MODE_TOOL
        tools = [] if forced else replies.intent_tools(request, last.content, schemas)
        for tool in tools or [_pick_tool(request, last.content)]:
            args = _arguments(schemas[tool.name], last.content, rng)
            call_id = f"call_sim_{rng.getrandbits(48):012x}"
            script.tool_calls.append((call_id, tool.name, json.dumps(args)))
        script.finish, script.raw_finish = FinishReason.FINISH_REASON_TOOL_CALLS, "tool_calls"
        return script
    elif last.role == chat_pb2.ROLE_TOOL:
        script.text = tokenize(_tool_result_reply(request, rng))
    elif output_tokens:
        script.text = prose.tokens(output_tokens, exact=True)
    else:
        script.text = tokenize(replies.reply(request, rng, _termination_word(request)))

    if request.stop:
        joined = "".join(script.text)
        cuts = [i for i in (joined.find(s) for s in request.stop if s) if i >= 0]
        if cuts:
            script.text = tokenize(joined[: min(cuts)])
            script.finish, script.raw_finish = FinishReason.FINISH_REASON_STOP, "stop_sequence"
    budget = max_output_tokens - len(script.reasoning)
    if len(script.text) > budget:
        script.reasoning = script.reasoning[:max_output_tokens]
        script.text = script.text[: max(0, budget)]
        script.finish, script.raw_finish = FinishReason.FINISH_REASON_LENGTH, "length"
    return script
