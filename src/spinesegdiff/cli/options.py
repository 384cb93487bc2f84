"""Options shared by several commands, and turning them into the package's settings objects."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.data.spider import CONTRAST_SETS

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130

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
    parser.add_argument("--samples", type=int, default=15, help="diffusion samples S (default 15)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps K (default 10)")
    parser.add_argument("--fuse-steps", type=int, default=10, help="last steps fused Ts (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="network arithmetic (default auto: bfloat16 where the hardware runs it natively)")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                        help="denoiser runtime (default auto: OpenVINO on a CPU where it is installed)")


def add_preseg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preseg", choices=("none", "unet", "nnunet"),
                        help="refine a presegmenter's mask (T_pre = 30, 2 DDIM steps) instead of sampling from "
                             "noise (10 steps); default: unet with the shipped models, none with --model")
    parser.add_argument("--preseg-model", type=Path,
                        help="presegmenter: a U-Net run or checkpoint (unet; default the shipped U-Net) or an "
                             "nnU-Net 2d model folder (nnunet)")
    parser.add_argument("--preseg-steps", type=int,
                        help="T_pre, the noise step the presegmentation is refined from (default 30; 0: the "
                             "presegmenter's own mask)")


def presegmenter_from_options(args: argparse.Namespace):
    from spinesegdiff.devices import resolve_device
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.presegmenters import load_presegmenter

    kind = args.preseg
    if kind is None:  # the shipped pipeline refines the shipped U-Net's mask; a user's own model samples
        kind = "unet" if getattr(args, "model", None) is None else "none"
    if kind == "none":
        if args.preseg_model is not None or args.preseg_steps is not None:
            raise SpineSegDiffError("--preseg-model and --preseg-steps need --preseg unet or nnunet")
        return None
    return load_presegmenter(kind, args.preseg_model, device=str(resolve_device(args.device, quiet=True)))


def sampler_settings(args: argparse.Namespace):
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.segmenter import SamplerSettings

    try:
        return SamplerSettings(num_samples=args.samples, num_steps=args.steps, fuse_steps=args.fuse_steps,
                               seed=args.seed, precision=args.precision, backend=args.backend,
                               preseg_steps=getattr(args, "preseg_steps", None))
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
