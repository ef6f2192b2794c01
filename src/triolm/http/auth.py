"""The API-key check, once for every guarded route: the OpenAI routes under /v1/ and
/tokenize, /detokenize and every route of the sessions blueprint. Probes, /health and
/metrics stay open."""

from __future__ import annotations

import secrets

from quart import Request

from triolm.protocol.errors import APIError

GUARDED_PREFIXES = ("/v1/",)
GUARDED_PATHS = frozenset({"/tokenize", "/detokenize"})
GUARDED_BLUEPRINTS = frozenset({"sessions"})


def is_guarded(request: Request) -> bool:
    return (request.path.startswith(GUARDED_PREFIXES) or request.path in GUARDED_PATHS
            or request.blueprint in GUARDED_BLUEPRINTS)


def api_key_error(api_key: str | None, request: Request) -> APIError | None:
    """The 401 for a guarded request without `Authorization: Bearer <api_key>` (or
    `x-api-key: <api_key>`), else None."""
    if not api_key or not is_guarded(request):
        return None
    given = request.headers.get("Authorization", "")
    if secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        return None
    # Anthropic's clients send the key as `x-api-key`
    if secrets.compare_digest(request.headers.get("x-api-key", "").encode(), api_key.encode()):
        return None
    return APIError(401, "invalid or missing API key (Authorization: Bearer … or x-api-key)",
                    code="invalid_api_key")
