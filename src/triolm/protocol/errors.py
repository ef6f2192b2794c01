"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` (framework-free;
`triolm.http.errors` turns them into responses)."""

from __future__ import annotations

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


def anthropic_error_body(err: APIError) -> dict:
    """The error in Anthropic's shape `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"),
                                       "message": err.message}}


class RequestError(APIError):
    """A request the server will not run as sent: a 400 naming the field (`param`) and,
    where one applies, OpenAI's `code` (`context_length_exceeded`, `unknown_parameter`…)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(400, message, param=param, code=code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(message, param=param, code=code)
