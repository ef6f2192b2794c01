"""The API-key check, once for every guarded route: the OpenAI routes under /v1/ and
/tokenize, /detokenize and every route of the sessions, trainer and router admin
blueprints. Probes, /health and
/metrics stay open, and so do CORS preflights (a browser sends them without credentials).

Several keys may be valid (`--api-key` repeated, `--api-key-file`). A presented key is
compared with every one of them in constant time, hashed first so that neither which key
matched nor any key's length shows in the time taken.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from quart import Request

from triolm.protocol.errors import APIError

GUARDED_PREFIXES = ("/v1/",)
GUARDED_PATHS = frozenset({"/tokenize", "/detokenize"})
GUARDED_BLUEPRINTS = frozenset({"sessions", "trainer", "router_admin"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


class ApiKeys:
    """The keys a guarded request may present (none: the routes are open)."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(_digest(k) for k in dict.fromkeys(keys) if k)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        """Whether `presented` is one of the keys; the time taken depends on neither."""
        given = _digest(presented)
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(given, digest)
        return matched


def read_api_key_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped. A file
    without a key is refused: it would leave the routes open."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"API key file {path!r}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"API key file {path!r} holds no key")
    return keys


class KeySettings(Protocol):
    """Where the keys are configured: `ServerSettings` and `RouterSettings` alike."""

    @property
    def api_key(self) -> str | None: ...
    @property
    def extra_api_keys(self) -> tuple[str, ...]: ...
    @property
    def api_key_file(self) -> str | None: ...


def api_keys_of(settings: KeySettings) -> ApiKeys:
    """The keys of the settings; ValueError for a key file that is unreadable or holds none."""
    keys = [settings.api_key or "", *settings.extra_api_keys]
    if settings.api_key_file:
        keys += read_api_key_file(settings.api_key_file)
    return ApiKeys(keys)


def is_guarded(request: Request) -> bool:
    if request.method == "OPTIONS":
        return False
    return (request.path.startswith(GUARDED_PREFIXES) or request.path in GUARDED_PATHS
            or request.blueprint in GUARDED_BLUEPRINTS)


def api_key_error(keys: ApiKeys, request: Request) -> APIError | None:
    """The 401 for a guarded request without `Authorization: Bearer <one of the keys>` (or
    `x-api-key: <one of the keys>`, as Anthropic's clients send it), else None."""
    if not keys or not is_guarded(request):
        return None
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and keys.accepts(presented.strip()):
        return None
    x_api_key = request.headers.get("x-api-key")
    if x_api_key is not None and keys.accepts(x_api_key.strip()):
        return None
    return APIError(401, "invalid or missing API key (Authorization: Bearer … or x-api-key)",
                    code="invalid_api_key")
