"""Settings of provider-svc: ports, provider credentials, the models file, retries, timeouts.

Everything comes from `CHORUS_*` environment variables (and `.env`), with two additions:

* **Secret files.** Any setting can also be read from a file named after its variable in
  lower case (`chorus_openai_api_key`) inside `CHORUS_SECRETS_DIR` (default `/run/secrets`,
  the Docker / Kubernetes convention). Environment variables win over files.
* **A models file.** `CHORUS_MODELS_FILE` names a YAML file with extra `providers` (more
  OpenAI-compatible servers, a second Azure resource, …) and `models` (context window,
  capabilities, prices, default output limit). Its format is documented in
  provider-svc/README.md and parsed by `load_models_file`.

Keys are `SecretStr`: they never appear in logs, reprs or `ListModels`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from chorus.core.settings import ConfigurationError, CoreSettings

ProviderKind = Literal["openai", "azure-openai", "anthropic", "openai-compatible", "simulator"]
"""The wire protocols provider-svc speaks; every configured provider has one of them."""

DEFAULT_SECRETS_DIR = "/run/secrets"


class PriceConfig(BaseModel):
    """Prices of a model in US dollars per million tokens (AIP-free, as the providers publish them)."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(0.0, ge=0)
    cached_input_per_mtok: float | None = Field(
        None, ge=0, description="Defaults to `input_per_mtok` when the provider has no discount."
    )
    cache_write_per_mtok: float | None = Field(
        None, ge=0, description="Defaults to `input_per_mtok`."
    )
    output_per_mtok: float = Field(0.0, ge=0)


class CapabilitiesConfig(BaseModel):
    """What a model can do (reported by ListModels; `tools` is enforced on requests)."""

    model_config = ConfigDict(extra="forbid")

    tools: bool = True
    vision: bool = False
    reasoning: bool = False
    json_output: bool = True


class ModelConfig(BaseModel):
    """One entry of the models file's `models` list."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    name: str = Field(min_length=1, description="The provider's model name (Azure: deployment).")
    context_window: int = Field(0, ge=0, description="Tokens; 0 = unknown.")
    max_output_tokens: int | None = Field(
        None, ge=1, le=1_000_000, description="Default output limit when a request sets none."
    )
    capabilities: CapabilitiesConfig = Field(default_factory=CapabilitiesConfig)
    price: PriceConfig | None = None
    default: bool = Field(False, description="The provider's default model.")


class ProviderConfig(BaseModel):
    """One entry of the models file's `providers` mapping (name → config).

    The built-in providers (`openai`, `azure-openai`, `anthropic`, `openai-compatible`,
    `simulator`) are configured from environment variables; entries here add more, or
    override a built-in one field by field.
    """

    model_config = ConfigDict(extra="forbid")

    kind: ProviderKind
    base_url: str | None = Field(None, description="API base URL (Azure: the resource endpoint).")
    api_key: SecretStr | None = None
    api_key_file: Path | None = Field(None, description="Read the key from this file instead.")
    api_version: str | None = Field(None, description="Azure OpenAI `api-version`.")
    allow_any_model: bool | None = Field(
        None,
        description="Accept model names not listed in `models` (default: only for "
        "openai-compatible servers, whose model list is theirs).",
    )

    def key(self) -> str | None:
        """The API key, from `api_key` or `api_key_file` (stripped), or None."""
        if self.api_key is not None:
            return self.api_key.get_secret_value() or None
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text().strip() or None
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read api_key_file {self.api_key_file}: {exc}"
                ) from exc
        return None


class ModelsFile(BaseModel):
    """The YAML models file: `providers` (name → ProviderConfig) and `models` (list)."""

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)


def load_models_file(path: Path) -> ModelsFile:
    """Parse and validate the models file.

    Raises:
        ConfigurationError: the file is missing, not YAML, or does not match the schema
            (the message names the offending entry).
    """
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read CHORUS_MODELS_FILE {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"CHORUS_MODELS_FILE {path} is not valid YAML: {exc}") from exc
    try:
        return ModelsFile.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigurationError(f"CHORUS_MODELS_FILE {path} is invalid: {exc}") from exc


class Settings(CoreSettings):
    """Configuration of provider-svc (`CHORUS_*` environment variables or secret files).

    Every field is listed with its variable in provider-svc/README.md.
    """

    model_config = SettingsConfigDict(
        env_prefix="CHORUS_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    provider_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")

    # --- credentials of the built-in providers
    openai_api_key: SecretStr | None = Field(None, description="Key of the `openai` provider.")
    openai_base_url: str | None = Field(
        None, description="Base URL of the `openai` provider (default: the SDK's)."
    )
    anthropic_api_key: SecretStr | None = Field(
        None, description="Key of the `anthropic` provider."
    )
    anthropic_base_url: str | None = Field(
        None, description="Base URL of the `anthropic` provider, without `/v1`."
    )
    azure_openai_api_key: SecretStr | None = Field(None, description="Azure OpenAI key.")
    azure_openai_endpoint: str | None = Field(
        None, description="Azure OpenAI resource endpoint, `https://<resource>.openai.azure.com`."
    )
    azure_openai_api_version: str = Field("2024-10-21", description="Azure `api-version`.")
    azure_openai_deployments: list[str] = Field(
        default_factory=list,
        description="Deployment names served as `azure-openai` models (JSON list or via the models file).",
    )
    openai_compatible_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server (Ollama `http://localhost:11434/v1`, "
        "vLLM `http://localhost:8000/v1`, llama.cpp `http://127.0.0.1:8080/v1`).",
    )
    openai_compatible_api_key: SecretStr | None = Field(
        None, description="Key of the OpenAI-compatible server, if it wants one."
    )
    openai_compatible_models: list[str] = Field(
        default_factory=list, description="Models listed for the OpenAI-compatible server."
    )
    models_file: Path | None = Field(None, description="YAML file with extra providers and models.")
    secrets_dir: Path | None = Field(
        None, description=f"Directory of secret files (default {DEFAULT_SECRETS_DIR} if present)."
    )

    # --- defaults
    default_provider: str = Field(
        "",
        description="Provider used when a request names none; empty picks the first with "
        "credentials of openai, anthropic, azure-openai, openai-compatible, else simulator.",
    )
    default_model: str = Field(
        "", description="Model used when a request names none; empty = the provider's default."
    )
    default_max_output_tokens: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Output limit when neither request nor model sets one.",
    )
    max_input_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest accepted conversation (message contents + tool arguments), bytes.",
    )

    # --- retries, timeouts, cool-down
    max_attempts: int = Field(
        3, ge=1, le=10, description="Attempts per model (1 = no retry) before the next fallback."
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="First retry delay, seconds.")
    backoff_max_s: float = Field(8.0, gt=0, description="Largest retry delay, seconds.")
    retry_after_cap_s: float = Field(
        30.0,
        ge=0,
        description="Longest Retry-After honoured; a longer one moves on to the next fallback.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP + TLS connect timeout, seconds.")
    first_event_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait from sending a request to its first event, seconds."
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence between two events (pings excluded), seconds."
    )
    cooldown_failures: int = Field(
        5, ge=1, description="Consecutive failed attempts that put a model in cool-down."
    )
    cooldown_s: float = Field(30.0, ge=0, description="Cool-down length, seconds (0 disables).")

    coalesce_deltas: bool = Field(
        True,
        description="Merge consecutive text (or reasoning) deltas that arrive in one network "
        "read into one event: a busy caller gets fewer, larger messages; no added latency.",
    )

    # --- simulator
    simulator_time_to_first_token_s: float = Field(
        0.1, ge=0, description="Simulator's default delay before the first token, seconds."
    )
    simulator_tokens_per_second: float = Field(
        250.0, ge=0, description="Simulator's default speed (0 = as fast as possible)."
    )

    @field_validator("default_provider", "default_model")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init args, then environment, then `.env`, then secret files (lowest priority)."""
        secrets_dir = os.environ.get("CHORUS_SECRETS_DIR") or DEFAULT_SECRETS_DIR
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if Path(secrets_dir).is_dir():
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        return tuple(sources)
