"""Who is calling: the four auth modes (`CHORUS_AUTH_MODE`).

* `none` — everyone is `anonymous_user`; only allowed on a loopback address
  (`GatewaySettings.check_gateway`).
* `basic` — HTTP Basic (RFC 7617) against one user and a bcrypt hash. bcrypt is slow by
  design (~0.2 s), so it runs in a worker thread and a verified credential is remembered
  for `auth_cache_ttl_s` under an HMAC of the credential (never the password itself). The
  user name is compared in constant time and bcrypt runs even for a wrong user, so timing
  does not reveal which part was wrong.
* `apikey` — `Authorization: Bearer <key>` (RFC 6750); keys are stored as SHA-256 digests
  (keys are random 256-bit secrets, so a fast hash is the standard choice).
* `easyauth` — Azure App Service Easy Auth: the proxy authenticates and sets
  `X-MS-CLIENT-PRINCIPAL-NAME` / `-ID`; trusted only with `easyauth_enabled`.

Failures are UNAUTHENTICATED (HTTP 401) with a `WWW-Authenticate` challenge for basic and
apikey. A name reserved for the services (`system`) is PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import bcrypt

from chorus.core.errors import PermissionDenied
from chorus.gateway.errors import AuthenticationRequired
from chorus.gateway.settings import GatewaySettings, user_name_problem

REALM = "chorus"
EASYAUTH_NAME_HEADER = "x-ms-client-principal-name"
EASYAUTH_ID_HEADER = "x-ms-client-principal-id"
EASYAUTH_IDP_HEADER = "x-ms-client-principal-idp"
_CACHE_MAX = 1024
# A valid bcrypt hash of a random password: checked against when the user name is wrong so a
# wrong user costs the same time as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=4))


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated end user.

    Attributes:
        user: the identity sent to the services as `x-chorus-user`.
        authenticated_by: the auth mode that accepted them (`none`, `basic`, `apikey`,
            `easyauth`).
        provider: for easyauth, the identity provider the proxy reported (e.g. `aad`).
    """

    user: str
    authenticated_by: str
    provider: str = ""


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in `api_key_hashes` for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh API key (`chorus_` + 43 url-safe characters) and its stored digest."""
    key = "chorus_" + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for `basic_password_hash`."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


class Authenticator:
    """Authenticates requests and WebSocket handshakes from their headers.

    Args:
        settings: the gateway settings (mode and credentials; validated by `check_gateway`).
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.mode = settings.auth_mode
        self._anonymous = settings.anonymous_user
        self._basic_user = (settings.basic_user or "").encode()
        self._basic_hash = (
            settings.basic_password_hash.get_secret_value().encode()
            if settings.basic_password_hash
            else b""
        )
        self._key_users = dict(settings.api_key_hashes)
        self._cache_ttl = settings.auth_cache_ttl_s
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()

    @property
    def challenge(self) -> str | None:
        """The `WWW-Authenticate` value of this mode, or None (none, easyauth)."""
        if self.mode == "basic":
            return f'Basic realm="{REALM}", charset="UTF-8"'
        if self.mode == "apikey":
            return f'Bearer realm="{REALM}"'
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request with these (case-insensitive) headers.

        Raises:
            AuthenticationRequired: missing or wrong credentials (HTTP 401).
            PermissionDenied: a reserved or malformed user name (HTTP 403).
        """
        if self.mode == "none":
            return Caller(self._anonymous, "none")
        if self.mode == "basic":
            return Caller(await self._basic(headers.get("authorization", "")), "basic")
        if self.mode == "apikey":
            return Caller(self._apikey(headers.get("authorization", "")), "apikey")
        return self._easyauth(headers)

    def _missing(self, message: str) -> AuthenticationRequired:
        return AuthenticationRequired(
            message, challenge=self.challenge, reason="MISSING_CREDENTIALS"
        )

    async def _basic(self, header: str) -> str:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise self._missing("authentication required: send HTTP Basic credentials")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise self._invalid("malformed Basic credentials") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise self._invalid("malformed Basic credentials")
        key = hmac.new(self._cache_key, decoded.encode(), hashlib.sha256).digest()
        now = time.monotonic()
        expiry = self._cache.get(key)
        if expiry is not None and expiry > now:
            return user
        user_ok = hmac.compare_digest(user.encode(), self._basic_user)
        hashed = self._basic_hash if user_ok else _DUMMY_HASH
        password_ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if not (user_ok and password_ok):
            raise self._invalid("wrong user name or password")
        if self._cache_ttl > 0:
            self._cache[key] = now + self._cache_ttl
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return user

    def _apikey(self, header: str) -> str:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise self._missing("authentication required: send Authorization: Bearer <api key>")
        user = self._key_users.get(hash_api_key(key.strip()))
        if user is None:
            raise AuthenticationRequired(
                "invalid API key",
                challenge=f'Bearer realm="{REALM}", error="invalid_token"',
                reason="INVALID_CREDENTIALS",
            )
        return user

    def _easyauth(self, headers: Mapping[str, str]) -> Caller:
        user = headers.get(EASYAUTH_NAME_HEADER) or headers.get(EASYAUTH_ID_HEADER) or ""
        if not user:
            raise AuthenticationRequired(
                "authentication required: no X-MS-CLIENT-PRINCIPAL-NAME from the proxy",
                challenge=None,
                reason="MISSING_CREDENTIALS",
            )
        problem = user_name_problem(user)
        if problem:
            raise PermissionDenied(problem, reason="RESERVED_USER")
        return Caller(user, "easyauth", headers.get(EASYAUTH_IDP_HEADER, ""))

    def _invalid(self, message: str) -> AuthenticationRequired:
        return AuthenticationRequired(
            message, challenge=self.challenge, reason="INVALID_CREDENTIALS"
        )
