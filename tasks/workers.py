"""Worker processes that prepare scans (decode, register, crop, segment, reframe).

Those stages are pure functions, and much of their time is Python and small NumPy calls that
hold the GIL, so threads in one process barely use a second core. `read.workers` processes
each take one scan at a time: the parent sends the file's bytes and gets back the small
`PreparedScan` (cell crops, digit inputs), never the decoded page.

- One pool per process, started on first use and reused by every chunk and run after it
  (starting workers costs about a second). The processes come from a fork server, which
  starts from a fresh interpreter, so TensorFlow, ONNX Runtime or Prefect threads of the
  parent are never forked. Workers import only the reading modules, not the model.
- OpenCV runs one thread per worker: the workers are the parallelism.
- glibc keeps the large blocks a scan frees for the next scan (`keep_large_blocks`), in the
  workers only: in the long-lived flow process the same setting let the heap fragment (its
  peak grew from 976 to 1,153 MB between 1,000 and 10,000 telegrams).
- A worker that dies (a segfault in a decoder, the OOM killer) breaks the pool. The scans
  that were in flight are then prepared again one at a time in a private one-worker pool, so
  that the scan that kills its worker is known: it gets the reason, the others their reading,
  and the batch goes on.
- A scan still not prepared `read.scan_timeout_s` after it came to the head of the queue (a
  decoder stuck on a malformed file) gets that as its reason; the pool's processes are killed,
  which is the only way to stop it, and the scans lost with them are redone as above. Without
  the limit one such file would hold the night for ever.
- A SIGTERM (a scheduler's time limit, `systemctl stop`, `kill`) ends the run promptly and
  leaves no process behind (`stop_on_sigterm`). Prefect turns the signal into a crashed flow
  run and then re-sends it to the process; with Python's default action the process died on
  the spot, and its workers, fork server and temporary Prefect server lived on, orphaned. Now
  the workers are killed and the process exits through its exit handlers. Scans not yet
  stored are not recorded at all, so the next run reads them.
- A SIGKILL cannot be handled: there each worker ends itself when the process it serves is
  gone (`exit_with`), and the fork server and resource tracker follow. A temporary Prefect
  server (no `PREFECT_API_URL`) is stopped by its reaper (`tasks.lifelines`).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress

from tasks import lifelines
from tasks.read import PreparedScan, ReadOptions, prepare_pages

CRASHED = "the reader's worker process died on this scan ({})"
STUCK = "not prepared after {:g} s; the reader's worker process was stopped (read.scan_timeout_s)"

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_stopping = threading.Event()  # set by SIGTERM: no new workers, no scan redone


class ReaderStopped(SystemExit):
    """The process is stopping: the chunk's scans are left unread for the next run, never
    recorded as unreadable. A SystemExit, so that no task retry starts them again."""


def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # preload the reading modules once in the fork server, and not the parent's __main__
        ctx.set_forkserver_preload(["tasks.workers"])
        return ctx
    return multiprocessing.get_context("spawn")


@functools.cache
def keep_large_blocks() -> None:
    """Have glibc reuse the large blocks a scan frees (a decoded page is 4.8 MB, its half-size
    masks 1.2 MB) instead of mapping and zeroing new ones for every scan. By default a block
    that size is mapped afresh each time (glibc raises its mapping threshold only *above* the
    largest block freed so far, and each scan asks for the same sizes again): decoding a scan
    took 9.5 ms instead of 6.4, a third of it page faults. Fixed thresholds at glibc's own
    adaptive maxima: freed memory up to 64 MB stays with the process."""
    with suppress(OSError, AttributeError):  # glibc only
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: twice that, as glibc adapts it


def _init_worker(owner: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    keep_large_blocks()
    exit_with(owner)


def exit_with(owner: int) -> None:
    """End this process as soon as process `owner` (the one whose pool it serves) is gone.

    A SIGKILL (the OOM killer, `kill -9`) gives the owner no chance to stop its workers, and
    they cannot see it go by themselves: a worker blocked sending its result, into a pipe that
    the other workers still hold open, waits for ever, and the fork server and the resource
    tracker wait for the workers. Measured before this: a killed `cifras ingest` left both
    workers, the fork server and the resource tracker running. A daemon thread waits on the
    owner's pidfd (Linux 5.3+; elsewhere it polls once a second) and exits the process."""
    try:
        fd = lifelines.pidfd(owner)
    except ProcessLookupError:
        os._exit(1)  # already gone
    threading.Thread(target=_exit_after, args=(owner, fd), name="exit-with-owner", daemon=True).start()


def _exit_after(owner: int, fd: int | None) -> None:
    lifelines.wait_for_exit(owner, fd)
    os._exit(1)


def _prepare_job(data: bytes, uri: str, digest: str, template_name: str, opt: ReadOptions
                 ) -> list[PreparedScan]:
    from tasks.template import load_template

    return prepare_pages(data, uri, digest, load_template(template_name), opt)


def new_pool(size: int, owner: int | None = None) -> ProcessPoolExecutor:
    """A private pool of `size` reader workers (the shared one is `get_pool`), which end when
    process `owner` (by default this one) does, however it ends (`exit_with`)."""
    return ProcessPoolExecutor(size, mp_context=_context(), initializer=_init_worker,
                               initargs=(owner or os.getpid(),))


def get_pool(size: int) -> ProcessPoolExecutor:
    """The process's shared pool of `size` workers (replaced if its size changed)."""
    global _pool, _pool_size
    if _stopping.is_set():
        raise ReaderStopped("the process is stopping (SIGTERM): no new reader workers")
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            _pool, _pool_size = new_pool(size), size
        return _pool


def _ready() -> int:
    return os.getpid()


def warm(size: int) -> None:
    """Start the shared pool's processes now, without waiting for them: a run calls this before
    resolving its model and listing its scans, so that the fork server and the workers' imports
    (about a second) overlap that work instead of delaying the first chunk."""
    pool = get_pool(size)
    for _ in range(size):
        pool.submit(_ready)


def _kill(pool: ProcessPoolExecutor) -> None:
    """End a pool's processes now: its futures still pending fail with BrokenProcessPool."""
    for proc in list((pool._processes or {}).values()):
        with suppress(OSError, AttributeError):
            proc.kill()


def _discard(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool, unless another thread has already replaced it."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown)


def stop_on_sigterm() -> bool:
    """Have SIGTERM end this process through its exit handlers, after killing the reader's
    workers (module docstring). Only from the main thread, and only over Python's default
    action: a handler someone installed on purpose is kept. True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _on_sigterm(signum: int, frame: object) -> None:
    # no lock here: the handler runs in the main thread, which may hold it
    _stopping.set()
    pool = _pool
    if pool is not None:
        with suppress(Exception):  # the pool's manager thread may be changing its processes
            _kill(pool)
    raise SystemExit(128 + signum)


Job = tuple[bytes, str, str]  # file bytes, URI, content hash


def submit(pool: ProcessPoolExecutor, job: Job, template_name: str, opt: ReadOptions,
           fn: Callable = _prepare_job) -> Future:
    """Prepare one scan file in the pool (`fn`: a module-level function with the signature of
    `_prepare_job`, which the tests replace)."""
    data, uri, digest = job
    return pool.submit(fn, data, uri, digest, template_name, opt)


def collect(pool: ProcessPoolExecutor, jobs: list[Job | None], futures: Sequence[Future],
            template_name: str, opt: ReadOptions, fn: Callable = _prepare_job,
            timeout_s: float | None = None) -> list[list[PreparedScan]]:
    """The pages of each job, in order. Jobs lost to a dead worker are prepared again, one at a
    time in a private pool; a job that kills that worker too is recorded as unreadable, and so
    is a job not done `timeout_s` after its turn came (its pool is killed to stop it).
    Exceptions of `prepare_pages` itself (a bug, not bad input) propagate.

    A job is dropped from `jobs` once its pages are back: a chunk's file bytes (0.6 MB a
    scan) are then not all held until its last scan is prepared."""
    out: list[list[PreparedScan] | None] = []
    lost, killed = [], False
    for i, f in enumerate(futures):
        # jobs start in the order sent: once the earlier ones are back this one has started,
        # or waits only behind the other chunk in flight, so it gets about `timeout_s` itself
        try:
            out.append(f.result(timeout=timeout_s))
            jobs[i] = None
        except BrokenProcessPool:
            out.append(None)
            lost.append(i)
        except TimeoutError:
            out.append(_unreadable(jobs[i], STUCK.format(timeout_s)))
            jobs[i] = None
            _kill(pool)  # the jobs still in it fail with BrokenProcessPool and are redone below
            killed = True
    if lost or killed:
        _discard(pool)
    if lost and _stopping.is_set():  # killed on the way out, not by a scan
        raise ReaderStopped(f"the process is stopping (SIGTERM): {len(lost)} scans left for the next run")
    if lost:
        solo: ProcessPoolExecutor | None = None
        try:
            for i in lost:
                solo = solo or new_pool(1)
                job = jobs[i]
                assert job is not None  # lost jobs are kept
                try:
                    out[i] = submit(solo, job, template_name, opt, fn).result(timeout=timeout_s)
                except (BrokenProcessPool, TimeoutError) as exc:
                    _kill(solo)
                    solo.shutdown(wait=False, cancel_futures=True)
                    solo = None
                    out[i] = _unreadable(job, STUCK.format(timeout_s) if isinstance(exc, TimeoutError)
                                         else CRASHED.format("killed or crashed while reading it"))
        finally:
            if solo is not None:
                solo.shutdown(wait=True)
    return out  # type: ignore[return-value]


def _unreadable(job: Job | None, reason: str) -> list[PreparedScan]:
    assert job is not None
    _, uri, digest = job
    return [PreparedScan(uri, digest, "unreadable", reason)]


def _pids() -> list[int]:
    with _lock:
        return list((_pool._processes or {}).keys()) if _pool is not None else []


def process_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, from /proc (Linux); None when it
    is gone or there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks  # ppid; utime, stime
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by the live workers (Linux; 0 elsewhere)."""
    return sum(stat[1] for stat in map(process_stat, _pids()) if stat is not None)


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (VmHWM, MB) of each live worker and of the fork server (Linux)."""
    out = {}
    pids = _pids()
    from multiprocessing import forkserver

    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    for name, pid in [*((f"worker-{i}", p) for i, p in enumerate(pids)), ("forkserver", server)]:
        if pid is None:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out
