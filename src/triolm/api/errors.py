"""Error responses: OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, and
Anthropic's `{"type": "error", "error": {"type", "message"}}` on the Messages API routes
(its client reads that shape)."""

from __future__ import annotations

from quart import Response, has_request_context, jsonify, request

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """Raise anywhere in a handler; the app turns it into the error JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 error_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


# Anthropic's error types by status (its client maps them to exception classes)
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
ANTHROPIC_ROUTES = "/v1/messages"


def anthropic_error_body(err: APIError) -> dict:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"),
                                       "message": err.message}}


def error_response(err: APIError) -> Response:
    """The error in the shape the route's protocol speaks: every error of a request to the
    Messages API (auth, routing, body size and handler errors alike) in Anthropic's."""
    anthropic = has_request_context() and request.path.startswith(ANTHROPIC_ROUTES)
    response = jsonify(anthropic_error_body(err) if anthropic else err.body())
    response.status_code = err.status
    return response


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)
