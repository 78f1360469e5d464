"""What provider-svc can serve, for validating run specs before anything is stored.

`ModelCatalog` is built from `ProviderService.ListModels`; `CatalogCache` refreshes it at
most every `model_catalog_ttl_s` seconds, so CreateRun normally costs no extra call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from chorus.core.errors import Unavailable
from chorus.core.identity import SYSTEM_USER, current_request_id
from chorus.orchestrator.auth import CallAuth
from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

OPEN_MODEL_PROVIDERS = frozenset({"openai-compatible"})
"""Built-in providers that accept any model name (their server owns the model list)."""
BUILTIN_PROVIDERS = frozenset(
    {"openai", "anthropic", "azure-openai", "openai-compatible", "simulator"}
)
"""Provider names built into provider-svc (see provider-svc's README)."""


@dataclass
class ProviderInfo:
    """One provider as ListModels shows it."""

    name: str
    models: set[str] = field(default_factory=set)
    credentials_present: bool = False


@dataclass
class ModelCatalog:
    """Providers and their models, and the default provider."""

    providers: dict[str, ProviderInfo]
    default_provider: str

    @classmethod
    def from_response(cls, response: provider_service_pb2.ListModelsResponse) -> ModelCatalog:
        """Group the listed models by provider; the `default` model names the default provider."""
        providers: dict[str, ProviderInfo] = {}
        default = ""
        for model in response.models:
            info = providers.setdefault(model.ref.provider, ProviderInfo(model.ref.provider))
            info.models.add(model.ref.model)
            info.credentials_present |= model.credentials_present
            if model.default:
                default = model.ref.provider
        return cls(providers, default)

    def check(self, ref: chat_pb2.ModelRef) -> tuple[str, str] | None:
        """Why `ref` cannot be served, as `(sub-field, description)`, or None when it can.

        Models are checked only for built-in providers with a fixed model list; other
        providers (OpenAI-compatible servers, custom ones) accept any model name.
        """
        provider = ref.provider or self.default_provider
        info = self.providers.get(provider)
        if info is None:
            known = ", ".join(sorted(self.providers)) or "none"
            return "provider", f"unknown provider {provider!r}; configured providers: {known}"
        if not info.credentials_present:
            return "provider", f"provider {provider!r} has no credentials configured"
        if (
            ref.model
            and provider in BUILTIN_PROVIDERS
            and provider not in OPEN_MODEL_PROVIDERS
            and ref.model not in info.models
        ):
            known = ", ".join(sorted(info.models))
            return "model", f"unknown model {ref.model!r} of provider {provider!r}; known: {known}"
        return None


class CatalogCache:
    """The current `ModelCatalog`, fetched from provider-svc at most every `ttl_s` seconds.

    Args:
        stub: ProviderService stub.
        ttl_s: cache lifetime; 0 fetches on every call.
        auth: metadata of the calls.
    """

    def __init__(
        self,
        stub: provider_service_pb2_grpc.ProviderServiceStub,
        ttl_s: float,
        auth: CallAuth,
    ) -> None:
        self._stub = stub
        self._auth = auth
        self._ttl_s = ttl_s
        self._catalog: ModelCatalog | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> ModelCatalog:
        """The catalog.

        Raises:
            chorus.core.errors.Unavailable: provider-svc cannot be reached (and nothing is cached).
        """
        if self._catalog is not None and time.monotonic() - self._fetched < self._ttl_s:
            return self._catalog
        async with self._lock:
            if self._catalog is not None and time.monotonic() - self._fetched < self._ttl_s:
                return self._catalog
            try:
                response = await self._stub.ListModels(
                    provider_service_pb2.ListModelsRequest(),
                    metadata=self._auth.metadata(SYSTEM_USER, current_request_id()),
                    timeout=5.0,
                )
            except grpc.aio.AioRpcError as exc:
                if self._catalog is not None:  # stale beats nothing: the call path re-checks
                    return self._catalog
                raise Unavailable(
                    f"provider-svc cannot list models ({exc.code().name}: {exc.details()})",
                    reason="PROVIDER_SERVICE_UNAVAILABLE",
                ) from None
            self._catalog = ModelCatalog.from_response(response)
            self._fetched = time.monotonic()
            return self._catalog
