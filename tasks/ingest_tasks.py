"""Prefect tasks of the reading pipeline. Each handles a chunk of telegrams, not a cell, so
that orchestration costs little; I/O tasks retry with backoff, and a chunk that fails for
good leaves the other chunks' results written.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from fsspec.implementations.local import LocalFileSystem
from prefect import task

from tasks import tracking
from tasks.errors import CifrasError
from tasks.exports import Misread, collect, shard_payloads
from tasks.inference import BACKEND_NAMES, backend_of
from tasks.persist import known_scans, persist_chunk
from tasks.prefect_utils import COMPUTE, IO_RETRIES, run_logger
from tasks.read import PreparedScan, ReadOptions, ScanReading, infer_and_compose, prepare_pages
from tasks.settings import Settings
from tasks.storage import content_hash, filesystem, join, key_problem, modified_time, printable, write_bytes
from tasks.template import load_template


@dataclass(frozen=True)
class ObjectRef:
    uri: str
    size: int | None
    etag: str | None
    modified: datetime | None
    refused: str | None = None  # why this object is not read (its name or where it points)


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of time spans: the wall time during which some stage was working.
    Flow wall time minus this is what orchestration (and nothing else) cost."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


@dataclass
class ChunkResult:
    readings: list[ScanReading]
    timings: dict[str, float]
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (uri, hash): bytes already read
    vanished: list[str] = field(default_factory=list)
    span: tuple[float, float] = (0.0, 0.0)  # epoch seconds the task body ran (for busy time)


def read_options(settings: Settings) -> ReadOptions:
    r = settings.read
    return ReadOptions(pad=r.pad, ok_threshold=r.ok_threshold, reframe=r.reframe,
                       batch_size=r.batch_size, max_pixels=r.max_pixels, checksum=r.checksum,
                       max_pages=r.max_pages, pdf_dpi=r.pdf_dpi, second_look=r.second_look,
                       second_look_margin=r.second_look_margin)


def worker_processes(settings: Settings) -> int:
    """How many worker processes prepare scans in this process: `read.workers`, but none in a
    daemonic process (a Dask worker), which may not start processes and uses threads."""
    return 0 if multiprocessing.current_process().daemon else settings.read.workers


def list_objects(source: str, settings: Settings) -> list[ObjectRef]:
    """Image objects under a URL, in a stable order. An object whose name could escape the
    root (or not be stored), or a symlink leading out of a local root, is listed as refused
    with its reason, so that it is recorded rather than read or silently skipped."""
    fs, root = filesystem(source, settings)
    if not fs.exists(root):
        # a folder that is not there is a typo or a share that is not mounted: an empty
        # "completed" run would hide it; an object-store prefix with no objects yet is only empty
        if isinstance(fs, LocalFileSystem) or not fs.exists(root.split("/", 1)[0]):
            raise CifrasError(f"scans location {source} does not exist (a typo, or a share or "
                              "bucket not mounted?); nothing was read")
        return []
    found = fs.find(root, detail=True)
    protocol = source.split("://", 1)[0] if "://" in source else "file"
    suffixes = tuple(s.lower() for s in settings.read.suffixes)
    local = isinstance(fs, LocalFileSystem)
    real_root = os.path.realpath(root) if local else ""
    prefix = root.rstrip("/") + "/"
    refs = []
    for path, info in sorted(found.items()):
        if not path.lower().endswith(suffixes) or info.get("type") == "directory":
            continue
        uri = f"{protocol}://{path}" if protocol != "file" else f"file://{path}"
        etag = info.get("ETag") or info.get("etag")
        mod = modified_time(info)
        refused = key_problem(path[len(prefix):]) if path.startswith(prefix) else "outside the root"
        if refused is None and local and (info.get("islink") or info.get("type") != "file"):
            real = os.path.realpath(path)
            if not real.startswith(real_root.rstrip(os.sep) + os.sep):
                refused = "symlink pointing outside the scans root"
            elif not os.path.isfile(real):
                refused = "not a regular file"
        if refused:
            uri = printable(uri)
        refs.append(ObjectRef(uri, info.get("size"), str(etag or (mod.timestamp() if mod else "")), mod,
                              refused))
    return refs


@task(name="discover-scans", **IO_RETRIES)
def discover_task(settings: Settings, source: str, model_version: str, since: datetime | None,
                  until: datetime | None, force: bool, db_url: str) -> tuple[list[ObjectRef], int]:
    """New scans: objects not yet read by this model version (all of them with `force`)."""
    refs = list_objects(source, settings)
    if since or until:
        refs = [r for r in refs if r.modified is not None
                and (since is None or r.modified >= since) and (until is None or r.modified < until)]
    if force:
        return refs, 0
    seen, _ = known_scans(db_url, model_version)
    new = [r for r in refs if (r.uri, r.size, r.etag) not in seen]
    return new, len(refs) - len(new)


# Two chunks are read at once (flows.ingest._lookahead). Were their scans queued for the
# workers side by side, both would be ready only at the end of the two, and the workers would
# then wait while the first one is inferred and stored; queued one chunk after the other, the
# first is stored while the workers prepare the second.
_submitting = threading.Lock()


# what became of one listed object: "read" (its pages, possibly none), "vanished" or
# "duplicate"; its content hash ("" when it was never fetched); seconds spent fetching
Outcome = tuple[str, list[PreparedScan], str, float]


def _prepare_in_workers(refs: list[ObjectRef], fetch, workers: int, threads: int, template_name: str,
                        opt: ReadOptions, timeout_s: float) -> list[Outcome]:
    """Fetch in `threads` threads (I/O), prepare in the shared pool of worker processes: each
    scan goes to the pool as soon as its bytes are in."""
    from tasks import workers as worker_pool

    pool = worker_pool.get_pool(workers)

    def fetch_and_submit(ref: ObjectRef):
        outcome, got, digest, t_fetch = fetch(ref)
        if outcome != "read":
            return outcome, got, digest, t_fetch, None
        job = (got, ref.uri, digest)  # the bytes are held by the job alone, until its pages are back
        return outcome, None, digest, t_fetch, (job, worker_pool.submit(pool, job, template_name, opt))

    with _submitting:  # a chunk's scans queue behind the previous chunk's, not among them
        if threads > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="fetch") as fetchers:
                fetched = list(fetchers.map(fetch_and_submit, refs))
        else:
            fetched = [fetch_and_submit(ref) for ref in refs]
    jobs = [sent[0] for *_, sent in fetched if sent is not None]
    futures = [sent[1] for *_, sent in fetched if sent is not None]
    fetched = [(outcome, got, digest, t_fetch, sent is not None)
               for outcome, got, digest, t_fetch, sent in fetched]
    pages = iter(worker_pool.collect(pool, jobs, futures, template_name, opt, timeout_s=timeout_s))
    out = []
    for outcome, got, digest, t_fetch, was_sent in fetched:
        if was_sent:
            out.append(("read", next(pages), digest, t_fetch))
        else:
            out.append(("read" if outcome == "done" else outcome, got or [], digest, t_fetch))
    return out


@task(name="read-chunk", retries=2, retry_delay_seconds=[2, 8], cache_policy=COMPUTE["cache_policy"])
def read_chunk_task(refs: list[ObjectRef], settings: Settings, model_ref: tracking.ModelRef,
                    template_name: str, known_hashes: set[str], force: bool) -> ChunkResult:
    """Fetch, decode, register, crop, segment and reframe a chunk: fetched in `read.threads`
    threads, prepared in the `read.workers` worker processes (tasks.workers), or in those
    threads when workers is 0; then one batched inference with the reader model (ONNX or Keras).

    Storage errors propagate so the task retries (a flaky S3 must not turn into "unreadable"
    verdicts); a scan's own problems become its status and reason.
    """
    started = time.time()
    template = load_template(template_name)
    opt = read_options(settings)
    model = tracking.load_reader_model(model_ref, settings.read.inference)

    def fetch(ref: ObjectRef) -> tuple[str, bytes | list[PreparedScan] | None, str, float]:
        """What to do with one object: ("read", its bytes, hash, seconds); "done" with its
        record when it is refused; "vanished" or "duplicate" when there is nothing to read."""
        if ref.refused:  # recorded, never opened; keyed by its name, as it has no content
            return "done", [PreparedScan(ref.uri, content_hash(f"refused:{ref.uri}".encode()),
                                         "unreadable", f"refused: {ref.refused}")], "", 0.0
        t0 = time.perf_counter()
        fs, path = filesystem(ref.uri, settings)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return "vanished", None, "", 0.0  # deleted since listing: nothing to read, nothing lost
        t_fetch = time.perf_counter() - t0
        digest = content_hash(data)
        if not force and digest in known_hashes:
            return "duplicate", None, digest, t_fetch
        return "read", data, digest, t_fetch

    def fetch_and_prepare(ref: ObjectRef) -> Outcome:
        outcome, got, digest, t_fetch = fetch(ref)
        if outcome == "read":  # one per page
            return "read", list(prepare_pages(got, ref.uri, digest, template, opt)), digest, t_fetch
        return ("read" if outcome == "done" else outcome), got or [], digest, t_fetch

    t0 = time.perf_counter()
    threads = min(settings.read.threads, len(refs))
    workers = worker_processes(settings)
    if workers:
        outcomes = _prepare_in_workers(refs, fetch, workers, threads, template_name, opt,
                                       settings.read.scan_timeout_s)
    elif threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="prepare") as pool:
            outcomes = list(pool.map(fetch_and_prepare, refs))
    else:
        outcomes = [fetch_and_prepare(ref) for ref in refs]
    # stage times below are summed over threads; this is the wall time they overlapped in
    totals: dict[str, float] = {"wall_prepare": time.perf_counter() - t0, "fetch": 0.0}
    prepared, dup, vanished = [], [], []
    for ref, (outcome, pages, digest, t_fetch) in zip(refs, outcomes, strict=True):
        totals["fetch"] += t_fetch
        if outcome == "vanished":
            vanished.append(ref.uri)
        elif outcome == "duplicate":
            dup.append((ref.uri, digest))
        for p in pages:
            for k, v in p.timings.items():
                totals[k] = totals.get(k, 0.0) + v
            prepared.append(p)
    readings, t_model = infer_and_compose(prepared, template, model, opt)
    totals.update(t_model)
    return ChunkResult(readings, totals, dup, vanished, (started, time.time()))


@task(name="persist-chunk", **IO_RETRIES)
def persist_chunk_task(result: ChunkResult, refs: list[ObjectRef], settings: Settings, db_url: str,
                       run_id: str, model_version: str, template_name: str, chunk_no: int
                       ) -> tuple[list[Misread], dict[str, int], float, tuple[float, float]]:
    """Readings to the database (one transaction) and the chunk's dataset shards to storage.
    Returns the misread examples, counts, seconds spent and the epoch span of the work."""
    started = time.time()
    t0 = time.perf_counter()
    listing = {r.uri: {"size": r.size, "etag": r.etag, "modified": r.modified} for r in refs}
    labels, duplicates = persist_chunk(db_url, result.readings, run_id, model_version, template_name,
                                       listing, result.duplicates)
    shards = collect(result.readings, labels)
    for name, payload in shard_payloads(shards).items():
        write_bytes(join(settings.exports_uri, "datasets", run_id, name, f"chunk-{chunk_no:05d}.npz"),
                    payload, settings)
    counts = {"numbers": len(shards.numbers_y), "digits": len(shards.digits_y), "duplicates": duplicates}
    return shards.misread, counts, time.perf_counter() - t0, (started, time.time())


@task(name="load-model", **IO_RETRIES)
def resolve_model_task(settings: Settings, uri: str) -> tracking.ModelRef:
    client = tracking.configure_mlflow(settings)
    ref = tracking.resolve_model(client, uri)
    model = tracking.load_reader_model(ref, settings.read.inference)  # fail early, warm the cache
    run_logger().info("reading with %s (%s) on %s", ref.label, uri, BACKEND_NAMES[backend_of(model)])
    return ref
