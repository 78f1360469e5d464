"""OpenAI-style ids derived from Chorus ids, and back.

A response is a run: `resp_<run uuid as 32 hex digits>`; a chat completion is
`chatcmpl-<hex>`; a conversation `conv_<hex>`. Output items are named after the run and
the seq of the event that opened them (`msg_<hex>_<seq>`, `fc_…`, `rs_…`), so replaying a
run's event log names them the same every time (on any replica, after any restart).

A run that asks a person (issue 21) is several responses: the first ends at the run's
`input_requested`, and each answer starts the next, `resp_<run hex>_<seq of its
input_received>` (a response's "segment" of the run). An approval request is
`mcpr_<run hex>_<the input_id, base64url>`, so an `mcp_approval_response` naming it finds the
run and the request without any state in the gateway.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from chorus.core.errors import NotFound

RESPONSE_PREFIX = "resp_"
CONVERSATION_PREFIX = "conv_"


def _hex(value: str) -> str:
    return value.replace("-", "")


APPROVAL_PREFIX = "mcpr_"


def response_id(run_id: str, from_seq: int = 0) -> str:
    """The response id of a run (`resp_` + the run's UUID as 32 hex digits), or of the part
    of it that starts at the `input_received` numbered `from_seq` (`resp_<hex>_<seq>`)."""
    base = RESPONSE_PREFIX + _hex(run_id)
    return f"{base}_{from_seq}" if from_seq > 0 else base


def approval_request_id(run_id: str, input_id: str) -> str:
    """The id of the `mcp_approval_request` item of the run's request `input_id`."""
    encoded = base64.urlsafe_b64encode(input_id.encode()).decode().rstrip("=")
    return f"{APPROVAL_PREFIX}{_hex(run_id)}_{encoded}"


def approval_of(item_id: str) -> tuple[str, str] | None:
    """(run id, input id) of an `mcp_approval_request` id, or None when it is not one."""
    if not item_id.startswith(APPROVAL_PREFIX):
        return None
    run_hex, sep, encoded = item_id[len(APPROVAL_PREFIX) :].partition("_")
    run = _uuid(run_hex, "")
    if run is None or not sep or not encoded:
        return None
    try:
        input_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (run, input_id) if input_id else None


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


def segment_of(response: str) -> tuple[str, int]:
    """The run id of a response id, and the seq its part of the run starts at (0: the
    run's first response).

    Raises:
        NotFound: not a response id (HTTP 404, reason RESPONSE_NOT_FOUND): OpenAI answers an
            unknown id with 404, whatever its form.
    """
    run: str | None = None
    from_seq = 0
    if response.startswith(RESPONSE_PREFIX):
        body, sep, seq_text = response[len(RESPONSE_PREFIX) :].partition("_")
        if not sep:
            run = _uuid(body, "")
        elif seq_text.isdigit() and len(seq_text) < 19 and int(seq_text) > 0:
            run, from_seq = _uuid(body, ""), int(seq_text)
    if run is None:
        raise NotFound(
            f"No response found with id '{response[:100]}'.", reason="RESPONSE_NOT_FOUND"
        )
    return run, from_seq


def run_id_of(response: str) -> str:
    """The run id of a response id (of any of its parts, `segment_of`).

    Raises:
        NotFound: not a response id (HTTP 404, reason RESPONSE_NOT_FOUND).
    """
    return segment_of(response)[0]


def conversation_of(conversation: str) -> str | None:
    """The Chorus conversation id of `conv_<hex>` (a bare UUID is accepted too), or None."""
    return _uuid(conversation, CONVERSATION_PREFIX) or _uuid(conversation, "")
