"""The reaper that stops a process once its owner is gone (tasks.lifelines)."""

from __future__ import annotations

import subprocess
import sys
import time

from tasks import lifelines

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
DEAF = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"]


def _gone(p: subprocess.Popen, seconds: float) -> bool:
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_the_target_is_stopped_when_its_owner_is_killed():
    owner, target = subprocess.Popen(SLEEP), subprocess.Popen(SLEEP)
    try:
        reaper = lifelines.reap_with_owner(target.pid, owner=owner.pid)
        assert not _gone(target, 0.5) and reaper.poll() is None  # both live while the owner does
        owner.kill()
        assert _gone(target, 10), "target left running after its owner was killed"
        assert target.returncode == -15  # SIGTERM first: a server gets to close its database
        assert _gone(reaper, 10)
    finally:
        owner.kill()
        target.kill()


def test_a_target_deaf_to_sigterm_is_killed_after_the_grace():
    owner = subprocess.Popen(SLEEP)
    target = subprocess.Popen(DEAF, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        owner.kill()
        owner.wait()
        t0 = time.monotonic()
        assert lifelines.reap(owner.pid, target.pid, grace_s=0.5) == "target killed"
        assert _gone(target, 5) and target.returncode == -9
        assert time.monotonic() - t0 >= 0.5
    finally:
        target.kill()


def test_the_reaper_leaves_quietly_when_the_target_ends_first():
    """A normal exit: the owner stops its server itself, and the reaper must not outlive it
    nor touch the owner."""
    owner, target = subprocess.Popen(SLEEP), subprocess.Popen(SLEEP)
    try:
        reaper = lifelines.reap_with_owner(target.pid, owner=owner.pid)
        time.sleep(0.3)
        target.terminate()
        target.wait()
        assert _gone(reaper, 10), "reaper still running after its target ended"
        assert owner.poll() is None
        assert lifelines.reap(owner.pid, target.pid) == "target already gone"
    finally:
        owner.kill()
        target.kill()
