"""An incremental Server-Sent Events decoder over raw bytes (WHATWG event-stream format).

The SDKs' own stream classes build a pydantic model per chunk, ~50 µs each on this machine
(51.6 µs for an OpenAI chat chunk vs 0.7 µs for `orjson.loads`), which alone would cap a
process near 20k tokens/s. The backends therefore let the SDK build, authenticate and send
the request and map HTTP errors, then decode the body here. Only `event:` and `data:` fields
matter to the providers; comments (`: ping`), `id:` and `retry:` are skipped.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed body chunks; get complete events as `(event name, data bytes)`.

    Multi-line `data:` fields are joined with `\\n`; `\\r\\n` line endings are accepted; an
    event with neither a name nor data (a lone comment) is not returned.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Events completed by `chunk`, in order."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            tail = buf.endswith(b"\r")
            buf = buf[:-1].replace(b"\r\n", b"\n") + b"\r" if tail else buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        out: list[tuple[str, bytes]] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:  # the common single-line event
                out.append(("", block[6:]))
                continue
            event = ""
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if not line or line[0] == 58:  # ":" comment
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    event = value.decode()
            if event or data:
                out.append((event, b"\n".join(data)))
        return out
