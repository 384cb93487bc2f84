"""Read the next item in one background thread while the caller works on the current one: :func:`read_ahead`.

``predict`` on several scans reads and preprocesses scan ``k + 1`` while scan ``k`` is segmented and written
(:func:`~spinesegdiff.pipelines.predict.predict_scans`). At most one item is read ahead, so at most two
items' reads are held at a time, and the results come back in the items' order, each when its turn comes:
an exception raised by ``read`` is raised to the caller at that item's turn, as if it had been read then.

Signals (Ctrl-C, SIGTERM) reach the main thread only, so an interrupted caller stops as before; the reader
thread is told to take no further item, and a read already running finishes (Python waits for it at exit).
Warnings that the reader thread raises are shown while the previous item is being worked on (Python's
warning filters are shared by all threads).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Read = TypeVar("Read")

THREAD_NAME = "spinesegdiff-read-ahead"


def read_ahead(items: Sequence[Item], read: Callable[[Item], Read]) -> Generator[Read, None, None]:
    """``read(item)`` for each of ``items`` in order, the next one computed in one background thread while the
    caller handles the current one (one item ahead at most).

    The thread starts when the first result is asked for and ends when the iterator is exhausted or closed
    (a ``for`` loop left by ``break`` or an exception closes a generator when it is collected; call
    ``close()`` to end it at once).
    """
    if not items:
        return
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    try:
        pending: Future[Read] = executor.submit(read, items[0])
        for position in range(len(items)):
            value = pending.result()  # read's exception, if any, is raised here: at this item's turn
            if position + 1 < len(items):  # only now: never more than one item ahead of the caller
                pending = executor.submit(read, items[position + 1])
            yield value
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
