"""The model catalog: configured providers and models, their capabilities and prices, and cost.

The catalog is built once from `Settings` (environment + models file) and answers three
questions: which provider and model a `ModelRef` means (`Catalog.resolve`), what to list in
`ListModels` (`Catalog.list`), and what a call cost (`Price.cost_usd`).

Rules:
* An empty provider means the default provider; an empty model the provider's default model.
* A model must be listed for its provider (NOT_FOUND otherwise), except on providers with
  `allow_any_model` (by default only `openai-compatible`, whose model list is the server's).
* A provider without credentials is FAILED_PRECONDITION (the simulator needs none).
* Built-in models carry the prices the providers published when this was written (USD per
  million tokens); the models file overrides any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chorus.core.errors import FailedPrecondition, NotFound
from chorus.core.settings import ConfigurationError
from chorus.provider.settings import (
    CapabilitiesConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    ProviderKind,
    Settings,
    load_models_file,
)
from chorus.v1 import chat_pb2, provider_service_pb2

SIMULATOR = "simulator"
BUILTIN_PROVIDERS: tuple[ProviderKind, ...] = (
    "openai",
    "anthropic",
    "azure-openai",
    "openai-compatible",
    "simulator",
)
"""Built-in provider names (each is also the name of its kind), in default-provider order."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalized (see `chorus.v1.Usage`).

    `input_tokens` includes `cached_input_tokens` and `cache_write_tokens`; `output_tokens`
    includes `reasoning_tokens`.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, by kind of token."""

    input_per_mtok: float
    cached_input_per_mtok: float
    cache_write_per_mtok: float
    output_per_mtok: float

    @classmethod
    def from_config(cls, cfg: PriceConfig) -> Price:
        """Missing cached / cache-write prices default to the input price."""
        return cls(
            input_per_mtok=cfg.input_per_mtok,
            cached_input_per_mtok=cfg.input_per_mtok
            if cfg.cached_input_per_mtok is None
            else cfg.cached_input_per_mtok,
            cache_write_per_mtok=cfg.input_per_mtok
            if cfg.cache_write_per_mtok is None
            else cfg.cache_write_per_mtok,
            output_per_mtok=cfg.output_per_mtok,
        )

    def cost_usd(self, usage: Usage) -> float:
        """Cost of `usage` in USD.

        Uncached input = input − cached − cache writes (never below 0); each part is billed at
        its own price; reasoning tokens are output tokens and billed as such.
        """
        uncached = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
        return (
            uncached * self.input_per_mtok
            + usage.cached_input_tokens * self.cached_input_per_mtok
            + usage.cache_write_tokens * self.cache_write_per_mtok
            + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000

    def to_proto(self) -> provider_service_pb2.ModelPrice:
        return provider_service_pb2.ModelPrice(
            input_per_mtok=self.input_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok,
            cache_write_per_mtok=self.cache_write_per_mtok,
            output_per_mtok=self.output_per_mtok,
        )


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A configured provider. `api_key` is never logged (excluded from repr)."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    allow_any_model: bool = False

    @property
    def credentials_present(self) -> bool:
        """Whether calls can be made: a key (Azure: key + endpoint), a base URL for
        OpenAI-compatible servers (key optional), always for the simulator."""
        if self.kind == "simulator":
            return True
        if self.kind == "openai-compatible":
            return bool(self.base_url)
        if self.kind == "azure-openai":
            return bool(self.api_key and self.base_url)
        return bool(self.api_key)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model of a provider, resolved from a `ModelRef`."""

    provider: ProviderSpec
    name: str
    context_window: int = 0
    max_output_tokens: int | None = None
    capabilities: CapabilitiesConfig = field(default_factory=CapabilitiesConfig)
    price: Price | None = None
    listed: bool = True

    @property
    def key(self) -> tuple[str, str]:
        """`(provider name, model name)`: identity for cool-downs and logs."""
        return (self.provider.name, self.name)

    def ref(self) -> chat_pb2.ModelRef:
        return chat_pb2.ModelRef(provider=self.provider.name, model=self.name)


def _m(
    provider: str,
    name: str,
    ctx: int,
    max_out: int,
    price: tuple[float, float, float | None, float] | None,
    *,
    vision: bool = True,
    reasoning: bool = False,
    default: bool = False,
) -> ModelConfig:
    p = None
    if price is not None:
        p = PriceConfig(
            input_per_mtok=price[0],
            cached_input_per_mtok=price[1],
            cache_write_per_mtok=price[2],
            output_per_mtok=price[3],
        )
    return ModelConfig(
        provider=provider,
        name=name,
        context_window=ctx,
        max_output_tokens=max_out,
        capabilities=CapabilitiesConfig(tools=True, vision=vision, reasoning=reasoning),
        price=p,
        default=default,
    )


BUILTIN_MODELS: tuple[ModelConfig, ...] = (
    # OpenAI (USD / Mtok: input, cached input, cache write = input, output).
    _m("openai", "gpt-4o-mini", 128_000, 16_384, (0.15, 0.075, None, 0.60), default=True),
    _m("openai", "gpt-4o", 128_000, 16_384, (2.50, 1.25, None, 10.0)),
    _m("openai", "gpt-4.1", 1_047_576, 32_768, (2.00, 0.50, None, 8.00)),
    _m("openai", "gpt-4.1-mini", 1_047_576, 32_768, (0.40, 0.10, None, 1.60)),
    _m("openai", "gpt-4.1-nano", 1_047_576, 32_768, (0.10, 0.025, None, 0.40)),
    _m("openai", "o4-mini", 200_000, 100_000, (1.10, 0.275, None, 4.40), reasoning=True),
    _m("openai", "gpt-5", 400_000, 128_000, (1.25, 0.125, None, 10.0), reasoning=True),
    _m("openai", "gpt-5-mini", 400_000, 128_000, (0.25, 0.025, None, 2.00), reasoning=True),
    # Anthropic (input, cache read, cache write (5 min), output); no price known here for
    # Sonnet 4.6, so none is reported until the models file sets one.
    _m("anthropic", "claude-sonnet-4-6", 200_000, 64_000, None, reasoning=True, default=True),
    _m("anthropic", "claude-haiku-4-5", 200_000, 64_000, (1.0, 0.10, 1.25, 5.0), reasoning=True),
    _m("anthropic", "claude-opus-4-5", 200_000, 64_000, (5.0, 0.50, 6.25, 25.0), reasoning=True),
    # Simulator: nominal prices so cost arithmetic is exercised offline.
    _m("simulator", "sim-1", 128_000, 8_192, (0.10, 0.025, 0.125, 0.40), default=True),
    _m("simulator", "sim-fast", 128_000, 8_192, (0.10, 0.025, 0.125, 0.40)),
    _m("simulator", "sim-reasoning", 128_000, 8_192, (0.10, 0.025, 0.125, 0.40), reasoning=True),
)


def _builtin_providers(settings: Settings) -> dict[str, ProviderConfig]:
    return {
        "openai": ProviderConfig(
            kind="openai", base_url=settings.openai_base_url, api_key=settings.openai_api_key
        ),
        "anthropic": ProviderConfig(
            kind="anthropic",
            base_url=settings.anthropic_base_url,
            api_key=settings.anthropic_api_key,
        ),
        "azure-openai": ProviderConfig(
            kind="azure-openai",
            base_url=settings.azure_openai_endpoint,
            api_key=settings.azure_openai_api_key,
            api_version=settings.azure_openai_api_version,
        ),
        "openai-compatible": ProviderConfig(
            kind="openai-compatible",
            base_url=settings.openai_compatible_base_url,
            api_key=settings.openai_compatible_api_key,
        ),
        "simulator": ProviderConfig(kind="simulator"),
    }


class Catalog:
    """Providers and models configured for this process (immutable after construction).

    Args:
        providers: name → provider.
        models: the listed models (at most one default per provider).
        default_provider: provider of requests that name none.
        default_model: model of requests that name neither provider nor model ("" = the
            default provider's default).
    """

    def __init__(
        self,
        providers: dict[str, ProviderSpec],
        models: list[ModelSpec],
        default_provider: str,
        default_model: str = "",
    ) -> None:
        self.providers = providers
        self._models: dict[tuple[str, str], ModelSpec] = {m.key: m for m in models}
        self._defaults: dict[str, str] = {}
        for m in models:
            self._defaults.setdefault(m.provider.name, m.name)
        self.default_provider = default_provider
        self.default_model = default_model

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """Built-in providers and models, then the environment, then the models file.

        Raises:
            ConfigurationError: unusable models file, unknown provider in it, or a default
                provider / model that is not configured.
        """
        provider_cfgs = _builtin_providers(settings)
        model_cfgs = list(BUILTIN_MODELS)
        model_cfgs += [
            ModelConfig(provider="azure-openai", name=n) for n in settings.azure_openai_deployments
        ]
        model_cfgs += [
            ModelConfig(provider="openai-compatible", name=n)
            for n in settings.openai_compatible_models
        ]
        if settings.models_file is not None:
            file = load_models_file(settings.models_file)
            for name, cfg in file.providers.items():
                base = provider_cfgs.get(name)
                if base is not None and base.kind != cfg.kind:
                    raise ConfigurationError(
                        f"models file: provider {name!r} is built in with kind {base.kind!r}"
                    )
                if base is not None:  # override the built-in field by field
                    merged = base.model_dump(exclude_none=True)
                    merged.update(cfg.model_dump(exclude_none=True, exclude_unset=True))
                    cfg = ProviderConfig.model_validate(merged)
                provider_cfgs[name] = cfg
            model_cfgs += file.models

        providers = {
            name: ProviderSpec(
                name=name,
                kind=cfg.kind,
                base_url=cfg.base_url,
                api_key=cfg.key(),
                api_version=cfg.api_version,
                allow_any_model=cfg.allow_any_model
                if cfg.allow_any_model is not None
                else cfg.kind == "openai-compatible",
            )
            for name, cfg in provider_cfgs.items()
        }
        # Later entries override earlier ones (the models file wins over built-ins); a
        # `default: true` entry moves to the front of its provider.
        by_key: dict[tuple[str, str], ModelConfig] = {}
        for model_cfg in model_cfgs:
            if model_cfg.provider not in providers:
                raise ConfigurationError(
                    f"model {model_cfg.name!r} names unknown provider {model_cfg.provider!r} "
                    f"(known: {', '.join(sorted(providers))})"
                )
            by_key[(model_cfg.provider, model_cfg.name)] = model_cfg
        defaults = {k: c for k, c in by_key.items() if c.default}
        ordered = [*defaults.values(), *(c for k, c in by_key.items() if k not in defaults)]
        models = [
            ModelSpec(
                provider=providers[c.provider],
                name=c.name,
                context_window=c.context_window,
                max_output_tokens=c.max_output_tokens,
                capabilities=c.capabilities,
                price=Price.from_config(c.price) if c.price is not None else None,
            )
            for c in ordered
        ]
        default_provider = settings.default_provider or next(
            p
            for p in BUILTIN_PROVIDERS
            if p == SIMULATOR or (providers[p].credentials_present and p in _defaults_of(models))
        )
        if default_provider not in providers:
            raise ConfigurationError(
                f"CHORUS_DEFAULT_PROVIDER {default_provider!r} is not configured "
                f"(known: {', '.join(sorted(providers))})"
            )
        catalog = cls(providers, models, default_provider, settings.default_model)
        if settings.default_model:
            catalog.resolve(chat_pb2.ModelRef(), check_credentials=False)
        return catalog

    def resolve(
        self, ref: chat_pb2.ModelRef, *, field: str = "model", check_credentials: bool = True
    ) -> ModelSpec:
        """The model `ref` means.

        Raises:
            NotFound: unknown provider (reason UNKNOWN_PROVIDER) or model (UNKNOWN_MODEL).
            FailedPrecondition: the provider has no credentials (MISSING_CREDENTIALS).
        """
        provider_name = ref.provider or self.default_provider
        provider = self.providers.get(provider_name)
        if provider is None:
            raise NotFound(
                f"{field}.provider: unknown provider {provider_name!r} "
                f"(configured: {', '.join(sorted(self.providers))})",
                reason="UNKNOWN_PROVIDER",
                metadata={"provider": provider_name},
            )
        model_name = ref.model
        if not model_name:
            if not ref.provider and self.default_model:
                model_name = self.default_model
            else:
                model_name = self._defaults.get(provider.name, "")
        spec = self._models.get((provider.name, model_name))
        if spec is None:
            if not model_name or not provider.allow_any_model:
                listed = sorted(n for (p, n) in self._models if p == provider.name)
                raise NotFound(
                    f"{field}.model: unknown model {model_name!r} of provider {provider.name!r} "
                    f"(configured: {', '.join(listed) or 'none'})",
                    reason="UNKNOWN_MODEL",
                    metadata={"provider": provider.name, "model": model_name},
                )
            spec = ModelSpec(provider=provider, name=model_name, listed=False)
        if check_credentials and not provider.credentials_present:
            raise FailedPrecondition(
                f"{field}: provider {provider.name!r} has no credentials configured",
                reason="MISSING_CREDENTIALS",
                metadata={"provider": provider.name},
            )
        return spec

    def list(self, provider: str = "") -> list[ModelSpec]:
        """Listed models, ordered by provider then model name (`provider` filters)."""
        return sorted(
            (m for m in self._models.values() if not provider or m.provider.name == provider),
            key=lambda m: m.key,
        )

    def to_proto(self, spec: ModelSpec, *, is_default: bool) -> provider_service_pb2.Model:
        """`spec` as a `chorus.v1.Model` (never with keys)."""
        caps = spec.capabilities
        return provider_service_pb2.Model(
            ref=spec.ref(),
            capabilities=provider_service_pb2.ModelCapabilities(
                tools=caps.tools,
                vision=caps.vision,
                reasoning=caps.reasoning,
                json_output=caps.json_output,
            ),
            context_window=spec.context_window,
            price=spec.price.to_proto() if spec.price is not None else None,
            credentials_present=spec.provider.credentials_present,
            default=is_default,
        )


def _defaults_of(models: list[ModelSpec]) -> set[str]:
    return {m.provider.name for m in models}


def estimate_input_tokens(request: provider_service_pb2.StreamChatRequest) -> int:
    """Input tokens of `request` estimated at 4 characters a token plus 4 per message.

    Used by the simulator, and when an upstream reports no usage (then `estimated` is set).
    """
    chars = 0
    for m in request.messages:
        chars += len(m.content) + len(m.name)
        for c in m.tool_calls:
            chars += len(c.name) + len(c.arguments)
    for t in request.tools:
        chars += len(t.name) + len(t.description) + t.parameters.ByteSize()
    return chars // 4 + 4 * len(request.messages)
