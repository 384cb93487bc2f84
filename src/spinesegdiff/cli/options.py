"""Options shared by several commands, and turning them into the package's settings objects."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.data.spider import CONTRAST_SETS
from spinesegdiff.devices import DEVICE_CHOICES
from spinesegdiff.pipelines.settings import (
    BACKENDS,
    DEFAULT_PRESEG_STEPS,
    FUSED_STEPS,
    OUTPUT_FORMATS,
    PRECISIONS,
    PRESEGMENTERS,
    REFINE_SAMPLES,
    REFINE_STRIDE,
    SAMPLES_FROM_NOISE,
    STEPS_FROM_NOISE,
    SamplerSettings,
)

EXIT_INPUT_ERROR = 2
PRESEG_MODEL_HELP = ("presegmenter: a U-Net run or checkpoint (unet; default the shipped U-Net) or an nnU-Net 2d "
                     "model folder (nnunet). Only use nnU-Net folders you trust: nnU-Net loads their checkpoints "
                     "with pickle (torch.load weights_only=False), which can run code hidden in the file")
EXIT_INTERRUPTED = 130
_SAMPLER = SamplerSettings()


def add_device_option(parser: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=default,
                        help="auto: CUDA where PyTorch sees a GPU, else the CPU (and says so)")


def output_format_help() -> str:
    """The ``--format`` help, from the registry of output formats."""
    names = ", ".join(f.removeprefix(".") for f in OUTPUT_FORMATS)
    return f"output format: {names} (default: the input's; DICOM -> {OUTPUT_FORMATS[0].removeprefix('.')})"


def add_contrast_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contrast",
        choices=CONTRAST_SETS,
        default="T1w+T2w",
        help="contrast set (default: %(default)s; T2w includes t2_SPACE series unless --no-t2-space)",
    )
    parser.add_argument(
        "--no-t2-space", dest="t2_space", action="store_false", help="leave out the 3D t2_SPACE series"
    )


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=None,
                        help=f"diffusion samples S (default {REFINE_SAMPLES} refining a presegmentation, "
                             f"{SAMPLES_FROM_NOISE} from noise)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"DDIM steps K (default {STEPS_FROM_NOISE} from noise; refining, one per "
                             f"{REFINE_STRIDE} noise steps of T_pre: 1 at T_pre = {DEFAULT_PRESEG_STEPS})")
    parser.add_argument("--fuse-steps", type=int, default=None,
                        help=f"last steps fused Ts (default {FUSED_STEPS}, or every step when fewer are run)")
    parser.add_argument("--seed", type=int, default=_SAMPLER.seed)
    parser.add_argument("--precision", choices=PRECISIONS, default=_SAMPLER.precision,
                        help="network arithmetic (default auto: bfloat16 where the hardware runs it natively)")
    parser.add_argument("--backend", choices=BACKENDS, default=_SAMPLER.backend,
                        help="denoiser runtime (default auto: OpenVINO on a CPU where it is installed)")


def add_preseg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preseg", choices=PRESEGMENTERS,
                        help=f"refine a presegmenter's mask (T_pre = {DEFAULT_PRESEG_STEPS}, 1 DDIM step) instead of "
                             f"sampling from noise ({STEPS_FROM_NOISE} steps); default: unet with the shipped models, "
                             "none with --model")
    parser.add_argument("--preseg-model", type=Path, help=PRESEG_MODEL_HELP)
    parser.add_argument("--preseg-steps", type=int,
                        help="T_pre, the noise step the presegmentation is refined from (default "
                             f"{DEFAULT_PRESEG_STEPS}; 0: the presegmenter's own mask)")


def add_cohort_options(parser: argparse.ArgumentParser) -> None:
    """``--shard K/N``, ``--skip-existing``, ``--summary``: a cohort split over machines, resumed, summed up."""
    parser.add_argument("--shard", metavar="K/N",
                        help="segment only shard K of N (1-based): every N-th scan of the name-ordered inputs from "
                             "the K-th, so N machines split a folder without talking; summary-K-of-N.csv")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out scans whose outputs are complete (all four files, listed by their "
                             "<stem>.json), so an interrupted cohort resumes")
    parser.add_argument("--summary", action="store_true",
                        help="write summary.csv, one row per scan (the default with --shard, as "
                             "summary-K-of-N.csv, and with --skip-existing)")


ENGINES = ("local", "ray")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine local|ray``, ``--address``, ``--workers``, ``--worker-threads``: where the scans are segmented."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: in this process; ray: on Ray workers that each load the model once (pip "
                             "install 'spinesegdiff[ray]'; a local Ray instance on 127.0.0.1 unless --address)")
    parser.add_argument("--address", help="with --engine ray: a running Ray cluster (ray://HOST:10001, HOST:6379 or "
                                          "auto); its nodes need spinesegdiff and the same paths")
    parser.add_argument("--workers", type=int,
                        help="with --engine ray: workers (default: the cluster's CPUs over --worker-threads; "
                             "locally 1)")
    parser.add_argument("--worker-threads", type=int,
                        help="with --engine ray: CPU threads per worker (default: local cores over workers; 1 on "
                             "a cluster)")


def engine_choice(args: argparse.Namespace):
    """The :class:`~spinesegdiff.pipelines.cluster.RayEngine` asked for, or ``None`` (this process)."""
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.cluster import RayEngine

    if args.engine != "ray":
        given = [f"--{name.replace('_', '-')}" for name in ("address", "workers", "worker_threads")
                 if getattr(args, name) is not None]
        if given:
            raise SpineSegDiffError(f"{', '.join(given)} only apply with --engine ray")
        return None
    return RayEngine(address=args.address, workers=args.workers, threads=args.worker_threads)


SAMPLER_OPTIONS = {"num_samples": "--samples", "num_steps": "--steps", "fuse_steps": "--fuse-steps",
                   "seed": "--seed", "precision": "--precision", "backend": "--backend",
                   "preseg_steps": "--preseg-steps"}
"""The option that sets each :class:`SamplerSettings` field (its errors name the option)."""


def sampler_settings(args: argparse.Namespace) -> SamplerSettings:
    """The sampler options as settings; a value out of range is one line naming the option (exit 2)."""
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.settings import InvalidSetting

    try:
        return SamplerSettings(num_samples=args.samples, num_steps=args.steps, fuse_steps=args.fuse_steps,
                               seed=args.seed, precision=args.precision, backend=args.backend,
                               preseg_steps=getattr(args, "preseg_steps", None))
    except InvalidSetting as err:
        problem = err.problem.removeprefix("(T_pre) ")
        for field, option in SAMPLER_OPTIONS.items():
            problem = problem.replace(field, option)
        raise SpineSegDiffError(f"{SAMPLER_OPTIONS.get(err.field, err.field)}: {problem}") from err
    except ValueError as err:
        raise SpineSegDiffError(f"invalid sampler settings: {err}") from err


def parse_folds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` or ``"0-4"`` -> fold numbers; ``None`` stays ``None`` (the runs' own fold)."""
    from spinesegdiff.errors import SpineSegDiffError

    if text is None:
        return None
    folds: list[int] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            folds.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    except ValueError:
        raise SpineSegDiffError(f"--folds {text!r}: expected fold numbers such as 0,1,2 or 0-4") from None
    if not folds or min(folds) < 0:
        raise SpineSegDiffError(f"--folds {text!r}: expected fold numbers such as 0,1,2 or 0-4")
    return folds
