"""Throughput of a cohort run: in this process against Ray with 1 and 2 workers, same scans, same machine.

Each configuration runs ``spinesegdiff predict`` as a fresh command on the same scans into its own folder and
prints the wall time, seconds per scan and speed-up over the in-process run, and how many label pixels of every
Ray run differ from the in-process run's (OpenVINO's float rounding depends on its thread count).

    python benchmarks/cohort_engines.py --scans ../shared/data/spider-t2space/images --count 8 [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spinesegdiff.data.io import read_image


def _run(inputs: Path, output: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "spinesegdiff", "predict", "-i", str(inputs), "-o", str(output), "--quiet",
               "--device", "cpu", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return time.perf_counter() - started


def _differing_pixels(first: Path, second: Path) -> int:
    """Label pixels that differ between two runs' outputs, summed over the scans."""
    total = 0
    for labels in sorted(first.glob("*_seg.*")):
        a, _ = read_image(labels)
        b, _ = read_image(second / labels.name)
        total += int((a != b).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=Path, required=True, help="folder of scans")
    parser.add_argument("--count", type=int, default=8, help="the first COUNT scans of the folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(scratch) / "scans"
        inputs.mkdir()
        for scan in sorted(p for p in args.scans.iterdir() if p.is_file())[: args.count]:
            shutil.copy(scan, inputs / scan.name)
        count = len(list(inputs.iterdir()))
        print(f"{count} scans from {args.scans}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
              f", Python {platform.python_version()}")
        print("| engine | wall (s) | s / scan | speed-up | label pixels differing from the local run |")
        print("|---|---|---|---|---|")
        local = Path(scratch) / "local"
        base = _run(inputs, local, [])
        print(f"| local (1 process) | {base:.1f} | {base / count:.2f} | 1.00 | - |")
        for workers in args.workers:
            output = Path(scratch) / f"ray-{workers}"
            threads = max(1, (os.cpu_count() or 1) // workers)
            wall = _run(inputs, output, ["--engine", "ray", "--workers", str(workers),
                                         "--worker-threads", str(threads)])
            print(f"| ray, {workers} worker(s) x {threads} thread(s) | {wall:.1f} | {wall / count:.2f} | "
                  f"{base / wall:.2f} | {_differing_pixels(local, output)} |")


if __name__ == "__main__":
    main()
