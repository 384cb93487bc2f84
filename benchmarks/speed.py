"""Speed where users feel it (issue 17): one ``spinesegdiff predict`` call, a batch, ``--volume``, and the authors'
procedure, in one run on one machine; ``--profile`` adds where the time of one call goes.

Every figure is the wall time of a fresh ``python -m spinesegdiff predict`` process (Python start-up, imports,
model loading, compilation, reading, sampling, writing), after one untimed call that fills the model cache:

* one-scan call: ``predict -i SCAN``, seconds;
* batch: ``(T(K scans) - T(1 scan)) / (K - 1)``, the marginal seconds per scan of a cohort run;
* volume: ``predict --volume`` on a volume of N sagittal slices, seconds per slice of the whole call and of the
  sampling alone (the JSON's ``sample_s_per_slice``);
* authors' procedure: 15 chains x 50 DDIM steps from noise, batch 1, PyTorch float32, seconds per slice
  (:func:`spinesegdiff.evaluation.benchmark.run_benchmark`'s row (a)), timed once in this process.

With ``--baseline SRC`` the same calls run from another source tree (``SRC/src`` on ``PYTHONPATH``, e.g. a
``git archive`` of the previous commit), alternating with this one, repeat by repeat; medians are printed.

    python benchmarks/speed.py --scans ../shared/data/spider-t2space/images --batch 5 --repeats 5 \\
        [--volume-scan ../shared/data/tptbox-sample/sub-mri_label-6_T2w.nii.gz] [--baseline /tmp/base] \\
        [--reference] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SAMPLE = HERE / "src" / "spinesegdiff" / "assets" / "spider_107_t2_SPACE.mha"


def _predict(tree: Path, inputs: Path, output: Path, extra: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one fresh ``predict`` process run from source tree ``tree``."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "spinesegdiff", "predict", "-i", str(inputs), "-o", str(output), "--quiet",
               *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**env, "PYTHONPATH": str(tree / "src")}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _sample_per_slice(output: Path) -> float | None:
    report = json.loads(next(output.glob("*.json")).read_text())
    timings = report.get("timings_s", {})
    if "sample_s_per_slice" in timings:
        return float(timings["sample_s_per_slice"])
    return timings["sample_s"] / max(1, len(report.get("sagittal_slices", [1])))


def measure(trees: dict[str, Path], scans: list[Path], volume_scans: list[Path], repeats: int, scratch: Path,
            extra: list[str], *, bytecode: bool = True) -> dict[str, dict[str, list[float]]]:
    """Every tree's figures, the trees alternating within each repeat (same machine, same minute).

    ``bytecode``: Python writes and reads its compiled modules (``__pycache__``), as for an installed package;
    without it the environment's ``PYTHONDONTWRITEBYTECODE`` stays and every module is compiled at every start.
    """
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    folder = scratch / "batch"
    folder.mkdir()
    for scan in scans:
        shutil.copy(scan, folder / scan.name)
    slices = {scan: _slice_count(scan) for scan in volume_scans}
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for name, tree in trees.items():  # untimed: converts and compiles into the cache once
        _predict(tree, scans[0], scratch / f"warm-{name}", extra, env)
    for _ in range(repeats):
        for name, tree in trees.items():
            got = figures[name]
            one = _predict(tree, scans[0], scratch / "one", extra, env)
            batch = _predict(tree, folder, scratch / "batch-out", extra, env)
            got.setdefault("one-scan call (s)", []).append(one)
            got.setdefault(f"marginal s / scan in a batch of {len(scans)}", []).append(
                (batch - one) / (len(scans) - 1))
            for scan, count in slices.items():
                volume = _predict(tree, scan, scratch / "volume", [*extra, "--volume"], env)
                got.setdefault(f"--volume s / slice, whole call ({count} slices)", []).append(volume / count)
                got.setdefault(f"--volume s / slice, sampling alone ({count} slices)", []).append(
                    _sample_per_slice(scratch / "volume"))
    return figures


def _slice_count(path: Path) -> int:
    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.preprocess import plan_grid

    array, geometry = read_image(path)
    return int(plan_grid(array.shape, geometry).num_sagittal)


def reference_seconds(scan: Path, steps: int) -> float:
    """The authors' procedure on ``scan``'s central slice with the shipped model from noise, s / slice."""
    from spinesegdiff.assets import default_model_path
    from spinesegdiff.pipelines.predict import load_scan
    from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter
    from spinesegdiff.pipelines.tiling import segment_canvas

    image = load_scan(scan).prepared.images
    settings = SamplerSettings(precision="fp32", backend="torch")
    segmenter = Segmenter.from_checkpoint(default_model_path(), device="cpu", settings=settings, quiet=True)
    started = time.perf_counter()
    segment_canvas(lambda windows: segmenter.segment(windows, reference_procedure=True, reference_steps=steps), image)
    return time.perf_counter() - started


def import_profile(scan: Path, scratch: Path, top: int = 10) -> list[tuple[str, float]]:
    """``python -X importtime`` of one call: the top-level imports with their cumulative seconds."""
    command = [sys.executable, "-X", "importtime", "-m", "spinesegdiff", "predict", "-i", str(scan), "-o",
               str(scratch / "imports"), "--quiet"]
    stderr = subprocess.run(command, check=True, capture_output=True, text=True).stderr
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match:  # no indentation: a top-level import
            rows.append((match.group(2), int(match.group(1)) / 1e6))
    total = sum(seconds for _, seconds in rows)
    return [("all imports", total), *sorted(rows, key=lambda row: -row[1])[:top]]


STAGES = {  # module: functions whose time one call spends (each wrapped by a timer in a fresh process)
    "spinesegdiff.pipelines.predict": ["read_image", "prepare_scan", "_at_midline", "plausible_probabilities",
                                       "restore_probabilities", "spine_quality", "scan_levels", "render_overlay",
                                       "write_image", "strict_json"],
    "spinesegdiff.pipelines.presegmenters": ["resolve_presegmenter"],
    "spinesegdiff.pipelines.segmenter": ["Segmenter.from_checkpoint"],
    "spinesegdiff.pipelines.backends.compiled": ["compiled_bundle", "CompiledGraphs.__init__",
                                                 "CompiledGraphs.run", "TorchCompatibleNormal.normal"],
    "spinesegdiff.pipelines.backends.numpy_sampler": ["sample_segmentation", "summarise"],
}


def _timed_stages(scan: Path, output: Path) -> None:
    """In this process: one ``predict`` call with :data:`STAGES` timed; prints ``{stage: seconds}`` as JSON."""
    import functools
    import importlib

    started = time.perf_counter()
    spent: dict[str, float] = {}
    from spinesegdiff.cli import main as cli_main  # the imports are part of what is timed

    spent["import spinesegdiff.cli"] = time.perf_counter() - started

    def timer(name: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            mark = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = name if name != "CompiledGraphs.run" else f"{name}({args[1]})"
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - mark
        return timed

    for module_name, names in STAGES.items():
        module = importlib.import_module(module_name)
        for name in names:
            owner, _, attribute = name.rpartition(".")
            holder = getattr(module, owner) if owner else module
            original = holder.__dict__[attribute]
            wrapped = timer(name, original.__func__ if isinstance(original, classmethod) else original)
            setattr(holder, attribute, classmethod(wrapped) if isinstance(original, classmethod) else wrapped)
    mark = time.perf_counter()
    cli_main(["predict", "-i", str(scan), "-o", str(output), "--quiet"])
    spent["the whole command after its imports"] = time.perf_counter() - mark
    print(json.dumps(spent))


def stage_profile(scan: Path, scratch: Path) -> dict[str, float]:
    """:func:`_timed_stages` in a fresh process, and that process's start-up (``python -c pass``)."""
    mark = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = time.perf_counter() - mark
    mark = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--stages-of", str(scan), str(scratch / "stages")], check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - mark
    spent = json.loads(run.stdout.strip().splitlines()[-1])
    return {"python start-up (python -c pass)": startup, **spent, "wall of the process": wall}


def _median_table(figures: dict[str, dict[str, list[float]]]) -> str:
    names = list(figures)
    rows = list(next(iter(figures.values())))
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cells = [f"{statistics.median(figures[n][row]):.2f} ({min(figures[n][row]):.2f}-{max(figures[n][row]):.2f})"
                 for n in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=Path, help="folder of scans for the batch (default: the shipped scan)")
    parser.add_argument("--batch", type=int, default=5, help="scans in the batch (K, at least 2)")
    parser.add_argument("--volume-scan", type=Path, action="append", help="scan for --volume, repeatable (default: "
                                                                          "the shipped 9-slice scan)")
    parser.add_argument("--no-bytecode", dest="bytecode", action="store_false",
                        help="keep PYTHONDONTWRITEBYTECODE from the environment (every module compiled at every "
                             "start); by default the calls read and write __pycache__ as an installed package does")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another source tree to time alternately (its src/ is used)")
    parser.add_argument("--reference", action="store_true", help="also time the authors' procedure (slow)")
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="also print the imports of one call")
    parser.add_argument("--backend", help="--backend for every predict call (default: the package's auto)")
    parser.add_argument("--stages-of", nargs=2, type=Path, help=argparse.SUPPRESS)  # the --profile child process
    args = parser.parse_args()
    if args.stages_of:
        _timed_stages(*args.stages_of)
        return
    scans = sorted(args.scans.glob("*.mha"))[:args.batch] if args.scans else [SAMPLE] * args.batch
    if len(scans) < 2:
        parser.error("--batch needs at least 2 scans")
    trees = {"this tree": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    extra = ["--backend", args.backend] if args.backend else []
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at start; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if args.scans:  # distinct names: copies of one file would share a stem
            scans = [Path(shutil.copy(scan, scratch / scan.name)) for scan in scans]
        else:
            scans = [Path(shutil.copy(SAMPLE, scratch / f"sample{k}.mha")) for k in range(args.batch)]
        figures = measure(trees, scans, args.volume_scan or [SAMPLE], args.repeats, scratch, extra,
                          bytecode=args.bytecode)
        print(f"medians (min-max) of {args.repeats} repeats, the trees alternating:")
        print(_median_table(figures))
        if args.reference:
            seconds = reference_seconds(scans[0], args.reference_steps)
            print(f"authors' procedure (15 chains x {args.reference_steps} DDIM steps, batch 1, PyTorch fp32, "
                  f"shipped model from noise): {seconds:.2f} s / slice")
        if args.profile:
            print("| stage of one call (nested stages overlap) | s |\n|---|---|")
            for name, seconds in stage_profile(scans[0], scratch).items():
                print(f"| {name} | {seconds:.3f} |")
            print("| import (top level, cumulative) | s |\n|---|---|")
            for name, seconds in import_profile(scans[0], scratch):
                print(f"| {name} | {seconds:.3f} |")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
