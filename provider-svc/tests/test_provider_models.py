"""ListModels, the catalog from settings (environment, models file, secret files), cost, SSE decoding."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from provider_helpers import kinds, request

from chorus.core.settings import ConfigurationError
from chorus.provider.models import Catalog, Price, Usage
from chorus.provider.settings import PriceConfig, Settings
from chorus.provider.sse import SSEDecoder
from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)


async def test_list_models_reports_capabilities_prices_and_credentials_but_never_keys(
    provider,
) -> None:
    p = await provider(anthropic_api_key=None)
    listed = await p.stub.ListModels(provider_service_pb2.ListModelsRequest())
    refs = [(m.ref.provider, m.ref.model) for m in listed.models]

    assert refs == sorted(refs)
    by_ref = {(m.ref.provider, m.ref.model): m for m in listed.models}
    mini = by_ref[("openai", "gpt-4o-mini")]
    assert mini.credentials_present and mini.capabilities.tools and mini.context_window == 128_000
    assert (mini.price.input_per_mtok, mini.price.output_per_mtok) == (0.15, 0.60)
    assert not by_ref[("anthropic", "claude-haiku-4-5")].credentials_present
    assert by_ref[("azure-openai", "chat-deploy")].credentials_present
    defaults = [ref for ref, m in by_ref.items() if m.default]
    assert defaults == [("simulator", "sim-1")]
    wire = listed.SerializeToString()
    for secret in (b"sk-test-openai", b"azure-test-key"):
        assert secret not in wire


async def test_list_models_filters_by_provider(provider) -> None:
    p = await provider()
    listed = await p.stub.ListModels(
        provider_service_pb2.ListModelsRequest(provider="azure-openai")
    )
    assert [m.ref.model for m in listed.models] == ["chat-deploy"]


async def test_an_empty_model_ref_uses_the_default_provider_and_model(provider) -> None:
    p = await provider()
    events = await p.collect(
        provider_service_pb2.StreamChatRequest(messages=[request("hi").messages[0]])
    )
    assert (events[0].start.model.provider, events[0].start.model.model) == ("simulator", "sim-1")
    assert kinds(events)[-1] == "finish"


def test_default_provider_is_the_first_with_credentials_else_the_simulator() -> None:
    bare = Settings(_env_file=None)
    assert Catalog.from_settings(bare).default_provider == "simulator"
    keyed = Settings(_env_file=None, anthropic_api_key="sk-ant")
    assert Catalog.from_settings(keyed).default_provider == "anthropic"


def test_models_file_adds_providers_and_models_and_overrides_prices(tmp_path: Path) -> None:
    key_file = tmp_path / "ollama.key"
    key_file.write_text("ollama-secret\n")
    models = tmp_path / "models.yaml"
    models.write_text(
        f"""
providers:
  ollama:
    kind: openai-compatible
    base_url: http://127.0.0.1:11434/v1
    api_key_file: {key_file}
models:
  - provider: ollama
    name: llama3.2
    context_window: 131072
    default: true
    capabilities: {{tools: true, vision: false, reasoning: false, json_output: true}}
  - provider: openai
    name: gpt-4o-mini
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
"""
    )
    catalog = Catalog.from_settings(
        Settings(_env_file=None, models_file=models, default_provider="ollama")
    )

    spec = catalog.resolve(chat_pb2.ModelRef())
    assert (spec.provider.name, spec.name, spec.context_window) == ("ollama", "llama3.2", 131072)
    assert spec.provider.api_key == "ollama-secret"
    assert "ollama-secret" not in repr(spec)
    # unlisted models pass through on OpenAI-compatible servers
    assert catalog.resolve(chat_pb2.ModelRef(provider="ollama", model="qwen3")).listed is False
    mini = catalog.resolve(
        chat_pb2.ModelRef(provider="openai", model="gpt-4o-mini"), check_credentials=False
    )
    assert mini.price == Price(1.0, 1.0, 1.0, 2.0)


def test_invalid_models_file_is_a_configuration_error(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - provider: nowhere\n    name: x\n")
    with pytest.raises(ConfigurationError, match="unknown provider 'nowhere'"):
        Catalog.from_settings(Settings(_env_file=None, models_file=models))
    models.write_text("models: [{provider: openai}]\n")
    with pytest.raises(ConfigurationError, match="invalid"):
        Catalog.from_settings(Settings(_env_file=None, models_file=models))


def test_keys_are_read_from_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chorus_openai_api_key").write_text("sk-from-file")
    monkeypatch.setenv("CHORUS_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("CHORUS_OPENAI_API_KEY", raising=False)
    settings = Settings(_env_file=None)
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-file"
    monkeypatch.setenv("CHORUS_OPENAI_API_KEY", "sk-from-env")
    assert Settings(_env_file=None).openai_api_key.get_secret_value() == "sk-from-env"  # type: ignore[union-attr]


def test_cost_bills_uncached_cached_cache_write_and_output_tokens_at_their_prices() -> None:
    price = Price.from_config(
        PriceConfig(
            input_per_mtok=3.0,
            cached_input_per_mtok=0.3,
            cache_write_per_mtok=3.75,
            output_per_mtok=15.0,
        )
    )
    usage = Usage(
        input_tokens=2_000_000,
        cached_input_tokens=500_000,
        cache_write_tokens=250_000,
        output_tokens=100_000,
    )
    assert price.cost_usd(usage) == pytest.approx(1.25 * 3.0 + 0.5 * 0.3 + 0.25 * 3.75 + 0.1 * 15.0)
    assert Price.from_config(PriceConfig(input_per_mtok=2.0)).cached_input_per_mtok == 2.0


EVENTS = [
    ("", b'{"a": 1}'),
    ("message_start", b'{"b": "x\\ny"}'),
    ("", b"line1\nline2"),
    ("", b"[DONE]"),
]
WIRE = (
    b'data: {"a": 1}\n\n'
    b": comment\n\n"
    b'event: message_start\r\ndata: {"b": "x\\ny"}\r\n\r\n'
    b"id: 7\ndata: line1\ndata:line2\n\n"
    b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_sse_decoder_gives_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    points = sorted({0, len(WIRE), *cuts})
    decoder = SSEDecoder()
    out = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(WIRE[start:end])
    assert out == EVENTS


def test_simulator_script_is_deterministic_across_processes_of_the_same_seed() -> None:
    from chorus.provider.backends.simulator_script import write_script

    req = request("Summarize the history of the printing press")
    scripts = [
        write_script(req, reasoning_model=False, seed=99, max_output_tokens=4096, output_tokens=0)
        for _ in range(2)
    ]
    random.seed(1)  # the global generator must not matter
    again = write_script(
        req, reasoning_model=False, seed=99, max_output_tokens=4096, output_tokens=0
    )
    assert scripts[0] == scripts[1] == again
    assert json.dumps(scripts[0].text)  # plain strings
