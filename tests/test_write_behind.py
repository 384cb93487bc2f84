"""Writing one scan's outputs while the next scan is segmented (issue 17): outcomes in order, one write under
way at most, a write's error in its scan's place, and an interruption that finishes the write under way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from predict_helpers import write_scan
from spinesegdiff.errors import InputError
from spinesegdiff.pipelines import predict as predict_module
from spinesegdiff.pipelines.write_behind import THREAD_NAME, WriteBehind

WAIT_S = 30.0
"""Longest wait for the writer thread (only a loaded machine comes near this)."""


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_outcomes_come_in_order_from_one_background_thread() -> None:
    threads: set[str] = set()

    def write(job: int) -> str:
        threads.add(threading.current_thread().name)
        time.sleep(0.01)
        return f"wrote {job}"

    writes = WriteBehind(write)
    got: list[str] = []
    for job in range(4):
        got.extend(writes.done())
        writes.submit(job)
    got.extend(writes.done())
    writes.close()
    assert got == ["wrote 0", "wrote 1", "wrote 2", "wrote 3"]
    assert len(threads) == 1 and next(iter(threads)).startswith(THREAD_NAME)
    assert list(writes.done()) == [] and not _writer_threads()


def test_a_second_write_waits_for_the_first_outcome_and_errors_come_at_their_turn() -> None:
    def write(job: int) -> int:
        if job == 1:
            raise ZeroDivisionError("job 1")
        return job

    writes = WriteBehind(write)
    writes.submit(0)
    with pytest.raises(RuntimeError, match="take the previous write's outcome"):
        writes.submit(1)
    assert list(writes.done()) == [0]
    writes.submit(1)
    with pytest.raises(ZeroDivisionError, match="job 1"):
        list(writes.done())
    writes.close()


def test_close_waits_for_the_write_under_way() -> None:
    finished = threading.Event()

    def write(job: int) -> int:
        time.sleep(0.2)
        finished.set()
        return job

    writes = WriteBehind(write)
    writes.submit(7)
    writes.close()  # an interrupted run: the outcome is dropped, the write is not cut short
    assert finished.is_set() and not _writer_threads()


# --- predict: three good scans --------------------------------------------------------------------------------


def _folder(tmp_path: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed, name in enumerate(names, start=1):
        write_scan(folder / f"{name}.mha", seed=seed)
    return folder


def _settings():
    from spinesegdiff.pipelines.segmenter import SamplerSettings

    return SamplerSettings(num_samples=1, num_steps=1, backend="torch")


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_writes_a_scan_while_the_next_is_segmented(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    folder = _folder(tmp_path)
    segmenting = {name: threading.Event() for name in ("a", "b", "c")}
    overlapped: dict[str, bool] = {}
    threads: dict[str, str] = {}
    real_segment, real_write = predict_module.segment_loaded, predict_module.write_outputs

    def segment_loaded(scan, segmenter, **kwargs):
        segmenting[scan.stem].set()
        return real_segment(scan, segmenter, **kwargs)

    def write_outputs(result, output, **kwargs):
        threads[result.stem] = threading.current_thread().name
        if result.stem == "a":  # b's segmentation starts while a is being written (a synchronous write waits)
            overlapped["a"] = segmenting["b"].wait(5.0)
        if result.stem == "b":
            raise InputError(Path(output) / "b_seg.mha", "cannot write output (No space left on device)")
        return real_write(result, output, **kwargs)

    monkeypatch.setattr(predict_module, "segment_loaded", segment_loaded)
    monkeypatch.setattr(predict_module, "write_outputs", write_outputs)
    outcomes = list(predict_module.predict_scans(folder, tmp_path / "out", model=tiny_model, device="cpu",
                                                 quiet=True, keep_all_parts=True, settings=_settings()))
    assert [(o.scan.name, o.index, o.ok) for o in outcomes] == [("a.mha", 0, True), ("b.mha", 1, False),
                                                                ("c.mha", 2, True)]
    assert "b_seg.mha: cannot write output (No space left on device)" in outcomes[1].error
    assert overlapped == {"a": True}, "the next scan was not segmented while this one was written"
    assert all(name.startswith(THREAD_NAME) for name in threads.values()) and set(threads) == {"a", "b", "c"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.json", "a_overlay.png", "a_seg.mha", "a_uncertainty.mha",
        "c.json", "c_overlay.png", "c_seg.mha", "c_uncertainty.mha"]
    deadline = time.monotonic() + WAIT_S
    while _writer_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _writer_threads(), "the writer thread outlived the run"


@pytest.mark.usefixtures("spine_judgement_off")
def test_an_interruption_finishes_the_write_under_way(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    folder = _folder(tmp_path)
    real_segment, real_write = predict_module.segment_loaded, predict_module.write_outputs
    release = threading.Event()

    def segment_loaded(scan, segmenter, **kwargs):
        if scan.stem == "b":
            raise KeyboardInterrupt  # Ctrl-C while b is segmented and a is being written
        return real_segment(scan, segmenter, **kwargs)

    def write_outputs(result, output, **kwargs):
        release.wait(1.0)  # still writing when the interruption comes
        return real_write(result, output, **kwargs)

    monkeypatch.setattr(predict_module, "segment_loaded", segment_loaded)
    monkeypatch.setattr(predict_module, "write_outputs", write_outputs)
    outcomes = predict_module.predict_scans(folder, tmp_path / "out", model=tiny_model, device="cpu", quiet=True,
                                            keep_all_parts=True, settings=_settings())
    with pytest.raises(KeyboardInterrupt):
        list(outcomes)
    assert not _writer_threads()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.json", "a_overlay.png", "a_seg.mha", "a_uncertainty.mha"]  # a whole, nothing of b or c
