"""Write a scan's outputs in one background thread while the next scan is segmented: :class:`WriteBehind`.

``predict`` on several scans hands scan ``k``'s level report, overlay and files (:func:`~spinesegdiff.pipelines.
predict.write_phase`, about a third of a scan's time, all on one core) to a writer thread, and segments scan
``k + 1`` meanwhile (the networks keep both cores busy only part of the time). At most one write is under way;
the outcomes keep the scans' order, because the caller takes a write's outcome (:meth:`WriteBehind.done`) before
it hands on anything of a later scan.

Signals (Ctrl-C, SIGTERM) reach the main thread only: an interrupted run rolls back the scan being segmented
(nothing of it is written yet) and :meth:`WriteBehind.close` waits for the write under way, which publishes its
scan's set whole (the set is staged and renamed by the writer; :mod:`~spinesegdiff.pipelines.publish`). That
scan's outcome is then not reported, but its outputs are complete: ``--skip-existing`` recognises them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")

THREAD_NAME = "spinesegdiff-writer"


class WriteBehind(Generic[Job, Outcome]):
    """``write(job)`` in one background thread, one job at a time, outcomes in submission order.

    Args:
        write: the work of one job; its exception is raised by :meth:`done` (at that job's turn).
    """

    def __init__(self, write: Callable[[Job], Outcome]) -> None:
        self._write = write
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Outcome] | None = None

    def submit(self, job: Job) -> None:
        """Start writing ``job`` (the previous job's outcome must have been taken with :meth:`done`)."""
        if self._pending is not None:
            raise RuntimeError("take the previous write's outcome (done()) before submitting another")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._pending = self._executor.submit(self._write, job)

    def done(self) -> Iterator[Outcome]:
        """The outcome of the write under way, once it has finished (nothing when there is none)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            yield pending.result()

    def close(self) -> None:
        """Wait for the write under way (its outcome is dropped) and end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending = None
