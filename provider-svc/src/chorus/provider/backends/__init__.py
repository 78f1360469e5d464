"""Backends: one per wire protocol (OpenAI family, Anthropic, the simulator).

Each turns one attempt of a `Call` into normalized `StreamChatResponse` delta events and
fills a `StreamResult` (response id, usage, finish reason); see `chorus.provider.backends.base`.
"""
