"""Train real nnU-Net v2 on one fold of our patient split (issue 14, rows "nnU-Net 2D" and "nnU-Net 3D").

Three stages, each timed: export (``2d``: each scan's central slice; ``3d_fullres``: each scan's sagittal slab
from a cache built with ``spinesegdiff preprocess --all-slices``), nnU-Net's planning and preprocessing, and
training of one fold on a shortened schedule (``--epochs`` x ``--iterations``; nnU-Net's own is 1000 x 250).
The folds are the other systems': the 5-fold patient split of seed 12345 made from the cache's cases (or
``--split-file``, a run's ``splits_final.json``), so nnU-Net's ``val`` fold is the held-out test fold of our
runs.

    python benchmarks/train_nnunet.py --cache cache/t2space-all --root /tmp/nnunet3d \\
        --configuration 3d_fullres --fold 0 --epochs 40 --iterations 20 --device auto

The planned patch size, batch size, stages and features are printed after planning; ``--threads 1`` with
``nnUNet_n_proc_DA=0`` in the environment (augmentation in the training process) times one CPU core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONFIGURATIONS = ("2d", "3d_fullres")  # as spinesegdiff.training.nnunet.CONFIGURATIONS (imported lazily)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True,
                        help="slice cache (spinesegdiff preprocess --all-slices for 3d_fullres)")
    parser.add_argument("--root", type=Path, required=True, help="work folder for nnU-Net's raw, preprocessed "
                                                                 "and results folders")
    parser.add_argument("--configuration", choices=CONFIGURATIONS, default="3d_fullres")
    parser.add_argument("--fold", type=int, default=0, help="test fold of the 5-fold patient split (0-4)")
    parser.add_argument("--split-file", default=None, help="a run's splits_final.json to take the folds from")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: one per CPU)")
    parser.add_argument("--dataset-id", type=int, default=None,
                        help="nnU-Net dataset id (default: 501 for 2d, 502 for 3d_fullres)")
    parser.add_argument("--processes", type=int, default=1, help="nnU-Net planning and preprocessing processes")
    parser.add_argument("--skip-final-validation", action="store_true",
                        help="skip nnU-Net's prediction and scoring of the held-out fold after training")
    return parser.parse_args(argv)


def export(arguments: argparse.Namespace, folders, dataset_id: int) -> tuple[Path, int]:
    """Export the cache for the configuration; returns the dataset folder and the number of cases."""
    import numpy as np

    from spinesegdiff.data.cache import load_cache
    from spinesegdiff.data.folds import FoldSettings, fold_data
    from spinesegdiff.training import nnunet

    cache = load_cache(arguments.cache)
    settings = FoldSettings(fold=arguments.fold, num_folds=5, split_seed=12345, split_file=arguments.split_file,
                            val_fraction=0.0)
    split = fold_data(settings, cache).split
    if arguments.configuration == "3d_fullres":
        from spinesegdiff.data.slabs import slabs_from_cache

        slabs = slabs_from_cache(cache)
        dataset = nnunet.export_slab_dataset(slabs, folders, dataset_id=dataset_id, name="SpineSegDiffSlabs",
                                             split=split)
        return dataset, len(slabs)
    central = cache.indices(central_only=True)
    cases = [cache.entries[i].case for i in central]
    dataset = nnunet.export_dataset(np.asarray(cache.images[central]), np.asarray(cache.labels[central]), cases,
                                    folders, dataset_id=dataset_id, name="SpineSegDiff", split=split)
    return dataset, len(cases)


def planned(folders, dataset: Path, configuration: str) -> dict:
    """Patch size, batch size, stages and features nnU-Net planned for ``configuration``."""
    plans = json.loads((folders.preprocessed / dataset.name / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plan = plans["configurations"][configuration]
    network = plan["architecture"]["arch_kwargs"]
    return {"patch_size": plan["patch_size"], "batch_size": plan["batch_size"], "n_stages": network["n_stages"],
            "features_per_stage": network["features_per_stage"], "strides": network["strides"],
            "spacing": plan["spacing"], "median_image_size": plan["median_image_size_in_voxels"]}


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from spinesegdiff.devices import resolve_device
    from spinesegdiff.training import nnunet

    device = resolve_device(arguments.device).type
    dataset_id = arguments.dataset_id or (501 if arguments.configuration == "2d" else 502)
    folders = nnunet.NnUNetFolders(arguments.root.resolve())
    arguments.root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    dataset, count = export(arguments, folders, dataset_id)
    seconds["export"] = time.perf_counter() - started
    print(f"exported {count} cases to {dataset} ({seconds['export']:.1f} s)", flush=True)

    started = time.perf_counter()
    nnunet.plan_and_preprocess(dataset_id, folders, processes=arguments.processes, log=arguments.root / "plan.log",
                               configuration=arguments.configuration)
    seconds["plan_and_preprocess"] = time.perf_counter() - started
    plan = planned(folders, dataset, arguments.configuration)
    print(f"planned {arguments.configuration} ({seconds['plan_and_preprocess']:.1f} s): {json.dumps(plan)}",
          flush=True)

    started = time.perf_counter()
    model = nnunet.train_fold(dataset_id, arguments.fold, folders, epochs=arguments.epochs,
                              iterations=arguments.iterations, device=device, log=arguments.root / "train.log",
                              configuration=arguments.configuration, threads=arguments.threads,
                              final_validation=not arguments.skip_final_validation)
    seconds["train"] = time.perf_counter() - started
    print(f"trained fold {arguments.fold}, {arguments.epochs} x {arguments.iterations} iterations on {device} "
          f"({seconds['train']:.1f} s; log {arguments.root / 'train.log'})", flush=True)
    print(f"model folder: {model}")
    print(json.dumps({"configuration": arguments.configuration, "fold": arguments.fold, "device": device,
                      "threads": arguments.threads, "plan": plan, "seconds": seconds, "model": str(model)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
