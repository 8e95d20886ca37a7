"""Shared Prefect task options and a logger that works with or without a run context."""

from __future__ import annotations

import logging
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (network, locks, timeouts), not a CifrasError: a missing or
    corrupt file fails the same way every time, and retrying only delays the message."""
    from tasks.errors import CifrasError

    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # pragma: no cover - unreadable state: be conservative and retry
        return True
    return not isinstance(exc, CifrasError)


# I/O tasks (files, S3, databases, MLflow) retry with backoff: 2 s, 4 s, 8 s (+ jitter).
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_user_error,
    # Inputs are arrays and models: hashing them for a cache key is slow or impossible.
    "cache_policy": NO_CACHE,
}
# Pure computation: a retry would fail the same way, so none.
COMPUTE: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE}


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a flow's or task's exception with its traceback. For a CifrasError (a user's
    mistake: a bad path, no model yet) the traceback is noise before the CLI's one `error:`
    line: the record keeps its one-line message and loses the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.errors import CifrasError

        if record.exc_info and isinstance(record.exc_info[1], CifrasError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Drop the traceback from Prefect's run logs of a CifrasError (see the filter above)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(_UserErrorsWithoutTraceback())


def run_logger(name: str = "cifras") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task (shown in the UI), else a plain logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def temporary_server_reaped() -> int | None:
    """Without `PREFECT_API_URL`, start Prefect's temporary server now (the same one every
    client of this process then uses) with a reaper that stops it once this process is gone.
    Prefect stops it at a normal exit, and on SIGTERM since the reader's handler exits through
    those handlers; after a SIGKILL (the OOM killer) it lived on, orphaned, holding its port and
    the Prefect database, for every killed run. Returns the server's pid, None with a server URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    from tasks import lifelines

    server = SubprocessASGIServer()
    server.start()
    process = server.server_process
    if process is None:  # pragma: no cover - start() raises when it cannot start
        return None
    if process.pid not in _REAPED:
        lifelines.reap_with_owner(process.pid)
        _REAPED.add(process.pid)
    return process.pid


_REAPED: set[int] = set()  # servers of this process that have a reaper
