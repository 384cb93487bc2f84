"""``predict --engine ray``: a cohort's scans spread over Ray workers, each loading the model once.

The driver (the ``spinesegdiff predict`` process) reads and checks the inputs, names every output and decides
which scans are complete already, exactly as a plain run does; it then hands the remaining scans to ``workers``
Ray actors. Each actor loads its own :class:`~spinesegdiff.pipelines.segmenter.Segmenter` on its first readable
scan and segments and writes scans one at a time with the same code as a plain run
(:func:`~spinesegdiff.pipelines.predict.segment_planned`). The sampler is seeded per scan, so the outputs equal a
plain run's for the same seed, whichever worker segments a scan. The outcomes come back in plan order, and the
driver alone writes the summary.

Without ``address`` a local Ray instance is started on 127.0.0.1 with ``workers x threads`` CPUs and stopped at
the end; with ``address`` (``ray://HOST:10001`` or ``HOST:6379``, or ``auto`` on a cluster node) the job joins a
running cluster, whose nodes must have spinesegdiff installed and see the input and output folders at the same
paths (a shared file system). Ray's usage statistics are switched off (``RAY_USAGE_STATS_ENABLED=0``) for the
driver and the workers.

Ray is an optional extra (``pip install 'spinesegdiff[ray]'``); it is imported only when this engine runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spinesegdiff.errors import SpineSegDiffError

if TYPE_CHECKING:
    from spinesegdiff.pipelines.inputs import PlannedScan
    from spinesegdiff.pipelines.predict import ScanOutcome, ScanRunner, ScanWork, SegmenterSpec

MAX_WORKERS = 1024
"""More actors than this is a typo, not a cluster."""
_QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide a Ray run is.

    Attributes:
        address: a running cluster (``ray://HOST:10001``, ``HOST:6379`` or ``auto``); ``None`` starts a local one
            on 127.0.0.1 for this run.
        workers: Ray actors, each with its own model; ``None``: the CPUs of the cluster over ``threads`` (at
            least 1).
        threads: CPU threads of each actor (its PyTorch and OpenVINO threads; the CPUs it asks Ray for);
            ``None``: this machine's cores over ``workers`` for a local instance, 1 on a cluster.
    """

    address: str | None = None
    workers: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_WORKERS):
                raise SpineSegDiffError(f"--{name}: must be a whole number in 1..{MAX_WORKERS}, got {value!r}")

    def local_threads(self) -> int:
        """Threads per actor: as asked, else this machine's cores shared evenly by the workers."""
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // (self.workers or 1))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SpineSegDiffError("--engine ray needs Ray: pip install 'spinesegdiff[ray]' (or pip install ray)") \
            from None
    return ray


def _start(ray, engine: RayEngine) -> tuple[bool, int, int]:
    """Connect to (or start) Ray; whether this run started it, the threads per actor and the actor count."""
    import logging

    os.environ.update(_QUIET_RAY)  # the driver's own reporting; workers get it through the runtime env
    runtime_env = {"env_vars": dict(_QUIET_RAY)}
    started = False
    if ray.is_initialized():
        threads = engine.threads or 1
    elif engine.address is None:
        threads = engine.local_threads()
        ray.init(num_cpus=(engine.workers or 1) * threads, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False)
        started = True
    else:
        threads = engine.threads or 1
        try:
            ray.init(address=engine.address, runtime_env=runtime_env, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpineSegDiffError(f"--address {engine.address}: cannot join the Ray cluster ({err})") from err
        started = True
    workers = engine.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    return started, threads, workers


class _ScanWorker:
    """A Ray actor: one segmenter, loaded on its first readable scan, for all the scans it is handed."""

    def __init__(self, spec: SegmenterSpec, work: ScanWork, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # OpenVINO takes PyTorch's thread count when the segmenter is built
        self.spec, self.work = spec, work
        self.segmenter = None

    def _get_segmenter(self):
        if self.segmenter is None:
            self.segmenter = self.spec.load()
        return self.segmenter

    def run(self, planned: PlannedScan, index: int) -> ScanOutcome:
        from spinesegdiff.pipelines.predict import segment_planned

        return segment_planned(planned, index, self.work, self._get_segmenter)


def _user_error(ray, err: Exception) -> Exception:
    """The spinesegdiff error inside a Ray task error (a model that cannot be loaded), else ``err`` itself."""
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, SpineSegDiffError):
        return cause
    return err


def ray_scan_runner(engine: RayEngine, spec: SegmenterSpec, work: ScanWork) -> ScanRunner:
    """A scan runner (see :data:`~spinesegdiff.pipelines.predict.ScanRunner`) on Ray actors.

    Ray is imported here, so a missing installation is reported before any scan; the cluster is joined (or a local
    one started) when the first scan is handed out, and left when the last outcome is back or the run stops.

    Raises:
        SpineSegDiffError: Ray is not installed.
    """
    ray = _import_ray()

    def run(todo: list[tuple[int, PlannedScan]]) -> Iterator[ScanOutcome]:
        if not todo:
            return
        from ray.util import ActorPool

        started, threads, workers = _start(ray, engine)
        actor = ray.remote(num_cpus=threads)(_ScanWorker)
        actors = [actor.remote(spec, work, threads) for _ in range(min(workers, len(todo)))]
        try:
            pool = ActorPool(actors)
            outcomes = pool.map(lambda worker, item: worker.run.remote(item[1], item[0]), todo)
            while True:
                try:
                    yield next(outcomes)
                except StopIteration:
                    return
                except ray.exceptions.RayError as err:
                    raise _user_error(ray, err) from None
        finally:
            for handle in actors:
                ray.kill(handle)
            if started:
                ray.shutdown()

    return run
