"""Settings that must not serve are refused, with one clear message; the credential helpers
produce what the settings expect."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from pydantic import ValidationError

from chorus.core.settings import ConfigurationError, CoreSettings
from chorus.gateway.auth import hash_api_key, hash_password
from chorus.gateway.settings import GatewaySettings, is_loopback

HASH = hash_password("correct horse", rounds=4)


def make(**kwargs: object) -> GatewaySettings:
    return GatewaySettings(_env_file=None, internal_token="t", **kwargs)  # type: ignore[call-arg]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_auth_none_is_allowed_on_loopback(host: str) -> None:
    assert is_loopback(host)
    make(gateway_host=host, auth_mode="none").check_gateway()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_auth_none_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(ConfigurationError, match="only on a loopback"):
        make(gateway_host=host, auth_mode="none").check_gateway()


def test_basic_needs_user_and_a_bcrypt_hash() -> None:
    with pytest.raises(ConfigurationError, match="BASIC_USER"):
        make(auth_mode="basic", basic_password_hash=HASH).check_gateway()
    with pytest.raises(ConfigurationError, match="not a bcrypt hash"):
        make(auth_mode="basic", basic_user="ann", basic_password_hash="plain").check_gateway()
    make(
        gateway_host="0.0.0.0", auth_mode="basic", basic_user="ann", basic_password_hash=HASH
    ).check_gateway()


@pytest.mark.parametrize("user", ["system", "System", " SYSTEM "])
def test_no_end_user_may_be_named_system(user: str) -> None:
    with pytest.raises(ConfigurationError, match="reserved"):
        make(auth_mode="basic", basic_user=user, basic_password_hash=HASH).check_gateway()
    with pytest.raises(ConfigurationError, match="reserved"):
        make(auth_mode="apikey", api_key_hashes={hash_api_key("k"): user}).check_gateway()
    with pytest.raises(ConfigurationError, match="reserved"):
        make(auth_mode="none", anonymous_user=user).check_gateway()


def test_apikey_needs_sha256_digests() -> None:
    with pytest.raises(ConfigurationError, match="API_KEY_HASHES"):
        make(auth_mode="apikey").check_gateway()
    with pytest.raises(ValidationError, match="SHA-256"):
        make(auth_mode="apikey", api_key_hashes={"not-a-digest": "ann"})
    settings = make(
        auth_mode="apikey", api_key_hashes={"SHA256:" + hash_api_key("k").upper(): "ann"}
    )
    assert settings.api_key_hashes == {hash_api_key("k"): "ann"}


def test_easyauth_needs_explicit_enabling() -> None:
    with pytest.raises(ConfigurationError, match="EASYAUTH_ENABLED"):
        make(auth_mode="easyauth").check_gateway()
    make(auth_mode="easyauth", easyauth_enabled=True, gateway_host="0.0.0.0").check_gateway()


def test_services_token_is_required_outside_dev_mode() -> None:
    settings = GatewaySettings(_env_file=None, internal_token=None, dev_mode=False)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="INTERNAL_TOKEN"):
        settings.check_gateway()


@pytest.mark.parametrize("limit", ["10/minute", "5/second; 100/hour", ""])
def test_rate_limits_in_limits_notation(limit: str) -> None:
    assert make(rate_limit_runs=limit).rate_limit_runs == limit


def test_bad_rate_limit_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="not a rate limit"):
        make(rate_limit_runs="ten a minute")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50053",
        "orchestrator:50053",
        "10.0.0.5:50053,10.0.0.6:50053",
        " 127.0.0.1:1 , localhost:2 ",
        "[fd00::5]:50053,[fd00::6]:50053",
        "dns:///orchestrator.chorus.svc.cluster.local:50053",
        "ipv4:10.0.0.5:50053,10.0.0.6:50053",
    ],
)
def test_orchestrator_address_takes_one_address_a_list_or_a_dns_name(address: str) -> None:
    assert make(orchestrator_address=address).orchestrator_address == address.strip()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "address is required"),
        ("orchestrator", "is not host:port"),
        ("127.0.0.1:http", "is not host:port"),
        ("127.0.0.1:70000", "is not host:port"),
        ("10.0.0.5:50053,", "is not host:port"),
        ("orch-a:50053,orch-b:50053", "dns:///name:port"),
        ("10.0.0.5:50053,[fd00::6]:50053", "mixes IPv4 and IPv6"),
    ],
)
def test_a_bad_orchestrator_address_is_a_validation_error(address: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        make(orchestrator_address=address)


def test_watch_reattach_is_bounded_and_can_be_turned_off() -> None:
    assert make().watch_reattach_s == 60
    assert make(watch_reattach_s=0).watch_reattach_s == 0
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        make(watch_reattach_s=-1)


def test_process_refuses_to_start_with_a_bad_orchestrator_address_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chorus.gateway"],
        env={
            "PATH": "/usr/bin:/bin",
            "CHORUS_INTERNAL_TOKEN": "t",
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_ORCHESTRATOR_ADDRESS": "orch-a:50053,orch-b:50053",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    record = json.loads(done.stderr.strip().splitlines()[-1])
    assert record["event"] == "configuration_error"
    assert "orchestrator_address" in record["error"]
    assert "dns:///name:port" in record["error"]


def test_process_refuses_to_start_open_on_a_public_address() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chorus.gateway"],
        env={
            "PATH": "/usr/bin:/bin",
            "CHORUS_INTERNAL_TOKEN": "t",
            "CHORUS_GATEWAY_HOST": "0.0.0.0",
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_AUTH_MODE": "none",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    record = json.loads(done.stderr.strip().splitlines()[-1])
    assert record["event"] == "configuration_error"
    assert "loopback" in record["error"]


def test_new_api_key_command_prints_a_key_its_hash_accepts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chorus.gateway", "new-api-key", "--user", "carol"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = done.stdout.splitlines()[0].rsplit(" ", 1)[1]
    entry = json.loads(done.stdout.splitlines()[1].split(": ", 1)[1])
    assert entry == {hash_api_key(key): "carol"}


def test_hash_password_command_reads_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chorus.gateway", "hash-password"],
        input="s3cret-password\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert bcrypt.checkpw(b"s3cret-password", done.stdout.strip().encode())


def test_readme_documents_every_gateway_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    own = set(GatewaySettings.model_fields) - set(CoreSettings.model_fields)
    missing = [name for name in sorted(own) if f"CHORUS_{name.upper()}" not in readme]
    assert not missing
