"""Processes bound to the life of another: they end when it is gone, however it went.

A SIGKILL (the OOM killer, `kill -9`) gives a process no chance to stop what it started.
Whatever it started must then notice by itself: the reader's workers watch their owner from a
thread (`tasks.workers.exit_with`); the temporary Prefect server, which is not our code, is
watched from outside by a small reaper process (`reap_with_owner`, run as
`python -m tasks.lifelines OWNER TARGET`).

This module imports only the standard library: the reaper starts in a few milliseconds and
holds a few megabytes for as long as its owner lives.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

GRACE_S = 10.0  # after SIGTERM, what the target gets to stop cleanly before SIGKILL


def pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (readable once it has exited; signals sent through it never reach a
    process that later got the same number); None where there are none (not Linux 5.3+).
    Raises ProcessLookupError when `pid` is already gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):
        return None


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or (PermissionError) its number now belongs to someone else's
        return False
    return True


def wait_for_exit(pid: int, fd: int | None, timeout: float | None = None) -> bool:
    """Block until process `pid` (with its pidfd `fd`, if any) has exited, or `timeout`
    seconds have passed; True if it has exited. Without a pidfd it polls once a second."""
    if fd is not None:
        return bool(select.select([fd], [], [], timeout)[0])
    deadline = None if timeout is None else time.monotonic() + timeout
    while exists(pid):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic())))
    return True


def _signal(pid: int, fd: int | None, sig: int) -> None:
    try:
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reap(owner: int, target: int, grace_s: float = GRACE_S) -> str:
    """Wait until `owner` or `target` has exited; if the owner went first, stop the target
    (SIGTERM, then SIGKILL after `grace_s`). Returns what happened, for the log and tests."""
    try:
        target_fd = pidfd(target)
    except ProcessLookupError:
        return "target already gone"
    try:
        owner_fd = pidfd(owner)
    except ProcessLookupError:
        owner_fd, owner_gone = None, True
    else:
        owner_gone = False
    if not owner_gone:
        if owner_fd is not None and target_fd is not None:
            ready = select.select([owner_fd, target_fd], [], [])[0]
            owner_gone = owner_fd in ready
        else:
            while exists(owner) and exists(target):
                time.sleep(1.0)
            owner_gone = not exists(owner)
    if not owner_gone:
        return "target ended first"
    _signal(target, target_fd, signal.SIGTERM)
    if wait_for_exit(target, target_fd, grace_s):
        return "target stopped"
    _signal(target, target_fd, signal.SIGKILL)
    return "target killed"


def reap_with_owner(target: int, owner: int | None = None) -> subprocess.Popen:
    """Start a reaper that stops process `target` once `owner` (this process by default) is
    gone. It ends by itself when the target ends first (a normal exit stops the target)."""
    owner = os.getpid() if owner is None else owner
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.lifelines", str(owner), str(target)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # its own process group: a Ctrl-C sent to the owner's group must not stop the reaper
        # before the owner has had its say
        start_new_session=True, close_fds=True,
    )


if __name__ == "__main__":
    reap(int(sys.argv[1]), int(sys.argv[2]))
