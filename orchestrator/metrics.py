"""Prometheus metrics of the orchestrator, in a registry owned by the app (no globals).

Jobs by state and the backlog are read from the store at scrape time, so they are right
after a restart too and the same on every replica of a fleet (`dh_running_jobs` alone is
this replica's); durations, frames and Triton latency are observed as they happen.
GPU gauges come from NVML when a GPU is present and are simply absent otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pynvml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Job durations from a second (a short clip on a GPU) to an hour (a long one on a CPU).
JOB_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1200)
# One Triton request: milliseconds on a GPU, up to seconds on the CPU test server.
TRITON_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# One live frame: a few ms on a GPU; its budget is DH_LIVE_LATENCY_S less 0.2 s.
LIVE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
CLEANUP_KINDS = (
    "job",
    "result",
    "partial_avatar",
    "orphan",
    "orphan_job",
    "orphan_avatar_source",
    "orphan_avatar",
    "result_copy",
)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(
            "dh_jobs", "Jobs in the store by state, every replica's", ["state"], registry=r
        )
        self.avatars = Gauge("dh_avatars", "Avatars in the store by state", ["state"], registry=r)
        self.backlog = Gauge(
            "dh_backlog_jobs", "Jobs queued and not yet running, every replica's", registry=r
        )
        self.running = Gauge("dh_running_jobs", "Jobs rendering now on this replica", registry=r)
        self.jobs_finished = Counter(
            "dh_jobs_finished", "Jobs that ended, by final state", ["state"], registry=r
        )
        self.job_seconds = Histogram(
            "dh_job_duration_seconds",
            "Wall time of a job from start to end, by final state",
            ["state"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "dh_stage_duration_seconds",
            "Busy time of each pipeline stage per job",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.frames = Counter("dh_frames_processed", "Output frames rendered", registry=r)
        self.cleaned = Counter(
            "dh_cleanup_removed",
            "What start-up cleanup and retention removed: job (expired rows), result (their "
            "result files), result_copy (HeyGem's copies of them), partial_avatar (interrupted "
            "preparations), orphan (folders with no row, at start-up), orphan_job, "
            "orphan_avatar_source and orphan_avatar (files and objects that no row owned for "
            "DH_ORPHAN_GRACE_S)",
            ["kind"],
            registry=r,
        )
        for kind in CLEANUP_KINDS:  # every series present from the start, at 0
            self.cleaned.labels(kind)
        self.triton_in_flight = Gauge(
            "dh_triton_requests_in_flight", "Triton requests outstanding", ["model"], registry=r
        )
        self.triton_seconds = Histogram(
            "dh_triton_request_duration_seconds",
            "Latency of one Triton inference request, by model and outcome",
            ["model", "outcome"],
            buckets=TRITON_BUCKETS,
            registry=r,
        )
        # Live sessions (orchestrator/live): this replica's, as they happen.
        self.sessions = Gauge("dh_live_sessions", "Live sessions open on this replica", registry=r)
        self.live_frames_sent = Counter(
            "dh_live_frames_sent", "Live video frames handed to WebRTC peers", registry=r
        )
        self.live_late_frames = Counter(
            "dh_live_late_frames",
            "Live frames whose lip-synced picture was not ready at its time (an idle frame "
            "was shown instead)",
            registry=r,
        )
        self.live_latency = Histogram(
            "dh_live_frame_latency_seconds",
            "From a live frame's audio being final to its lip-synced picture being ready",
            buckets=LIVE_BUCKETS,
            registry=r,
        )
        self.live_frame_cache = Gauge(
            "dh_live_frame_cache_bytes",
            "Decoded avatar pictures the live sessions of this replica share "
            "(DH_LIVE_FRAME_CACHE_MB; freed with an avatar's last session)",
            registry=r,
        )
        # Set by /metrics at scrape time (asyncio.all_tasks() needs the running loop): a
        # count that grows with sessions opened and closed is a leak (tests/live).
        self.asyncio_tasks = Gauge(
            "dh_asyncio_tasks", "asyncio tasks alive in this process", registry=r
        )
        self.gpu = NvmlCollector.create()
        if self.gpu is not None:
            r.register(self.gpu)

    # The hook TritonClient calls around every inference (orchestrator.triton.InferObserver).
    def infer_started(self, model: str) -> None:
        self.triton_in_flight.labels(model).inc()

    def infer_finished(self, model: str, seconds: float, ok: bool) -> None:
        self.triton_in_flight.labels(model).dec()
        self.triton_seconds.labels(model, "ok" if ok else "error").observe(seconds)

    def job_finished(self, state: str, seconds: float, stage_seconds: dict[str, float]) -> None:
        self.jobs_finished.labels(state).inc()
        self.job_seconds.labels(state).observe(seconds)
        for stage, busy in stage_seconds.items():
            self.stage_seconds.labels(stage).observe(busy)

    def live_frame(self, late: bool, latency_s: float | None) -> None:
        if late:
            self.live_late_frames.inc()
        if latency_s is not None:
            self.live_latency.observe(latency_s)

    def frames_rendered(self, count: int) -> None:
        """Counted as frames are encoded, so a frames-per-second graph is live, not lumpy."""
        self.frames.inc(count)

    def removed(self, kind: str, count: int = 1) -> None:
        """Counts what cleanup removed; `kind` is one of the label values above."""
        self.cleaned.labels(kind).inc(count)

    def set_counts(self, jobs: dict[str, int], avatars: dict[str, int], running: int) -> None:
        for state, count in jobs.items():
            self.jobs.labels(state).set(count)
        for state, count in avatars.items():
            self.avatars.labels(state).set(count)
        self.backlog.set(jobs.get("queued", 0))
        self.running.set(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()


class NvmlCollector(Collector):
    """GPU utilisation and memory per device, read from NVML at scrape time."""

    def __init__(self, count: int) -> None:
        self._count = count

    @classmethod
    def create(cls) -> NvmlCollector | None:
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:  # no driver or no library: no GPU gauges, by design
            log.info("NVML unavailable, no GPU metrics: %s", exc)
            return None
        if count == 0:
            pynvml.nvmlShutdown()
            return None
        return cls(count)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        utilisation = GaugeMetricFamily(
            "dh_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"]
        )
        used = GaugeMetricFamily("dh_gpu_memory_used_bytes", "GPU memory used", labels=["gpu"])
        total = GaugeMetricFamily("dh_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        started = time.monotonic()
        for index in range(self._count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as exc:  # a GPU off the bus must not break /metrics
                log.warning("NVML read of GPU %d failed: %s", index, exc)
                continue
            utilisation.add_metric([str(index)], rates.gpu / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        log.debug("NVML scrape took %.3f s", time.monotonic() - started)
        yield from (utilisation, used, total)

    def gpu_count(self) -> int:
        return self._count

    def close(self) -> None:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.debug("NVML shutdown: %s", exc)
