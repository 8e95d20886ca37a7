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


def run_logger(name: str = "cifras") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task (shown in the UI), else a plain logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
