"""Reading the next scan while this one is segmented (issue 17): order, one scan ahead at most, each scan's
error in its place, and an interruption that leaves no reader behind."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from predict_helpers import write_scan
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.pipelines import predict as predict_module
from spinesegdiff.pipelines.read_ahead import THREAD_NAME, read_ahead

WAIT_S = 30.0
"""Longest wait for the reader thread: it is asked for at once, so only a loaded machine comes near this."""


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def _wait_until_no_reader() -> None:
    for thread in _reader_threads():
        thread.join(timeout=WAIT_S)
    assert not _reader_threads(), "the reader thread outlived its iterator"


class Recorder:
    """A ``read`` that records which items it started, in which thread, and signals each start."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started: list[int] = []
        self.threads: set[str] = set()
        self.events = {k: threading.Event() for k in range(10)}
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, item: int) -> str:
        with self.lock:
            self.started.append(item)
            self.threads.add(threading.current_thread().name)
        self.events[item].set()
        if item == self.fail_on:
            raise ZeroDivisionError(f"item {item}")
        return f"read {item}"


def test_results_come_in_order_while_the_next_item_is_read() -> None:
    read = Recorder()
    for position, value in enumerate(read_ahead(list(range(5)), read)):
        assert value == f"read {position}"
        if position + 1 < 5:  # the next item is read while this one is worked on
            assert read.events[position + 1].wait(WAIT_S), f"item {position + 1} was not read ahead"
        time.sleep(0.05)  # work on the item: a reader that ran further ahead would start the next one now
        assert max(read.started) <= position + 1, f"read {read.started} while working on item {position}"
    assert read.started == [0, 1, 2, 3, 4]
    assert all(name.startswith(THREAD_NAME) for name in read.threads)
    _wait_until_no_reader()


def test_an_error_of_a_read_is_raised_at_its_turn() -> None:
    read = Recorder(fail_on=2)
    results = read_ahead(list(range(4)), read)
    assert next(results) == "read 0"
    assert read.events[1].wait(WAIT_S)
    assert read.events[2].wait(0.0) is False  # item 1 is still to be handed over: item 2 is not read yet
    assert next(results) == "read 1"
    with pytest.raises(ZeroDivisionError, match="item 2"):
        next(results)
    assert 3 not in read.started
    _wait_until_no_reader()


def test_closing_the_iterator_stops_the_reader() -> None:
    read = Recorder()
    results = read_ahead(list(range(6)), read)
    assert next(results) == "read 0"
    results.close()
    _wait_until_no_reader()
    assert read.started in ([0], [0, 1])


def test_nothing_to_read() -> None:
    read = Recorder()
    assert list(read_ahead([], read)) == [] and read.started == []


# --- predict: a good scan, a broken file, a good scan ---------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "a.mha", seed=1)
    (folder / "b.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nthis is not an image\n")
    write_scan(folder / "c.mha", seed=2)
    return folder


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_reads_ahead_and_keeps_each_scans_outcome_in_its_place(tiny_model: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(SpineSegDiffError) as refused:  # b's one-line error, as a read on its own gives it
        predict_module.load_scan(folder / "b.mha")
    reads: dict[str, threading.Event] = {name: threading.Event() for name in ("a", "b", "c")}
    threads: dict[str, str] = {}
    real_load, real_segment = predict_module.load_scan, predict_module.segment_loaded

    def load_scan(path, **kwargs):
        threads[Path(path).stem] = threading.current_thread().name
        reads[Path(path).stem].set()
        return real_load(path, **kwargs)

    def segment_loaded(scan, segmenter, **kwargs):
        if scan.stem == "a":  # b is read while a is segmented
            assert reads["b"].wait(WAIT_S), "the next scan was not read while this one was segmented"
        return real_segment(scan, segmenter, **kwargs)

    monkeypatch.setattr(predict_module, "load_scan", load_scan)
    monkeypatch.setattr(predict_module, "segment_loaded", segment_loaded)
    from spinesegdiff.pipelines.segmenter import SamplerSettings

    outcomes = list(predict_module.predict_scans(
        folder, tmp_path / "out", model=tiny_model, device="cpu", quiet=True, summary=True, keep_all_parts=True,
        settings=SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1, backend="torch")))
    assert [(o.scan.name, o.index, o.ok) for o in outcomes] == [("a.mha", 0, True), ("b.mha", 1, False),
                                                                ("c.mha", 2, True)]
    assert outcomes[1].error == str(refused.value) and "b.mha: " in outcomes[1].error
    assert outcomes[1].paths is None and outcomes[0].paths["report"].name == "a.json"
    assert set(threads) == {"a", "b", "c"} and all(name.startswith(THREAD_NAME) for name in threads.values())
    with (tmp_path / "out" / "summary.csv").open(encoding="utf-8", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("a.mha", "written"), ("b.mha", "failed"),
                                                                    ("c.mha", "written")]
    assert rows[1]["problem"] == outcomes[1].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.json", "a_overlay.png", "a_seg.mha", "a_uncertainty.mha",
        "c.json", "c_overlay.png", "c_seg.mha", "c_uncertainty.mha", "summary.csv"]
    _wait_until_no_reader()


def test_an_interruption_stops_the_reader_with_the_run(tmp_path: Path, monkeypatch) -> None:
    folder = _folder(tmp_path)
    read: list[str] = []
    real_load = predict_module.load_scan

    def load_scan(path, **kwargs):
        read.append(Path(path).stem)
        return real_load(path, **kwargs)

    def segment_loaded(scan, segmenter, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the first scan is segmented

    monkeypatch.setattr(predict_module, "load_scan", load_scan)
    monkeypatch.setattr(predict_module, "segment_loaded", segment_loaded)
    planned = [predict_module.PlannedScan(folder / f"{n}.mha", n, {}) for n in ("a", "b", "c")]
    work = predict_module.ScanWork(output=tmp_path / "out", volume=False, output_format=None, total=3)
    outcomes = predict_module._segment_in_process(lambda: object(), work, list(enumerate(planned)))
    with pytest.raises(KeyboardInterrupt):
        next(outcomes)
    _wait_until_no_reader()
    assert read in (["a"], ["a", "b"])  # never further than one scan ahead
    assert not (tmp_path / "out").exists()
