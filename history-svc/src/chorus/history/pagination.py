"""Opaque page tokens (AIP-158) bound to the query that produced them.

A token is base64url JSON `{"q": <query fingerprint>, "k": <cursor>}`. The fingerprint is a
hash of the method, the caller and every filter, so a token used with another query (other
filters, other user, other method) is INVALID_ARGUMENT on `page_token` instead of silently
returning the wrong rows. Cursors are keyset positions (e.g. `[update_time_us, id]`), never
offsets, so pages stay stable while rows are added.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from chorus.core.errors import InvalidArgument

T = TypeVar("T")


def fingerprint(*parts: object) -> str:
    """A short stable hash of the query's parts (method name, owner, filters)."""
    return hashlib.blake2s(orjson.dumps([str(p) for p in parts]), digest_size=9).hexdigest()


def encode(query: str, cursor: list[Any]) -> str:
    """The token of the page after `cursor` in the query `query` (a `fingerprint`)."""
    return base64.urlsafe_b64encode(orjson.dumps({"q": query, "k": cursor})).decode().rstrip("=")


def decode(token: str, query: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The cursor of `token` for `query`, or None for an empty token (first page).

    Args:
        shape: the expected types of the cursor's items, e.g. `(int, str)`.

    Raises:
        InvalidArgument: the token is malformed or was issued for another query.
    """
    if not token:
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = data["k"]
        ok = (
            isinstance(cursor, list)
            and len(cursor) == len(shape)
            and all(type(v) is t for v, t in zip(cursor, shape, strict=True))
        )
    except (ValueError, TypeError, KeyError):
        ok, data = False, None
    if not ok:
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [("page_token", "malformed page token")],
            reason="INVALID_PAGE_TOKEN",
        )
    if data["q"] != query:
        raise InvalidArgument(
            "page_token belongs to another query (the filters or the caller changed)",
            [("page_token", "issued for a different query; start again without a token")],
            reason="INVALID_PAGE_TOKEN",
        )
    return cursor


async def page(
    query: str,
    token: str,
    shape: tuple[type, ...],
    size: int,
    fetch: Callable[[list[Any] | None, int], Awaitable[Sequence[T]]],
    cursor_of: Callable[[T], list[Any]],
) -> tuple[Sequence[T], str]:
    """One page of a List RPC: `fetch(cursor, size + 1)` after the cursor of `token` (None
    for the first page), then the first `size` items and the next page's token (from
    `cursor_of` the last item shown; "" when nothing follows).

    Raises:
        InvalidArgument: the token is malformed or was issued for another query.
    """
    found = await fetch(decode(token, query, shape), size + 1)
    if len(found) <= size:
        return found, ""
    return found[:size], encode(query, cursor_of(found[size - 1]))
