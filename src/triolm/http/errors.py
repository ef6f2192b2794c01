"""An `APIError` as the HTTP response Quart sends: in OpenAI's shape, or in Anthropic's on
the Messages API routes (its client reads that shape)."""

from __future__ import annotations

from quart import Response, has_request_context, jsonify, request

from triolm.protocol.errors import APIError, anthropic_error_body

ANTHROPIC_ROUTES = "/v1/messages"


def error_response(err: APIError) -> Response:
    """Every error of a request to the Messages API (auth, routing, body size and handler
    errors alike) in Anthropic's shape; every other in OpenAI's."""
    anthropic = has_request_context() and request.path.startswith(ANTHROPIC_ROUTES)
    response = jsonify(anthropic_error_body(err) if anthropic else err.body())
    response.status_code = err.status
    return response
