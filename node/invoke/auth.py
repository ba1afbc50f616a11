"""Credentials for Azure ML online endpoints: endpoint keys, Entra tokens, and a thread-safe token cache.

An endpoint accepts ``Authorization: Bearer <secret>`` where the secret is one of

* an endpoint key (``auth: key``), read from the environment variable named by ``key_env`` or from the file
  ``key_file`` (a mounted secret, re-read when it changes);
* an Entra ID access token for the scope ``https://ml.azure.com/.default`` (``auth: entra``), from
  azure-identity's :class:`DefaultAzureCredential` or any injected ``TokenCredential``;
* nothing (``auth: none``, the local emulator).

Tokens are cached and refreshed :data:`REFRESH_MARGIN_SECONDS` before they expire. One cache per credential
object is shared by every :class:`~node.invoke.client.EndpointClient` in the process, so clients created per
job do not each ask Entra for a token. Secrets are never logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from node.config import ConfigError, EndpointSection

log = logging.getLogger(__name__)

ENTRA_SCOPE = "https://ml.azure.com/.default"
REFRESH_MARGIN_SECONDS = 300.0

# The clock of token expiry decisions; a function so tests can move time forward.
_now: Callable[[], float] = time.time


class AuthError(Exception):
    """No credential could be obtained. ``permanent``: configuration (retrying will not help)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class Authenticator(Protocol):
    """Produces the Authorization header of one call; ``invalidate`` drops a secret the endpoint refused."""

    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class NoAuth:
    """``auth: none``: no Authorization header (the local emulator)."""

    def headers(self) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NoAuth()"


class KeyFile:
    """An endpoint key kept in a file (a mounted Kubernetes or Docker secret), re-read whenever the file changes.

    The file's identity (inode, size, mtime) is checked at each call, which follows a secret rotated by an
    atomic symlink swap or by rewriting the file; :meth:`invalidate` forces a re-read (after a 401).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._key = ""

    def read(self) -> str:
        """The key, stripped of surrounding whitespace; AuthError when the file cannot be read or is empty."""
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                if seen != self._seen:
                    self._key = self.path.read_text(encoding="utf-8").strip()
                    self._seen = seen
                    log.info("endpoint key read from %s", self.path)
                key = self._key
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"cannot read the endpoint key file {self.path}: {type(exc).__name__}",
                            permanent=False) from exc
        if not key:
            raise AuthError(f"the endpoint key file {self.path} is empty", permanent=False)
        return key

    def invalidate(self) -> None:
        with self._lock:
            self._seen = None


class KeyAuth:
    """A fixed endpoint key, or a function returning it (read at every call, so a rotated key is seen)."""

    def __init__(self, key: str | Callable[[], str], reload: Callable[[], None] | None = None) -> None:
        self._key = key
        self._reload = reload

    def headers(self) -> dict[str, str]:
        key = self._key() if callable(self._key) else self._key
        if not key:
            raise AuthError("the endpoint key is empty", permanent=True)
        return {"Authorization": f"Bearer {key}"}

    def invalidate(self) -> None:
        if self._reload is not None:
            self._reload()

    def __repr__(self) -> str:  # never show the key
        return "KeyAuth(<redacted>)"


@dataclass(frozen=True)
class CachedToken:
    token: str
    expires_on: float  # POSIX seconds
    fetched_at: float


class TokenCache:
    """A token from ``fetch()``, reused until ``margin`` seconds before it expires. Thread-safe.

    ``fetch`` returns an object with ``token`` and ``expires_on`` (azure-core's ``AccessToken``). Only one thread
    fetches at a time; the others wait for its token instead of asking Entra in parallel.
    """

    def __init__(self, fetch: Callable[[], Any], *, margin: float = REFRESH_MARGIN_SECONDS,
                 clock: Callable[[], float] | None = None, what: str = "token") -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._what = what
        self._lock = threading.Lock()
        self._cached: CachedToken | None = None
        self.fetches = 0

    def _time(self) -> float:
        return self._clock() if self._clock is not None else _now()

    def _fresh(self, cached: CachedToken | None) -> bool:
        if cached is None:
            return False
        lifetime = cached.expires_on - cached.fetched_at
        # A token shorter-lived than twice the margin is refreshed at half its life, not on every call.
        margin = min(self._margin, max(lifetime, 0.0) / 2)
        return self._time() < cached.expires_on - margin

    def get(self) -> str:
        cached = self._cached
        if self._fresh(cached):
            return cached.token  # type: ignore[union-attr]
        with self._lock:
            if self._fresh(self._cached):
                return self._cached.token  # type: ignore[union-attr]
            now = self._time()
            result = self._fetch()
            token = getattr(result, "token", None) or getattr(result, "access_token", None)
            expires_on = getattr(result, "expires_on", None)
            if expires_on is None:
                expires_on = getattr(result, "expiry_time_utc", None)
            if not token:
                raise AuthError(f"the credential returned no {self._what}", permanent=True)
            self._cached = CachedToken(str(token), float(expires_on) if expires_on else now + 3600.0, now)
            self.fetches += 1
            log.debug("obtained a new %s, valid for %.0f s", self._what, self._cached.expires_on - now)
            return self._cached.token

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None


class TokenAuth:
    """Bearer token from a :class:`TokenCache`; a 401 drops the cached token so the next call fetches anew."""

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cache.get()}"}

    def invalidate(self) -> None:
        self.cache.invalidate()

    def __repr__(self) -> str:
        return "TokenAuth(<redacted>)"


# --- process-wide credential and token caches --------------------------------------------------------

_default_lock = threading.Lock()
_default_credential: Any = None
_caches_lock = threading.Lock()
_caches: "weakref.WeakKeyDictionary[Any, dict[str, TokenCache]]" = weakref.WeakKeyDictionary()
_caches_by_id: dict[int, tuple[Any, dict[str, TokenCache]]] = {}


def default_credential() -> Any:
    """The process's one :class:`azure.identity.DefaultAzureCredential` (created on first use)."""
    global _default_credential
    with _default_lock:
        if _default_credential is None:
            from azure.identity import DefaultAzureCredential

            _default_credential = DefaultAzureCredential()
        return _default_credential


def _credential_fetch(credential: Any, scope: str) -> Callable[[], Any]:
    def fetch() -> Any:
        try:
            return credential.get_token(scope)
        except Exception as exc:  # azure-identity raises a family of errors; classify them
            name = type(exc).__name__
            # CredentialUnavailableError: nothing configured (no managed identity, no az login...).
            permanent = name == "CredentialUnavailableError"
            raise AuthError(f"could not obtain an Entra token for {scope}: {name}: {exc}", permanent=permanent) from exc

    return fetch


def token_cache_for(credential: Any, scope: str = ENTRA_SCOPE) -> TokenCache:
    """The process-wide :class:`TokenCache` of ``credential`` for ``scope``."""
    with _caches_lock:
        try:
            per_scope = _caches.setdefault(credential, {})
        except TypeError:  # not weak-referenceable or not hashable: keep it alive by id
            entry = _caches_by_id.get(id(credential))
            if entry is None or entry[0] is not credential:
                entry = (credential, {})
                _caches_by_id[id(credential)] = entry
            per_scope = entry[1]
        cache = per_scope.get(scope)
        if cache is None:
            cache = TokenCache(_credential_fetch(credential, scope), what=f"Entra token for {scope}")
            per_scope[scope] = cache
        return cache


def entra_auth(credential: Any | None = None, scope: str = ENTRA_SCOPE) -> TokenAuth:
    """Bearer-token auth from ``credential`` (default: the process's DefaultAzureCredential)."""
    return TokenAuth(token_cache_for(credential if credential is not None else default_credential(), scope))


def endpoint_key(endpoint: EndpointSection) -> str | None:
    """The secret of an endpoint with ``auth: key``, from its environment variable."""
    if endpoint.auth != "key" or not endpoint.key_env:
        return None
    value = os.environ.get(endpoint.key_env)
    if not value:
        raise ConfigError(f"endpoint key: environment variable {endpoint.key_env} is not set or empty")
    return value
