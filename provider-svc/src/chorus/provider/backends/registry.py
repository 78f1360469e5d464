"""One backend instance per configured provider, created on first use and closed with the app.

The HTTP backends' modules are imported on first use too (a process serving only the
simulator does not load them).
"""

from __future__ import annotations

from chorus.provider.backends.base import Backend
from chorus.provider.backends.simulator import Simulator
from chorus.provider.models import ProviderSpec
from chorus.provider.settings import Settings


class Backends:
    """Backends by provider name; the simulator is shared by every `simulator`-kind provider."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.simulator = Simulator(settings)
        self._by_name: dict[str, Backend] = {}

    def __call__(self, provider: ProviderSpec) -> Backend:
        """The backend of `provider` (its HTTP client is created on first use)."""
        backend = self._by_name.get(provider.name)
        if backend is None:
            if provider.kind == "simulator":
                backend = self.simulator
            elif provider.kind == "anthropic":
                from chorus.provider.backends.anthropic import AnthropicBackend

                backend = AnthropicBackend(provider, self._settings)
            else:
                from chorus.provider.backends.openai import OpenAIBackend

                backend = OpenAIBackend(provider, self._settings)
            self._by_name[provider.name] = backend
        return backend

    async def aclose(self) -> None:
        """Close every HTTP client."""
        for backend in self._by_name.values():
            await backend.aclose()
        self._by_name.clear()
