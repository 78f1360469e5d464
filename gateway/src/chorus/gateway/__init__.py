"""chorus.gateway — the HTTP gateway: REST, SSE and WebSocket for browsers, auth, rate limits,
AIP-193 errors and a small web page (see gateway/README.md)."""

__version__ = "0.1.0"
