"""Errors the engine raises for requests it cannot take; each message says what to change."""


class InvalidRequestError(ValueError):
    """The request itself is wrong (empty prompt, token out of vocabulary, too long, ...)."""


class EngineStoppedError(RuntimeError):
    """The engine's step loop is not running (shut down, or never started)."""


class StartupError(RuntimeError):
    """The server could not start for a reason its operator can fix (a port taken, ...)."""
