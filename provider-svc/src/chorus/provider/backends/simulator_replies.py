"""What the simulator's agents say: replies on the user's topic, in the agent's role, and tool
calls whose arguments come from the input (issue 23: "the first thing everybody sees").

Pure functions of the request and a seeded `random.Random`, so the simulator stays offline
and deterministic:

* **The topic** is the task — the first user message (what the run was started with) — not
  the last message, which in a team is another agent's reply; `topics` picks its phrases.
* **The role** comes from the agent's system prompt (`You are Ada, a curious optimist…`,
  `You are a researcher.`): a debater answers the other's last point and adds an idea or a
  risk; a researcher lists notes; an editor planning an article outlines it; a writer writes
  paragraphs; a copy editor returns the draft with a standfirst; an analyst reads the
  figures its tools returned; an assistant answers. Anyone else talks about the topic.
* **Tool calls** follow the input's intent: arithmetic (`17.5% of 2,340` → calculator
  `0.175 * 2340`), the date or time (a clock tool), an asset (`BTC`, `bitcoin` → a tool with
  a `symbol` parameter, the one the system prompt tells to call first) — one call per
  intent, several at once when the input asks several things. Without an intent the
  best-matching tool by name and description is called.
* **After tool results** the reply states them in words (`17.5% of 2,340 is 409.5.`, the
  figures of a JSON result), then goes on in the agent's role.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from chorus.v1 import chat_pb2, provider_service_pb2

ChatMessage = provider_service_pb2.ChatMessage

# --- the task and the role --------------------------------------------------------------


TASK_RE = re.compile(
    r"(?:Recall we are working on the following request:|Here is the request:|"
    r"We are working on the following task:|we are working to solve the following task:|"
    r"We are working to address the following user request:)\s*\n(.*?)\n\s*\n",
    re.S,
)
"""Where MagenticOne's prompts quote the task (its ledger messages reach every agent)."""


def task_text(request: provider_service_pb2.StreamChatRequest) -> str:
    """What the run was started with: the task a MagenticOne prompt quotes, else the first
    user message."""
    for m in request.messages:
        if m.role == chat_pb2.ROLE_USER and m.content.strip():
            quoted = TASK_RE.search(m.content)
            return quoted.group(1).strip() if quoted else m.content.strip()
    return request.messages[-1].content.strip() if request.messages else ""


def system_prompt(request: provider_service_pb2.StreamChatRequest) -> str:
    return "\n".join(m.content for m in request.messages if m.role == chat_pb2.ROLE_SYSTEM)


_ROLE_RE = re.compile(
    r"\bYou are (?:(?P<name>[A-Z][a-z]+), )?(?:an? |the )?(?P<role>[a-z][a-z ,-]{2,60}?)"
    r"(?=[.;:\n]|,? in | who | that | for | planning )"
)
_OTHER_RE = re.compile(r"another bot called (?P<other>[A-Z][a-z]+)")


@dataclass(frozen=True, slots=True)
class Role:
    """Who is speaking: `kind` picks the shape of the reply."""

    kind: str  # optimist, skeptic, researcher, outliner, writer, copyeditor, analyst, assistant, other
    title: str  # "curious optimist", "market analyst", ""
    other: str  # the other debater's name, "" if none


def role_of(request: provider_service_pb2.StreamChatRequest) -> Role:
    prompt = system_prompt(request)
    match = _ROLE_RE.search(prompt)
    title = match.group("role").strip(" ,") if match else ""
    other_match = _OTHER_RE.search(prompt)
    other = other_match.group("other") if other_match else ""
    text = f"{title} {prompt[:300]}".lower()
    if "optimist" in title or "advocate" in title:
        kind = "optimist"
    elif "skeptic" in title or "sceptic" in title or "critic" in title:
        kind = "skeptic"
    elif "copy editor" in title or "return the final article" in text:
        kind = "copyeditor"
    elif "planning" in text[:200] or "outline" in title:
        kind = "outliner"
    elif "research" in title:
        kind = "researcher"
    elif "report" in title:
        kind = "reporter"
    elif "writer" in title:
        kind = "writer"
    elif "analyst" in title:
        kind = "analyst"
    elif "assistant" in title:
        kind = "assistant"
    else:
        kind = "other"
    return Role(kind, title, other)


# --- topics ---------------------------------------------------------------------------------

_VERBS = frozenset(
    [
        "analyse",
        "analyze",
        "recommend",
        "discuss",
        "debate",
        "consider",
        "evaluate",
        "assess",
        "review",
        "research",
        "write",
        "draft",
        "plan",
        "outline",
        "summarise",
        "summarize",
        "argue",
        "decide",
        "suggest",
        "propose",
        "check",
        "is",
        "are",
        "should",
        "could",
        "would",
        "will",
        "can",
        "does",
        "do",
        "open",
        "close",
        "start",
        "stop",
        "keep",
        "given",
        "make",
        "take",
    ]
)
_SMALL = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "for",
        "to",
        "and",
        "or",
        "but",
        "with",
        "without",
        "from",
        "by",
        "as",
        "about",
        "into",
        "over",
        "under",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "whether",
        "if",
        "than",
        "then",
        "so",
        "such",
        "very",
        "more",
        "most",
        "less",
        "least",
        "much",
        "many",
        "some",
        "any",
        "all",
        "each",
        "every",
        "both",
        "either",
        "neither",
        "not",
        "no",
        "yes",
        "i",
        "we",
        "you",
        "he",
        "she",
        "they",
        "me",
        "us",
        "him",
        "her",
        "them",
        "my",
        "our",
        "your",
        "his",
        "their",
        "please",
        "tell",
        "me",
        "give",
        "explain",
        "describe",
        "stay",
        "only",
        "also",
        "just",
        "come",
        "comes",
    ]
)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|\d[\d,.]*%?")


def topic_phrases(text: str, limit: int = 4) -> list[str]:
    """The noun-ish phrases of `text` (runs of up to three content words), in order."""
    found: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            phrase = " ".join(run[-3:])
            if phrase.lower() not in (f.lower() for f in found):
                found.append(phrase)
            run.clear()

    for word in _WORD_RE.findall(text):
        key = word.lower()
        if key in _SMALL or key in _VERBS or (len(word) < 3 and not word.isupper()):
            flush()
            continue
        if word[0].isdigit():
            flush()
            continue
        run.append(word if word.isupper() or (word[0].isupper() and run) else key)
        if len(found) >= limit:
            break
    flush()
    return found[:limit] or ["the question"]


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if len(p.split()) >= 4]


# --- replies in a role ----------------------------------------------------------------------

_OPTIMIST_OPEN = (
    "{other} says “{echo}”, and that is fair, but it is a reason to get {topic} right, not to avoid it.",
    "I hear {other}: “{echo}”. Still, the upside of {topic} is larger than it looks.",
    "Fair point from {other} (“{echo}”), and yet the best cases of {topic} show it can work.",
)
_OPTIMIST_FIRST = (
    "My view on {topic} is hopeful: most of the problems people point to can be solved.",
    "I think {topic} is worth backing, because the gains show up quickly when it is done well.",
)
_OPTIMIST_IDEA = (
    "A concrete example: a team that tried {topic} for three months kept what worked and dropped the rest, and ended up better off.",
    "Here is a new idea: start {topic} small, measure one clear outcome, and widen it only if the numbers hold up.",
    "Think of how {topic2} changed once people had a few good examples to copy; {topic} can follow the same path.",
    "One practical step is to pair {topic} with {topic2}, so each covers the other's weak spot.",
)
_SKEPTIC_OPEN = (
    "{other} says “{echo}”, but hope is not evidence.",
    "I agree with {other} up to a point (“{echo}”); the question is what it costs.",
    "{other}'s point (“{echo}”) is a good one, though one success says little about {topic} in general.",
)
_SKEPTIC_FIRST = (
    "Before we get excited about {topic}, it is worth asking what it really costs.",
    "I am not convinced {topic} works as well as people say, and here is why.",
)
_SKEPTIC_RISK = (
    "The risk nobody has priced in yet is {topic2}: if it goes wrong, the gains from {topic} disappear quickly.",
    "Studies of similar changes often find the first results fade after a year, so I would want data on {topic} over a longer period.",
    "There is also a hidden cost: {topic} takes time and attention away from {topic2}, and that rarely shows up in the first numbers.",
    "Before committing to {topic}, I would ask who carries the cost when it fails, because it is usually not the people who chose it.",
)
_OPENING = (
    "Let me start with {topic}, since that is what the question turns on.",
    "The short version on {topic}: it depends on a few things we can actually check.",
    "{Topic} is worth taking seriously, and I will start there.",
)
_GENERIC = (
    "The main question about {topic} is what it changes in practice, not in theory.",
    "When people look at {topic} closely, {topic2} usually turns out to matter more than expected.",
    "A sensible first step is to separate what we know about {topic} from what we only assume.",
    "The evidence on {topic} is mixed, so it helps to look at a few concrete cases before deciding.",
    "Most of the effect of {topic} comes through {topic2}, which is easier to measure.",
    "It is worth asking who benefits from {topic} and who pays for it.",
    "Over time, {topic} tends to reward the people who plan for it rather than react to it.",
)
_RESEARCH = (
    "Definition: {topic} in the sense the question uses it, not the broadest meaning.",
    "Key figure to confirm: how common {topic} is today, and how that changed over the last five years.",
    "Context: {topic2} shapes most of the debate around {topic}.",
    "Open question: whether the effects of {topic} last or fade after the first year.",
    "Evidence: several surveys touch {topic}, but they measure it differently; compare them with care.",
    "Check: any figure on {topic} older than three years should be flagged as possibly out of date.",
)
_ARTICLE = (
    "{Topic} has moved from a niche concern to a question many people now face directly.",
    "The research notes point to a simple pattern: where {topic} is planned carefully, the results are steadier.",
    "{Topic2} is the part most often overlooked, and it explains much of the difference between good and poor outcomes.",
    "None of this means {topic} suits every case; the evidence is still thin in places and worth watching.",
    "For readers deciding what to do, the practical lesson is to start small, measure, and adjust.",
    "In the end, {topic} is less about one big decision than about many small, well-informed ones.",
)
_ANALYST = (
    "Taken together, these figures suggest a cautious reading rather than a strong signal.",
    "The numbers describe the recent past; they are a guide to risk, not a forecast.",
    "The reliability of this reading is moderate: the window is short and the data is synthetic.",
    "For {topic}, I would weigh the trend against the volatility before drawing a conclusion.",
)
_ASSISTANT = (
    "In short, {topic} comes down to a few clear points.",
    "Here is a concise answer about {topic}.",
)


def _fill(template: str, rng: random.Random, topics: list[str], **extra: str) -> str:
    t1 = topics[0]
    t2 = (
        topics[1]
        if len(topics) > 1
        else rng.choice(("the people it affects", "everyday habits", "the budget"))
    )
    text = template.format(
        topic=t1, Topic=t1[:1].upper() + t1[1:], topic2=t2, Topic2=t2[:1].upper() + t2[1:], **extra
    )
    return text[:1].upper() + text[1:]


def _echo(request: provider_service_pb2.StreamChatRequest) -> str | None:
    """The first clause of the other speaker's last message (what a debater answers, quoted),
    or None when nobody else spoke yet."""
    first_user = next((m for m in request.messages if m.role == chat_pb2.ROLE_USER), None)
    for m in reversed(request.messages):
        if m.role == chat_pb2.ROLE_SYSTEM or m is first_user:
            continue
        if m.role == chat_pb2.ROLE_ASSISTANT:
            return None  # our own last word: nobody answered it yet
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(m.content.split()))
        own = [x for x in sentences if "“" not in x and "(" not in x] or sentences
        clause = re.split(r"[.;:!?]|, (?:but|and|so) ", own[0])[0]
        words = clause.split()
        if not words:
            return None
        return " ".join(words[:12]).rstrip(",") + ("…" if len(words) > 12 else "")
    return None


def _findings(request: provider_service_pb2.StreamChatRequest) -> dict[str, str]:
    """The first sentence of each other agent's latest message, by agent (in order)."""
    found: dict[str, str] = {}
    for m in request.messages:
        if m.role == chat_pb2.ROLE_USER and m.name not in ("user", "", "MagenticOneOrchestrator"):
            sentences = re.split(r"(?<=[.!?])\s+", " ".join(m.content.split()))
            if sentences and sentences[0] and "please" not in sentences[0][:80]:
                found[m.name] = sentences[0]
    return found


def _report(request: provider_service_pb2.StreamChatRequest, topics: list[str]) -> str:
    """A short report from the other agents' findings: summary, findings, recommendation,
    risks (numbers only as the agents gave them)."""
    task = task_text(request)
    subject = asset_of(task) or topics[0]
    findings = _findings(request)
    lines = [f"Summary: a short, balanced view of {subject} for this request: {task}"]
    for name, sentence in findings.items():
        lines.append(f"- {name.replace('_', ' ').capitalize()}: {sentence}")
    lines.append(
        f"Recommendation: take a cautious, small position in {subject} and add to it only "
        "if the picture improves; size it so that a sharp fall would not hurt."
    )
    lines.append(
        "Risks: the figures describe the recent past, markets can move fast, and the data "
        "here is synthetic. This is not financial advice."
    )
    return "\n".join(lines)


def reply(
    request: provider_service_pb2.StreamChatRequest, rng: random.Random, termination: str | None
) -> str:
    """The text reply of an agent in its role, about the task (see the module docstring)."""
    role = role_of(request)
    topics = topic_phrases(task_text(request))
    other = role.other or "you"
    echo = _echo(request)
    pick = rng.sample
    if role.kind in ("optimist", "skeptic"):
        optimist = role.kind == "optimist"
        if echo is None:
            opening = rng.choice(_OPTIMIST_FIRST if optimist else _SKEPTIC_FIRST)
        else:
            opening = rng.choice(_OPTIMIST_OPEN if optimist else _SKEPTIC_OPEN)
        parts = [_fill(opening, rng, topics, other=other, echo=echo or topics[0])]
        parts += [
            _fill(t, rng, topics) for t in pick(_OPTIMIST_IDEA if optimist else _SKEPTIC_RISK, 2)
        ]
    elif role.kind == "researcher":
        notes = [_fill(t, rng, topics) for t in pick(_RESEARCH, 4)]
        parts = [f"Research notes on {topics[0]}:\n" + "\n".join(f"- {n}" for n in notes)]
    elif role.kind == "outliner":
        title = topics[0][:1].upper() + topics[0][1:]
        sections = [
            f"1. Why {topics[0]} matters now: the context and the question readers ask.",
            "2. What the evidence says: the key facts and figures from the research notes.",
            f"3. The overlooked part: how {topics[1] if len(topics) > 1 else 'the budget'} changes the picture.",
            f"4. Risks and open questions: what is still uncertain about {topics[0]}.",
            "5. What to do: practical steps for the reader.",
        ]
        parts = [f"Working title: {title}, explained\n" + "\n".join(sections)]
    elif role.kind == "writer":
        sentences = [_fill(t, rng, topics) for t in _ARTICLE]
        title = topics[0][:1].upper() + topics[0][1:]
        parts = [
            f"{title}, explained\n\n"
            + " ".join(sentences[:2])
            + "\n\n"
            + " ".join(sentences[2:4])
            + "\n\n"
            + " ".join(sentences[4:])
        ]
    elif role.kind == "copyeditor":
        previous = next(
            (m.content for m in reversed(request.messages) if m.role != chat_pb2.ROLE_SYSTEM), ""
        )
        standfirst = (
            f"A clear look at {topics[0]}: what the evidence shows and what to do about it."
        )
        body = (
            previous.strip()
            if len(previous.split()) > 30
            else " ".join(_fill(t, rng, topics) for t in _ARTICLE)
        )
        head, _, rest = body.partition("\n")
        parts = [f"{head}\n\n{standfirst}\n{rest}" if rest else f"{standfirst}\n\n{body}"]
    elif role.kind == "reporter":
        parts = [_report(request, topics)]
    elif role.kind == "analyst":
        parts = [_fill(t, rng, topics) for t in pick(_ANALYST, 2)]
    elif role.kind == "assistant":
        parts = [_fill(rng.choice(_ASSISTANT), rng, topics)]
        parts += [_fill(t, rng, topics) for t in pick(_GENERIC, 2)]
    else:
        parts = [_fill(rng.choice(_OPENING), rng, topics)]
        parts += [_fill(t, rng, topics) for t in pick(_GENERIC, 2)]
    text = (
        " ".join(parts)
        if role.kind not in ("researcher", "outliner", "writer", "copyeditor", "reporter")
        else parts[0]
    )
    if termination:
        text += f" {termination}"
    return text


def follow_up(request: provider_service_pb2.StreamChatRequest, rng: random.Random) -> str:
    """What an agent adds after stating its tool results: an analyst's reading of them,
    anyone else one sentence on the topic."""
    role = role_of(request)
    topics = topic_phrases(task_text(request))
    asset = asset_of(task_text(request))
    if asset:
        topics = [asset, *topics]
    if role.kind == "analyst":
        return " ".join(_fill(t, rng, topics) for t in rng.sample(_ANALYST, 2))
    return _fill(rng.choice(_GENERIC), rng, topics)


# --- tools ----------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])")
_PERCENT_OF = re.compile(
    r"(\d+(?:\.\d+)?)\s*(?:%|percent|per cent)\s+of\s+\$?(\d+(?:\.\d+)?)", re.I
)
_EXPRESSION = re.compile(r"[-+(]*\d[\d.\s]*(?:[-+*/^%][\s(]*\d[\d.\s)]*)+")
_TIME_WORDS = re.compile(
    r"\b(?:time|date|today|day of the week|what day|tomorrow|now|clock)\b", re.I
)
_TICKERS = {
    "bitcoin": "BTC",
    "ethereum": "ETH",
    "ether": "ETH",
    "solana": "SOL",
    "cardano": "ADA",
    "dogecoin": "DOGE",
    "ripple": "XRP",
    "litecoin": "LTC",
}
_KNOWN_TICKERS = frozenset(
    [
        "BTC",
        "ETH",
        "SOL",
        "ADA",
        "XRP",
        "DOGE",
        "DOT",
        "LTC",
        "BNB",
        "AVAX",
        "LINK",
        "MATIC",
        "TRX",
        "ATOM",
        "XLM",
        "UNI",
    ]
)
_NOT_TICKERS = frozenset(
    [
        "RSI",
        "SMA",
        "EMA",
        "MACD",
        "USD",
        "EUR",
        "API",
        "JSON",
        "CEO",
        "AI",
        "UTC",
        "OK",
        "TODO",
        "FAQ",
        "ETF",
        "GDP",
        "CPI",
        "US",
        "UK",
        "EU",
    ]
)
_MATH_NAMES = frozenset(
    ["calculator", "calculate", "calc", "math", "arithmetic", "expression", "compute", "evaluate"]
)
_TIME_NAMES = frozenset(["time", "clock", "date", "now", "current_time"])


def normalized_numbers(text: str) -> str:
    """`text` with thousands separators dropped (`2,340` → `2340`)."""
    return _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)


def expression_of(text: str) -> tuple[str, str] | None:
    """(expression for a calculator, the phrase it came from) found in `text`, if any:
    `17.5% of 2,340` → (`0.175 * 2340`, `17.5% of 2,340`); `(12 + 30) * 2` as it is."""
    plain = normalized_numbers(text)
    percent = _PERCENT_OF.search(plain)
    if percent:
        share = float(percent.group(1)) / 100
        phrase_match = re.search(
            re.escape(percent.group(1)) + r"\s*(?:%|percent|per cent)\s+of\s+\$?[\d,.]*\d",
            text,
            re.I,
        )
        phrase = phrase_match.group(0) if phrase_match else percent.group(0)
        return f"{share:g} * {percent.group(2)}", phrase
    expression = _EXPRESSION.search(plain)
    if expression:
        value = expression.group(0).strip()
        return value, value
    return None


def asset_of(text: str) -> str | None:
    """The crypto asset `text` is about (a ticker), if any."""
    words: list[str] = re.findall(r"\b[A-Z]{2,5}\b", text)
    for word in words:
        if word in _KNOWN_TICKERS:
            return word
    lower = text.lower()
    for name, ticker in _TICKERS.items():
        if re.search(rf"\b{name}\b", lower):
            return ticker
    words = re.findall(r"\b[A-Z]{3,5}\b", text)
    for word in words:
        if word not in _NOT_TICKERS:
            return word
    return None


def _tool_words(tool: provider_service_pb2.ToolDefinition) -> set[str]:
    return set(re.split(r"[_\-\s]+", tool.name.lower())) | {
        w.lower() for w in re.findall(r"[A-Za-z]{3,}", tool.description)
    }


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    return props if isinstance(props, dict) else {}


def intent_tools(
    request: provider_service_pb2.StreamChatRequest,
    text: str,
    schemas: dict[str, dict[str, Any]],
) -> list[provider_service_pb2.ToolDefinition]:
    """The tools the input's intents call for, in request order (empty: no intent matched).

    Arithmetic → a calculator-like tool; the date or time → a clock-like tool; an asset → the
    tool with a symbol-like parameter that the system prompt names first (`call X`), or a
    chart tool when a chart is asked for.
    """
    chosen: list[provider_service_pb2.ToolDefinition] = []
    tools = list(request.tools)
    if expression_of(text) is not None:
        chosen += [t for t in tools if _tool_words(t) & _MATH_NAMES][:1]
    if _TIME_WORDS.search(text):
        chosen += [t for t in tools if _tool_words(t) & _TIME_NAMES and t not in chosen][:1]
    if asset_of(text) is not None:
        symbolic = [
            t
            for t in tools
            if any(
                k in p.lower()
                for p in _properties(schemas[t.name])
                for k in ("symbol", "ticker", "asset", "coin")
            )
        ]
        if symbolic:
            prompt = system_prompt(request)
            wants_chart = re.search(r"\bchart\b", task_text(request), re.I) is not None

            def rank(tool: provider_service_pb2.ToolDefinition) -> tuple[int, int]:
                named = re.search(rf"(?:call|use)\s+(?:the\s+)?`?{re.escape(tool.name)}\b", prompt)
                charting = "chart" in tool.name.lower()
                first = prompt.find(tool.name)
                return (
                    0 if wants_chart and charting else 1 if named else 2,
                    first if first >= 0 else len(prompt),
                )

            best = min(symbolic, key=rank)
            if best not in chosen:
                chosen.append(best)
    return sorted(chosen, key=tools.index)


# --- after tool results ---------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _figure(key: str, value: Any) -> str:
    """`price_usd: 64000.0` → `price $64,000`; `change_24h_pct: -3.8` → `change 24h -3.8%`."""
    if key.endswith("_usd") and isinstance(value, int | float):
        return f"{key[:-4].replace('_', ' ')} ${_number(value)}"
    if key.endswith("_pct") and isinstance(value, int | float):
        return f"{key[:-4].replace('_', ' ')} {_number(value)}%"
    return f"{key.replace('_', ' ')} {_number(value)}"


def describe_result(name: str, arguments: str, content: str, task: str) -> str:
    """One or two sentences stating a tool's result."""
    text = " ".join(content.split())
    try:
        args = json.loads(arguments) if arguments else {}
    except ValueError:
        args = {}
    expression = args.get("expression") if isinstance(args, dict) else None
    if isinstance(expression, str):
        found = expression_of(task)
        if found and found[0] == expression and found[1] != expression:
            return f"{found[1]} is {text} ({expression} = {text})."
        return f"{expression} = {text}."
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        figures = [
            _figure(k, v)
            for k, v in data.items()
            if k not in ("source", "symbol", "days", "chart")
            and isinstance(v, int | float | str)
            and len(str(v)) < 40
        ][:10]
        subject = data.get("symbol") or name.replace("_", " ")
        text = f"The {name} tool gives {subject}: " + ", ".join(figures) + "."
        if isinstance(data.get("chart"), str):
            days = f" of the last {data['days']} days" if "days" in data else ""
            text += f" The price chart{days} ({data['chart']}) is attached to the run."
        return text
    if _TIME_WORDS.search(name) or "time" in name:
        return f"It is now {text}."
    excerpt = text if len(text) <= 160 else text[:157] + "..."
    return f"The {name} tool returned {excerpt}."
