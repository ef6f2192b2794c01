"""Errors shared across layers. The API layer maps them to OpenAI-style responses."""


class TriolmError(Exception):
    """Base class of every error triolm raises on purpose."""


class ModelLoadError(TriolmError):
    """A model file or directory cannot be loaded: names the file and what is wrong."""


class InvalidRequestError(TriolmError):
    """A request is invalid; becomes an HTTP 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
