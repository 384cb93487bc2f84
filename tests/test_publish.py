"""A scan's outputs appear all together or not at all: staging, signals, kill -9, full disks, strict JSON, modes."""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError
from spinesegdiff.files import STAGING_NAME, StagedFiles, recover_staging
from spinesegdiff.pipelines import predict as predict_module
from spinesegdiff.pipelines.publish import Interrupted, held_signals, interruptible, strict_json

# The shipped models (fast on these small phantoms, and their results pass the plausibility checks)
FAST = ["--samples", "2", "--steps", "2", "--fuse-steps", "2", "--backend", "torch", "--device", "cpu"]
KINDS = ("_seg", "_uncertainty", "_overlay.png", ".json")


def _write_scan(path: Path, seed: int = 0) -> Path:
    phantom = make_phantom(shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0), seed=seed)
    write_image(path, (phantom.image * 800).astype(np.int16), phantom.geometry)
    return path


def _scan_folder(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for k in range(count):
        _write_scan(root / f"s{k:02d}.mha", seed=k)
    return root


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from spinesegdiff.pipelines.predict import segment
    from spinesegdiff.pipelines.settings import SamplerSettings

    scan = _write_scan(tmp_path_factory.mktemp("scan") / "x.mha")
    settings = SamplerSettings(num_samples=2, num_steps=2, fuse_steps=2, backend="torch")
    return segment(scan, device="cpu", settings=settings, quiet=True)  # the shipped models


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_only_complete_sets(folder: Path) -> set[str]:
    """Every file in ``folder`` belongs to a set of four with its JSON; no staging or temporary leftovers."""
    names = _entries(folder)
    assert not [n for n in names if n.startswith(".")], names
    stems = {n[:-5] for n in names if n.endswith(".json")}
    for stem in stems:
        report = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
        assert sorted(report["outputs"].values()) == sorted(n for n in names if n.startswith(f"{stem}_")
                                                             or n == f"{stem}.json")
    expected = sorted(json.loads((folder / f"{s}.json").read_text(encoding="utf-8"))["outputs"][k]
                      for s in stems for k in ("segmentation", "uncertainty", "overlay", "report"))
    assert names == expected, names
    return stems


def _strict_loads(text: str):
    def refuse(constant: str):
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


# --- strict JSON and modes ----------------------------------------------------------------------------------


def test_json_is_strict_when_the_uncertainty_holds_nan(result, tmp_path: Path) -> None:
    broken = copy.deepcopy(result)
    broken.uncertainty[:] = np.nan
    broken.timings["sample_s"] = float("inf")
    paths = predict_module.write_outputs(broken, tmp_path)
    text = paths["report"].read_text(encoding="utf-8")
    report = _strict_loads(text)
    assert "NaN" not in text and "Infinity" not in text
    assert report["structures"]["overall_uncertainty_mean"] is None
    with_pixels = [k for k in ("SC", "VB", "IVD") if report["structures"][k]["pixels"]]
    assert with_pixels and all(report["structures"][k]["uncertainty_mean"] is None for k in with_pixels)
    assert report["timings_s"]["sample_s"] is None


def test_strict_json_keeps_finite_values_and_matches_plain_json() -> None:
    value = {"a": [1, 2.5, None, "x"], "b": {"c": np.float32(0.5), "d": float("-inf")}, "e": (1, float("nan"))}
    assert json.loads(strict_json(value)) == {"a": [1, 2.5, None, "x"], "b": {"c": 0.5, "d": None}, "e": [1, None]}
    plain = {"a": [1, 2.5, None], "b": {"c": 0.1234}}
    assert strict_json(plain) == json.dumps(plain, indent=2)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_the_umask_gives(result, tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        paths = predict_module.write_outputs(result, tmp_path / "out")
    finally:
        os.umask(previous)
    assert len(paths) == 4
    for path in paths.values():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_outputs_are_the_same_files_as_unstaged_writes(result, tmp_path: Path) -> None:
    from spinesegdiff.data.io import read_image

    paths = predict_module.write_outputs(result, tmp_path / "out", output_format="mha")
    assert _entries(tmp_path / "out") == ["x.json", "x_overlay.png", "x_seg.mha", "x_uncertainty.mha"]
    np.testing.assert_array_equal(read_image(paths["segmentation"])[0], result.labels)
    np.testing.assert_array_equal(read_image(paths["uncertainty"])[0], result.uncertainty)
    assert paths["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["report"].read_text(encoding="utf-8"))
    assert report["outputs"]["segmentation"] == "x_seg.mha" and report["structures"] == json.loads(
        json.dumps(result.statistics()))


@pytest.mark.parametrize("stem", ["owner", "publish", "files"])
def test_scans_named_like_the_staging_internals(result, tmp_path: Path, stem: str) -> None:
    named = copy.copy(result)
    named.stem = stem
    predict_module.write_outputs(named, tmp_path)
    assert _assert_only_complete_sets(tmp_path) == {stem}


# --- write failures: one line naming the file, nothing partial -----------------------------------------------


def _failing_on(kind: str, error: BaseException):
    real = predict_module.write_image

    def writer(path, array, geometry):
        if kind in Path(path).name:
            real(path, array, geometry)  # a half-written file is left in staging, as a full disk would
            raise error
        return real(path, array, geometry)
    return writer


@pytest.mark.parametrize("error, problem", [
    (RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: itk::ERROR: could not write"),
     "cannot write output (the image writer failed"),
    (OSError(errno.ENOSPC, "No space left on device"), "cannot write output (No space left on device)"),
])
def test_full_disk_leaves_nothing_and_names_the_file(result, tmp_path: Path, monkeypatch, error, problem) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    monkeypatch.setattr(predict_module, "write_image", _failing_on("_uncertainty", error))
    with pytest.raises(InputError, match=r"x_uncertainty\.nii\.gz: " + re.escape(problem)):
        predict_module.write_outputs(result, out, output_format="nii.gz")
    assert _entries(out) == ["keep.txt"]


def test_full_disk_in_the_command_is_one_line_exit_2(tmp_path: Path, monkeypatch) -> None:
    from spinesegdiff.cli import main

    scans = _scan_folder(tmp_path / "scans", 2)
    monkeypatch.setattr(predict_module, "write_image",
                        _failing_on("s01_seg", OSError(errno.ENOSPC, "No space left on device")))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", "-i", str(scans), "-o", str(tmp_path / "out"), *FAST, "--quiet"])
    lines = stderr.getvalue().strip().splitlines()
    assert code == 2
    assert lines[0] == f"spinesegdiff: error: {tmp_path / 'out' / 's01_seg.mha'}: cannot write output " \
                       "(No space left on device)", lines
    assert "Traceback" not in stderr.getvalue()
    assert _assert_only_complete_sets(tmp_path / "out") == {"s00"}


def test_a_failed_rename_rolls_back_the_renamed_files(result, tmp_path: Path, monkeypatch) -> None:
    real, calls = os.replace, []

    def replace(source, target):
        if STAGING_NAME.fullmatch(Path(source).parent.parent.name) and Path(target).parent == tmp_path:
            calls.append(target)
            if len(calls) == 3:
                raise OSError(errno.EIO, "Input/output error", str(source), None, str(target))
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match=r"x_overlay\.png: cannot write output \(Input/output error\)"):
        predict_module.write_outputs(result, tmp_path)
    assert len(calls) == 3 and _entries(tmp_path) == []


def test_a_failed_replacement_never_leaves_a_mixed_set_that_looks_whole(result, tmp_path: Path,
                                                                       monkeypatch) -> None:
    predict_module.write_outputs(result, tmp_path)
    real = os.replace

    def replace(source, target):
        if Path(target).name == "x_overlay.png" and Path(target).parent == tmp_path:
            raise OSError(errno.EIO, "Input/output error", str(source), None, str(target))
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match=r"x_overlay\.png: cannot write output"):
        predict_module.write_outputs(result, tmp_path)
    assert _entries(tmp_path) == ["x_overlay.png"]  # the old overlay, without a report: not a set


def test_unwritable_output_folder_is_one_line(result, tmp_path: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(InputError, match=r"cannot write into the output folder \(Permission denied\)"):
        predict_module.write_outputs(result, tmp_path)
    assert _entries(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path: Path) -> None:
    scan = _write_scan(tmp_path / "x.mha")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        done = subprocess.run([sys.executable, "-m", "spinesegdiff", "predict", "-i", str(scan), "-o", str(out),
                               *FAST, "--quiet"], capture_output=True, text=True,
                              timeout=300)
    finally:
        out.chmod(0o755)
    assert done.returncode == 2
    assert re.fullmatch(rf"spinesegdiff: error: {re.escape(str(out))}: [^\n]*writ[^\n]*", done.stderr.strip())
    assert _entries(out) == []


# --- signals in this process -----------------------------------------------------------------------------------


def _in_a_fresh_process(test):
    """Run a test that signals this very process in a fresh pytest process of its own.

    In a pytest process where an earlier test has run OpenVINO (tests/test_inference.py), a SIGTERM or SIGINT
    raised in-process ends in a segmentation fault (seen here, also in a forked child; a plain script that runs
    OpenVINO and then raises the same signals does not crash). The CLI's own signal handling with OpenVINO is
    covered by the batch tests below, which signal a real ``spinesegdiff predict`` process.
    """

    @functools.wraps(test)
    def run(*args, **kwargs) -> None:
        if os.environ.get("SPINESEGDIFF_INNER_TEST") == test.__name__:
            test(*args, **kwargs)
            return
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test.__name__}"],
            env={**os.environ, "SPINESEGDIFF_INNER_TEST": test.__name__}, capture_output=True, text=True,
            timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    return run



def test_handlers_are_installed_only_while_a_command_runs(tmp_path: Path) -> None:
    from spinesegdiff.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen = {}
    with interruptible():
        seen = {s: signal.getsignal(s) for s in before}
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", "-i", str(_write_scan(tmp_path / "x.mha")), "-o", str(tmp_path / "out"),
                     *FAST, "--quiet"])
    assert code == 0
    assert all(seen[s] is not before[s] for s in before)
    assert {s: signal.getsignal(s) for s in before} == before


def _signal_on_rename(monkeypatch, folder: Path, signum: int) -> None:
    real = os.replace

    def replace(source, target):
        if Path(target).parent == folder and STAGING_NAME.fullmatch(Path(source).parent.parent.name):
            signal.raise_signal(signum)  # to this thread, not to a native library's
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)


@_in_a_fresh_process
def test_sigterm_during_the_renames_waits_for_the_whole_set(result, tmp_path: Path, monkeypatch) -> None:
    _signal_on_rename(monkeypatch, tmp_path, signal.SIGTERM)
    with interruptible(), pytest.raises(Interrupted, match="interrupted by SIGTERM") as caught:
        predict_module.write_outputs(result, tmp_path)
    assert caught.value.exit_code == 143
    assert _assert_only_complete_sets(tmp_path) == {"x"}


@_in_a_fresh_process
def test_sigint_during_the_renames_outside_a_command(result, tmp_path: Path, monkeypatch) -> None:
    # Python's own SIGINT handler, as a user's script has it (a library loaded by the fixture may have installed
    # another in this process: seen once in a clean CI run). This test runs in a process of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)
    _signal_on_rename(monkeypatch, tmp_path, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="^$") as caught:  # the default handler's, after the renames
        predict_module.write_outputs(result, tmp_path)
    assert caught.type is KeyboardInterrupt
    assert _assert_only_complete_sets(tmp_path) == {"x"}
    assert signal.getsignal(signal.SIGINT) is before


@_in_a_fresh_process
def test_sigterm_while_writing_rolls_the_scan_back(result, tmp_path: Path, monkeypatch) -> None:
    real = predict_module.render_overlay

    def render(scan, path):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.01)  # the handler runs here
        real(scan, path)

    monkeypatch.setattr(predict_module, "render_overlay", render)
    with interruptible(), pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        predict_module.write_outputs(result, tmp_path)
    assert _entries(tmp_path) == []


def test_outputs_can_be_written_from_another_thread(result, tmp_path: Path) -> None:
    import threading  # Python sets signal handlers only in the main thread: there is nothing to hold

    errors: list[BaseException] = []

    def work() -> None:
        try:
            predict_module.write_outputs(result, tmp_path)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and _assert_only_complete_sets(tmp_path) == {"x"}


@_in_a_fresh_process
def test_a_held_signal_is_raised_when_the_block_ends() -> None:
    order = []
    with interruptible(), pytest.raises(Interrupted, match="SIGINT") as caught, held_signals():
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.01)
        order.append("finished")
    assert order == ["finished"] and caught.value.exit_code == 130


# --- staging folders of killed runs ----------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_recovery_touches_only_dead_staging_folders_of_this_host(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = tmp_path / f".spinesegdiff-staging-{dead}-abcd1234"
    stale.mkdir()
    (stale / "files").mkdir()
    (stale / "files" / ".x_seg.mha.tmp123.mha").write_text("half")
    (stale / "owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": dead}))
    keep = [
        tmp_path / f".spinesegdiff-staging-{os.getppid()}-abcd1234",  # a live process
        tmp_path / f".spinesegdiff-staging-{dead}-notours!",  # not our pattern
        tmp_path / f".spinesegdiff-staging-{dead}-efgh5678",  # another machine's
        tmp_path / f"spinesegdiff-staging-{dead}-abcd1234",  # not hidden: not ours
    ]
    for folder in keep:
        folder.mkdir()
        (folder / "data").write_text("keep")
    (keep[2] / "owner.json").write_text(json.dumps({"host": "elsewhere", "pid": dead}))
    link = tmp_path / f".spinesegdiff-staging-{dead}-link1234"
    link.symlink_to(keep[1])
    plain = tmp_path / f".spinesegdiff-staging-{dead}-file1234"
    plain.write_text("a file")
    orphan = tmp_path / "old_seg.mha"  # an older kill -9's set without JSON: reported, never removed
    orphan.write_text("old")
    recovery = recover_staging(tmp_path)
    assert recovery.removed == [stale] and recovery.completed == []
    assert not stale.exists() and link.is_symlink() and plain.read_text("utf-8") == "a file" and orphan.exists()
    assert all((folder / "data").read_text(encoding="utf-8") == "keep" for folder in keep)


def test_a_journal_left_by_a_kill_is_completed(tmp_path: Path) -> None:
    stage = StagedFiles.create(tmp_path)
    for name in ("x_seg.mha", "publish.json"):  # a scan named "publish" must not clash with the journal
        stage.add(tmp_path / name, lambda p, n=name: p.write_text(n))
    dead = _dead_pid()
    moved = tmp_path / stage.staging.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    (stage.staging / "publish.json").write_text(json.dumps({"files": ["x_seg.mha", "publish.json", "../escape"]}))
    os.replace(stage.files / "x_seg.mha", tmp_path / "x_seg.mha")  # killed after the first rename
    stage.staging.rename(moved)
    recovery = recover_staging(tmp_path)
    assert recovery.completed == [tmp_path / "publish.json"] and recovery.removed == [moved]
    assert _entries(tmp_path) == ["publish.json", "x_seg.mha"]
    assert (tmp_path / "publish.json").read_text(encoding="utf-8") == "publish.json"


# --- real processes: SIGTERM, SIGINT and kill -9 during a batch -----------------------------------------------


def _start(scans: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spinesegdiff", "predict", "-i", str(scans), "-o", str(out),
                             *FAST, "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"finished before the signal: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _first_set(out: Path) -> bool:
    return out.exists() and any(p.suffix == ".json" for p in out.iterdir())


def _staging(out: Path) -> bool:
    return out.exists() and any(STAGING_NAME.fullmatch(p.name) for p in out.iterdir())


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_a_batch(tmp_path: Path, signum: int, code: int) -> None:
    scans, out = _scan_folder(tmp_path / "scans", 12), tmp_path / "out"
    process = _start(scans, out)
    _wait_for(lambda: _first_set(out), process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"spinesegdiff: interrupted by {signal.Signals(signum).name}"
    assert "Traceback" not in stderr  # (lines before: the untrained model's quality warnings)
    done = _assert_only_complete_sets(out)
    assert 1 <= len(done) < 12


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first set", "staging"])
def test_kill_9_during_a_batch_then_a_later_run_cleans_up(tmp_path: Path, moment: str) -> None:
    scans, out = _scan_folder(tmp_path / "scans", 12), tmp_path / "out"
    process = _start(scans, out)
    _wait_for(lambda: (_first_set if moment == "first set" else _staging)(out), process)
    process.kill()
    process.wait(timeout=60)
    visible = [n for n in _entries(out) if not STAGING_NAME.fullmatch(n)]
    assert not [n for n in visible if n.startswith(".")], visible  # no temporary files beside the outputs
    other = _scan_folder(tmp_path / "again", 1)
    rerun = subprocess.run([sys.executable, "-m", "spinesegdiff", "predict", "-i", str(other), "-o", str(out),
                            *FAST, "--quiet"], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "s00" in _assert_only_complete_sets(out)


KILLED_IN_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from spinesegdiff.cli import main
    from spinesegdiff.pipelines import predict
    out, when = Path(sys.argv[1]), sys.argv[2]
    real, renames = os.replace, []
    def replace(source, target):
        if Path(target).parent == out and Path(source).parent.parent.name.startswith(".spinesegdiff-staging-"):
            renames.append(target)
            if when == "publish" and len(renames) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(source, target)
    os.replace = replace
    if when == "write":
        predict.render_overlay = lambda result, path: os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["write", "publish"])
def test_kill_9_at_the_worst_moment(tmp_path: Path, when: str) -> None:
    scan, out = _write_scan(tmp_path / "x.mha"), tmp_path / "out"
    args = ["predict", "-i", str(scan), "-o", str(out), *FAST, "--quiet"]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_PUBLISH, str(out), when, *args], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staging = [n for n in _entries(out) if STAGING_NAME.fullmatch(n)]
    outputs = [n for n in _entries(out) if not STAGING_NAME.fullmatch(n)]
    assert len(staging) == 1
    assert outputs == ([] if when == "write" else ["x_seg.mha", "x_uncertainty.mha"])  # no JSON: incomplete
    rerun = subprocess.run([sys.executable, "-m", "spinesegdiff", "predict", "-i", str(_write_scan(
        tmp_path / "y.mha", seed=3)), "-o", str(out), *FAST, "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _assert_only_complete_sets(out) == ({"y"} if when == "write" else {"x", "y"})
