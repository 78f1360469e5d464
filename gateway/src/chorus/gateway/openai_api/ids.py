"""OpenAI-style ids derived from Chorus ids, and back.

A response is a run: `resp_<run uuid as 32 hex digits>`; a chat completion is
`chatcmpl-<hex>`; a conversation `conv_<hex>`. Output items are named after the run and
the seq of the event that opened them (`msg_<hex>_<seq>`, `fc_…`, `rs_…`), so replaying a
run's event log names them the same every time (on any replica, after any restart).
"""

from __future__ import annotations

import uuid

from chorus.core.errors import NotFound

RESPONSE_PREFIX = "resp_"
CONVERSATION_PREFIX = "conv_"


def _hex(value: str) -> str:
    return value.replace("-", "")


def response_id(run_id: str) -> str:
    """The response id of a run (`resp_` + the run's UUID as 32 hex digits)."""
    return RESPONSE_PREFIX + _hex(run_id)


def chat_completion_id(run_id: str) -> str:
    """The chat completion id of a run (`chatcmpl-` + hex)."""
    return "chatcmpl-" + _hex(run_id)


def conversation_id(conversation: str) -> str:
    """The OpenAI conversation id of a Chorus conversation (`conv_` + hex)."""
    return CONVERSATION_PREFIX + _hex(conversation)


def item_id(prefix: str, run_id: str, seq: int) -> str:
    """An output item's id: `<prefix>_<run hex>_<seq of the event that opened it>`."""
    return f"{prefix}_{_hex(run_id)}_{seq}"


def _uuid(text: str, prefix: str) -> str | None:
    if not text.startswith(prefix):
        return None
    body = text[len(prefix) :]
    if len(body) not in (32, 36):
        return None
    try:
        return str(uuid.UUID(body))
    except ValueError:
        return None


def run_id_of(response: str) -> str:
    """The run id of a response id.

    Raises:
        NotFound: not a response id (HTTP 404, reason RESPONSE_NOT_FOUND): OpenAI answers an
            unknown id with 404, whatever its form.
    """
    run = _uuid(response, RESPONSE_PREFIX)
    if run is None:
        raise NotFound(
            f"No response found with id '{response[:100]}'.", reason="RESPONSE_NOT_FOUND"
        )
    return run


def conversation_of(conversation: str) -> str | None:
    """The Chorus conversation id of `conv_<hex>` (a bare UUID is accepted too), or None."""
    return _uuid(conversation, CONVERSATION_PREFIX) or _uuid(conversation, "")
