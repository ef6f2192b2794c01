"""An `APIError` as the HTTP response Quart sends."""

from __future__ import annotations

from quart import Response, jsonify

from triolm.protocol.errors import APIError


def error_response(err: APIError) -> Response:
    response = jsonify(err.body())
    response.status_code = err.status
    return response
