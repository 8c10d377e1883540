"""Errors a user can cause, and how the command line reports them.

ConfigError / DataError: bad input; the CLI prints the message on one line and exits 2.
DivergedError: the loss became NaN or inf; the CLI exits 3 and keeps the last good checkpoint.
WorkerError: a worker process or thread failed; the CLI exits 1 with the worker's message.
"""


class AsyncSGDError(Exception):
    """Base class for errors asyncsgd raises on purpose."""

    exit_code = 1


class ConfigError(AsyncSGDError, ValueError):
    """A setting has a value we do not accept; the message names it and what is accepted."""

    exit_code = 2


class DataError(AsyncSGDError, ValueError):
    """Data is missing or invalid; the message says where we looked and how to fix it."""

    exit_code = 2


class DivergedError(AsyncSGDError):
    """Training diverged (loss NaN or inf)."""

    exit_code = 3


class WorkerError(AsyncSGDError):
    """A worker failed; the message carries the worker's own error."""

    exit_code = 1
