"""chorus.gateway — the HTTP gateway (REST, SSE, WebSocket, web page)."""
