"""``spinesegdiff train``."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.devices import DEVICE_CHOICES
from spinesegdiff.diffusion.config import SCHEDULE_KINDS
from spinesegdiff.models.config import PRESETS, VARIANTS
from spinesegdiff.training.lr_schedule import LR_SCHEDULES

_TRAIN_FLAGS = {
    "preset": "preset", "variant": "variant", "fold": "fold", "folds": "num_folds", "split_file": "split_file",
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule",
    "val_every": "val_every", "seed": "seed", "device": "device", "max_minutes": "max_minutes",
    "threads": "threads", "schedule": "schedule", "warmup_steps": "warmup_steps", "ema_decay": "ema_decay",
    "val_fraction": "val_fraction", "init_from": "init_from", "crossfit_part": "crossfit_part",
    "preseg_max_timestep": "preseg_max_timestep", "holdout_patients": "holdout_patients",
    "preseg_focus_timestep": "preseg_focus_timestep", "preseg_focus_share": "preseg_focus_share",
}
"""Flag (argparse destination) -> flat training setting (:data:`spinesegdiff.training.config.FLAT_KEYS`)."""


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The training settings given as flags, by their flat names (``None``: not given)."""
    overrides: dict[str, object] = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items()}
    overrides |= {"data": str(args.data), "out": str(args.out),
                  "preseg_models": [str(p) for p in args.preseg_model] if args.preseg_model else None,
                  "augment": {"enabled": False} if args.no_augment else None,
                  "amp": False if args.no_amp else None}
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from spinesegdiff.training.config import make_train_config
    from spinesegdiff.training.loop import train

    config = make_train_config(args.config, _overrides(args))
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    run = train(config, resume=args.resume, progress=not args.quiet)
    print(f"run folder: {run} (best.pt, last.pt, config.json, splits_final.json)")
    return 0


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    tr = commands.add_parser("train", help="train a diffusion model (or a baseline) on a cache or SPIDER folder")
    tr.add_argument("--data", required=True, type=Path, help="cache folder (spinesegdiff preprocess) or SPIDER folder")
    tr.add_argument("--out", required=True, type=Path, help="run folder for checkpoints and logs")
    tr.add_argument("--config", type=Path, help="JSON file of training settings (flags below override it)")
    tr.add_argument("--preset", choices=PRESETS, help="network size (default compact)")
    tr.add_argument("--variant", choices=VARIANTS,
                    help="model variant (default spinesegdiff; diffunet3d trains on slabs: a cache made by "
                         "preprocess --all-slices)")
    tr.add_argument("--fold", help="test fold 0..K-1, or 'all' to train on every case (default 0)")
    tr.add_argument("--folds", type=int, help="number of patient folds K (default 5)")
    tr.add_argument("--split-file", help="splits_final.json to take the folds from (ours or the paper's)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4, as the paper)")
    tr.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    tr.add_argument("--warmup-steps", type=int)
    tr.add_argument("--ema-decay", type=float)
    tr.add_argument("--schedule", choices=SCHEDULE_KINDS, help="noise schedule (default linear)")
    tr.add_argument("--val-every", type=int, help="validate every N epochs")
    tr.add_argument("--val-fraction", type=float,
                    help="share of the training patients held out for validation (default 0.15; 0: none)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--device", choices=DEVICE_CHOICES)
    tr.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    tr.add_argument("--max-minutes", type=float, help="stop (validate and save) after this much wall time")
    tr.add_argument("--holdout-patients", help="comma-separated patients also left out (cross-fitted U-Nets)")
    tr.add_argument("--crossfit-part", help="k/n: also hold out part k of n seeded parts of the fold's training "
                                            "patients (cross-fitted presegmenters for refiner training)")
    tr.add_argument("--init-from", help="start from this checkpoint's EMA weights (fine-tuning)")
    tr.add_argument("--preseg-model", action="append", type=Path,
                    help="built-in U-Net run for presegmentation refinement training (repeat: cross-fitted "
                         "U-Nets; each slice is presegmented by one that never saw its patient)")
    tr.add_argument("--preseg-max-timestep", type=int, help="largest T_pre trained (default 1000 - 1)")
    tr.add_argument("--preseg-focus-timestep", type=int, help="T_pre trained most (default 30)")
    tr.add_argument("--preseg-focus-share", type=float, help="share of steps drawn in [0, focus] (default 0.5)")
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(handler=_cmd_train)
