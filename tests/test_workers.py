"""Scans prepared in worker processes (read.workers) read exactly as in threads, and a worker
that dies on a scan costs that scan a reason, not the batch."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks import workers
from tasks.read import ReadOptions, prepare_pages
from tasks.storage import content_hash

TEMPLATE = "telegrama_nacional_2021"


def _kill_on_poison(data: bytes, uri: str, digest: str, template_name: str, opt: ReadOptions):
    """A job function for the pool: dies like a segfaulting decoder on scans named poison."""
    if "poison" in uri:
        os.kill(os.getpid(), signal.SIGKILL)
    return workers._prepare_job(data, uri, digest, template_name, opt)


def _hang_on_stuck(data: bytes, uri: str, digest: str, template_name: str, opt: ReadOptions):
    """A job function for the pool: never returns on scans named stuck, like a decoder in a loop."""
    if "stuck" in uri:
        time.sleep(3600)
    return workers._prepare_job(data, uri, digest, template_name, opt)


def _jobs(reference_scan) -> list[tuple[bytes, str, str]]:
    scan, _ = reference_scan
    data = scan.read_bytes()
    gray = cv2.imread(str(scan), cv2.IMREAD_GRAYSCALE)
    turned = cv2.imencode(".jpg", cv2.rotate(gray, cv2.ROTATE_180))[1].tobytes()
    blank = cv2.imencode(".png", np.full((2800, 1700), 250, np.uint8))[1].tobytes()
    items = [(data, "file:///s/2100100001X.jpg"), (turned, "file:///s/turned.jpg"),
             (blank, "file:///s/blank.png"), (data[:4000], "file:///s/cut.jpg"),
             (b"", "file:///s/empty.jpg")]
    return [(d, uri, content_hash(d)) for d, uri in items]


def _summary(pages) -> list[tuple]:
    out = []
    for p in pages:
        inputs = None if p.inputs is None else p.inputs.tobytes()
        out.append((p.uri, p.status, p.reason, p.quality, p.notes, p.owners, inputs,
                    {c: (s.kind, s.boxes, s.groups) for c, s in p.segs.items()},
                    {c: crop.tobytes() for c, crop in p.crops.items()}))
    return out


def test_worker_processes_prepare_exactly_as_this_process(reference_scan, template):
    opt = ReadOptions()
    jobs = _jobs(reference_scan)
    here = [prepare_pages(d, uri, digest, template, opt) for d, uri, digest in jobs]
    pool = workers.get_pool(2)
    futures = [workers.submit(pool, job, TEMPLATE, opt) for job in jobs]
    held = list(jobs)
    there = workers.collect(pool, held, futures, TEMPLATE, opt)
    assert [_summary(p) for p in there] == [_summary(p) for p in here]
    assert held == [None] * len(jobs)  # each file's bytes are let go once its pages are back
    statuses = [p[0].status for p in there]
    assert statuses == ["ok", "ok", "unaligned", "unreadable", "unreadable"]
    assert workers.get_pool(2) is pool  # reused, not restarted per chunk
    peaks = workers.peak_rss_mb()
    assert {"worker-0", "forkserver"} <= set(peaks) and all(v > 0 for v in peaks.values())


def _with_a_bad_scan(reference_scan, uri: str, digest: str) -> list[tuple[bytes, str, str]]:
    """Three readable jobs and, second, the reference scan's bytes under a name a job function
    of these tests misbehaves on."""
    jobs = _jobs(reference_scan)[:3]
    return [jobs[0], (jobs[0][0], uri, digest), *jobs[1:]]


def test_a_scan_that_kills_its_worker_gets_a_reason_and_the_others_are_read(reference_scan):
    opt = ReadOptions()
    jobs = _with_a_bad_scan(reference_scan, "file:///s/poison.jpg", "p0")
    pool = workers.get_pool(2)
    futures = [workers.submit(pool, job, TEMPLATE, opt, _kill_on_poison) for job in jobs]
    got = workers.collect(pool, list(jobs), futures, TEMPLATE, opt, _kill_on_poison)
    assert [p[0].uri for p in got] == [uri for _, uri, _ in jobs]
    assert [p[0].status for p in got] == ["ok", "unreadable", "ok", "unaligned"]
    assert got[1][0].reason.startswith("the reader's worker process died on this scan")
    assert got[1][0].content_hash == "p0"
    # the broken pool was replaced: the next chunk gets a working one
    fresh = workers.get_pool(2)
    assert fresh is not pool
    again = workers.collect(fresh, jobs[:1], [workers.submit(fresh, jobs[0], TEMPLATE, opt)], TEMPLATE, opt)
    assert again[0][0].status == "ok"


def test_a_scan_that_never_finishes_gets_a_reason_and_the_others_are_read(reference_scan):
    opt = ReadOptions()
    jobs = _with_a_bad_scan(reference_scan, "file:///s/stuck.jpg", "s0")
    stuck = jobs[1]
    pool = workers.get_pool(2)
    futures = [workers.submit(pool, job, TEMPLATE, opt, _hang_on_stuck) for job in jobs]
    started = time.monotonic()
    got = workers.collect(pool, list(jobs), futures, TEMPLATE, opt, _hang_on_stuck, timeout_s=3)
    assert time.monotonic() - started < 60  # not the hour the stuck job would take
    assert [p[0].uri for p in got] == [uri for _, uri, _ in jobs]
    assert [p[0].status for p in got] == ["ok", "unreadable", "ok", "unaligned"]
    assert got[1][0].reason.startswith("not prepared after 3 s") and got[1][0].content_hash == "s0"
    assert workers.get_pool(2) is not pool  # its processes were killed to stop the stuck job
    # stuck in the one-at-a-time pass too (after its pool lost its workers): the same verdict
    pool = workers.get_pool(2)
    futures = [workers.submit(pool, job, TEMPLATE, opt, _hang_on_stuck) for job in (stuck, jobs[2])]
    workers._kill(pool)
    got = workers.collect(pool, [stuck, jobs[2]], futures, TEMPLATE, opt, _hang_on_stuck, timeout_s=3)
    assert [p[0].status for p in got] == ["unreadable", "ok"]
    assert got[0][0].reason.startswith("not prepared after 3 s")


@pytest.mark.slow
def test_ingest_in_worker_processes_reads_like_threads(reading_env: Path, monkeypatch):
    """The same telegrams (and a corrupt file) ingested with read.workers 0 (threads) and 2
    (processes): identical readings and reasons, each stored once."""
    from sqlalchemy import select

    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from tasks.db import Reading, Scan, session_scope
    from tasks.settings import load_settings

    monkeypatch.setenv("CIFRAS_READ__CHUNK_SIZE", "3")
    generate_flow(count=5, seed=29)
    settings = load_settings()
    scans = Path(settings.scans_uri.removeprefix("file://"))
    (scans / "2100100099X.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    def stored() -> tuple[list[tuple], list[tuple]]:
        with session_scope(settings.db_url) as s:
            cells = list(s.execute(select(Reading.content_hash, Reading.cell_id, Reading.value,
                                          Reading.digits, Reading.status, Reading.confidence,
                                          Reading.reason).order_by(Reading.content_hash, Reading.cell_id)))
            files = list(s.execute(select(Scan.content_hash, Scan.status, Scan.reason, Scan.quality)
                                   .order_by(Scan.content_hash)))
        return cells, files

    monkeypatch.setenv("CIFRAS_READ__WORKERS", "0")
    threads = ingest_flow()
    before = stored()
    monkeypatch.setenv("CIFRAS_READ__WORKERS", "2")
    processes = ingest_flow(force=True)
    assert threads["scans"] == processes["scans"] == 6
    assert processes["read"] == threads["read"] == 5 and processes["unreadable"] == 1
    assert len(before[0]) == 5 * 31 and stored() == before
    assert processes["digit_accuracy"] == threads["digit_accuracy"]


def test_warm_starts_the_shared_pool_before_any_scan():
    """A run warms the pool while it resolves its model and lists its scans: the processes
    exist before the first chunk, and that chunk then uses the same pool."""
    import time

    workers.shutdown()
    workers.warm(2)
    pool = workers.get_pool(2)
    deadline = time.monotonic() + 60
    while len(workers._pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers._pids()) == 2
    assert workers.get_pool(2) is pool
    workers.shutdown()
    assert workers._pids() == []


def test_prepared_scan_carries_reframed_inputs_not_digit_images(reference_scan, template):
    """What a worker sends back per scan: each candidate digit once, as a model input."""
    data, uri, digest = _jobs(reference_scan)[0]
    (page,) = prepare_pages(data, uri, digest, template, ReadOptions())
    assert page.status == "ok" and len(page.owners) == len(page.inputs) > 28
    assert all(s.digits == [] for s in page.segs.values())
    # every hypothesis still points at its rows of `inputs`
    for cell_id, seg in page.segs.items():
        rows = sum(1 for o in page.owners if o == cell_id)
        assert {i for h in seg.groups for hyp in h for i in hyp} <= set(range(rows))


def test_large_blocks_freed_by_one_scan_are_reused_by_the_next():
    """By default each decode maps and zeroes its large blocks afresh (a page fault per 4 KB);
    with `keep_large_blocks` they come back from the heap."""
    import subprocess
    import sys

    code = """
import resource, sys
import cv2, numpy as np
from tasks.workers import keep_large_blocks
if sys.argv[1] == "keep":
    keep_large_blocks()
page = np.full((2800, 1700), 235, np.uint8)  # a scan's size
cv2.putText(page, "0123456789", (100, 1400), cv2.FONT_HERSHEY_SIMPLEX, 8, 20, 12)
data = cv2.imencode(".jpg", page)[1]
cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)  # the first decode faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    g = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    del g
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True, cwd=root).stdout)
              for mode in ("default", "keep")}
    if faults["default"] < 1000:
        pytest.skip(f"this C library reuses the blocks by itself ({faults['default']} faults)")
    pages = 20 * 2800 * 1700 // 4096
    assert faults["default"] > pages  # every decode maps its page afresh
    assert faults["keep"] < 0.02 * pages


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc)."""
    parent = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        stat = workers.process_stat(int(p))
        if stat is not None:
            parent[int(p)] = stat[0]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running, or at least not a zombie (one only waits for its parent to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_mid_run(reading_env: Path, sig: signal.Signals, env: dict[str, str]) -> tuple[int, set[int], int]:
    """Start `cifras ingest` on 60 new scans, send it `sig` once its first chunk is stored
    (its workers are reading the next), and wait until every process it had started is gone
    (20 s at most). Returns its exit code, the processes left behind, and the scans stored."""
    import subprocess
    import sys

    from sqlalchemy import func, select

    from flows.generate import generate_flow
    from tasks.db import Scan, session_scope
    from tasks.settings import load_settings

    generate_flow(count=60, seed=31)
    settings = load_settings()
    env = {**env, "CIFRAS_READ__WORKERS": "1", "CIFRAS_READ__THREADS": "1"}  # slower: stopped mid-run

    def stored() -> int:
        try:
            with session_scope(settings.db_url) as s:
                return s.scalar(select(func.count()).select_from(Scan)) or 0
        except Exception:  # the database does not exist yet
            return 0

    log = reading_env.parent / "ingest.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "cifras"), "ingest"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 240
        while stored() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the first chunk is stored: the workers are reading the next
        assert proc.poll() is None, f"ingest ended before it could be stopped\n{log.read_text()[-3000:]}"
        below = _descendants(proc.pid)
        assert len(below) >= 3, below  # at least the fork server, the resource tracker, a worker
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        left = _wait_for_exits(below, 20)
        for p in left:  # not to disturb the tests after this one
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        return code, left, stored()
    finally:
        if proc.poll() is None:
            proc.kill()


def _next_run_reads_the_rest(first: int, n: int = 60) -> None:
    from sqlalchemy import select

    from flows.ingest import ingest_flow
    from tasks.db import Scan, session_scope
    from tasks.settings import load_settings

    assert 0 < first < n
    rest = ingest_flow()
    assert rest["scans"] == n - first and rest["unreadable"] == 0
    with session_scope(load_settings().db_url) as s:
        rows = s.execute(select(Scan.content_hash, Scan.status)).all()
    assert len(rows) == len({h for h, _ in rows}) == n and {st for _, st in rows} == {"ok"}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_sigterm_mid_run_leaves_no_process_behind_and_the_next_run_reads_the_rest(reading_env: Path):
    """`cifras ingest` stopped by SIGTERM while its workers read: it exits (143) through its exit
    handlers, and its workers, fork server and temporary Prefect server go with it (before,
    they lived on, orphaned). The chunks it stored stay; the next run reads the others, each
    scan once, none marked unreadable by the stop."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    code, left, first = _stop_mid_run(reading_env, signal.SIGTERM, env)
    assert code == 128 + signal.SIGTERM, (reading_env.parent / "ingest.log").read_text()[-3000:]
    assert not left, "processes left behind after SIGTERM"
    _next_run_reads_the_rest(first)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_sigkill_mid_run_leaves_no_process_behind_and_the_next_run_reads_the_rest(reading_env: Path):
    """A SIGKILL (the OOM killer) cannot be handled; the workers then end themselves, the fork
    server and resource tracker follow, and the reaper stops the temporary Prefect server
    (before, all of them lived on for ever: a worker blocked sending its result, the server
    unaware). The next run reads the scans it did not store."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    code, left, first = _stop_mid_run(reading_env, signal.SIGKILL, env)
    assert code == -signal.SIGKILL
    assert not left, "processes left behind after SIGKILL"
    _next_run_reads_the_rest(first)


def _wait_for_exits(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_workers_end_when_the_process_they_serve_is_killed():
    """Each worker follows its owner, busy or idle: here the owner is a stand-in process,
    killed while one worker sleeps in a job."""
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pool = workers.new_pool(2, owner=owner.pid)
    try:
        assert pool.submit(workers._ready).result(timeout=60) > 0
        pool.submit(time.sleep, 600)  # one worker busy, for ever
        pids = set(pool._processes)
        assert pids and _wait_for_exits(pids, 0.5) == pids  # they run while their owner does
        owner.kill()
        owner.wait()
        assert _wait_for_exits(pids, 10) == set()
    finally:
        owner.kill()
        for p in pool._processes:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        pool.shutdown(wait=False, cancel_futures=True)
