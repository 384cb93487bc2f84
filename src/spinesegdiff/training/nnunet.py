"""Training real nnU-Net v2 as a baseline and presegmenter (``pip install 'spinesegdiff[nnunet]'``).

The pipeline, end to end, with nnU-Net's own code at every step:

1. :func:`export_dataset` writes our cached 320 x 320 slices as an nnU-Net raw dataset
   (``DatasetNNN_Name/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` with labels 0-3, ``dataset.json``)
   and our patient folds as its ``splits_final.json`` (our test fold is its ``val`` fold, so its own final
   validation scores the held-out patients).
2. :func:`plan_and_preprocess` runs ``nnUNetv2_plan_and_preprocess -c 2d --verify_dataset_integrity``.
3. :func:`train_fold` trains the ``2d`` configuration with :class:`nnUNetTrainer`'s network, loss (Dice + CE),
   SGD (lr 0.01, poly), augmentation and deep supervision, on a shortened schedule for CPUs
   (``--epochs`` x ``--iterations`` instead of 1000 x 250); the final checkpoint names ``nnUNetTrainer`` (the
   schedule is the only change), so nnU-Net's own predictor loads it.
4. :class:`spinesegdiff.pipelines.nnunet.NnUNetPresegmenter` predicts with ``nnUNetPredictor`` (any nnU-Net 2d
   model folder, a user's own too) and returns class probabilities on our grid.

nnU-Net reads its folders from environment variables at import; every step that needs them runs in a child
process with them set (:func:`nnunet_environment`), so one Python process can drive several datasets and its
own environment is never changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.splits import Split
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.pipelines.nnunet import LABELS, require_nnunet

TRAINER_NAME = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"


@dataclass(frozen=True)
class NnUNetFolders:
    """nnU-Net's three folders under one root: ``raw``, ``preprocessed``, ``results``."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"


def dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids lie in 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_environment(folders: NnUNetFolders) -> dict[str, str]:
    """The environment for an nnU-Net child process: its folders, no compilation, one augmentation worker."""
    return os.environ | {
        "nnUNet_raw": str(folders.raw), "nnUNet_preprocessed": str(folders.preprocessed),
        "nnUNet_results": str(folders.results), "nnUNet_compile": "false",
        "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1"),  # noqa: SIM112 (nnU-Net's name)
    }


def export_dataset(images: np.ndarray, labels: np.ndarray, cases: Sequence[str], folders: NnUNetFolders, *,
                   dataset_id: int = 501, name: str = "SpineSegDiff", split: Split | None = None) -> Path:
    """Write slices as an nnU-Net v2 raw dataset (and our folds as its ``splits_final.json``).

    Args:
        images: ``(N, H, W)`` ``uint8`` slices on the 1 mm model grid.
        labels: ``(N, H, W)`` classes 0-3.
        cases: ``N`` distinct case identifiers (file names).
        split: our folds (``train``/``test`` lists); written as nnU-Net's ``train``/``val``.

    Returns:
        The dataset folder under ``folders.raw``.
    """
    from spinesegdiff.data.io import Geometry, write_image

    if len(set(cases)) != len(cases) or len(cases) != len(images) or images.shape != labels.shape:
        raise ValueError("export_dataset needs one distinct case name per image, and labels shaped as images")
    if labels.max(initial=0) > 3:
        raise ValueError(f"labels must lie in 0..3, found {int(labels.max())}")
    folder = folders.raw / dataset_name(dataset_id, name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for case, image, label in zip(cases, images, labels, strict=True):
        write_image(folder / "imagesTr" / f"{case}_0000.nii.gz", image[None].astype(np.uint8), geometry)
        write_image(folder / "labelsTr" / f"{case}.nii.gz", label[None].astype(np.uint8), geometry)
    dataset = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": len(cases),
               "file_ending": ".nii.gz",
               "description": "SPIDER central sagittal slices, 1 mm, 320 x 320 (van der Graaf et al., "
                              "Sci Data 2024, CC BY 4.0), exported by spinesegdiff"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    if split is not None:
        target = folders.preprocessed / folder.name / "splits_final.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        nnunet_split = [{"train": list(fold["train"]), "val": list(fold["test"])} for fold in split]
        target.write_text(json.dumps(nnunet_split, indent=2))
    return folder


def _run(command: list[str], folders: NnUNetFolders, log: Path | None, what: str) -> None:
    log_handle = log.open("a") if log else subprocess.DEVNULL
    try:
        completed = subprocess.run(command, env=nnunet_environment(folders), stdout=log_handle,
                                   stderr=subprocess.STDOUT, check=False)
    finally:
        if log:
            log_handle.close()
    if completed.returncode != 0:
        where = f"; see {log}" if log else ""
        raise SpineSegDiffError(f"nnU-Net {what} failed (exit code {completed.returncode}){where}")


def plan_and_preprocess(dataset_id: int, folders: NnUNetFolders, *, processes: int = 2,
                        log: Path | None = None) -> None:
    """nnU-Net's fingerprint, dataset integrity check, planning and ``2d`` preprocessing."""
    require_nnunet()
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as main; sys.exit(main())")
    command = [sys.executable, "-c", code, "-d", str(dataset_id), "-c", "2d", "-np", str(processes),
               "--verify_dataset_integrity"]
    _run(command, folders, log, "planning and preprocessing")


def train_fold(dataset_id: int, fold: int, folders: NnUNetFolders, *, epochs: int = 30, iterations: int = 25,
               device: str = "cpu", log: Path | None = None) -> Path:
    """Train nnU-Net's ``2d`` configuration on one fold with a shortened schedule; returns the model folder.

    The model folder (``nnUNetTrainer__nnUNetPlans__2d``) holds ``fold_<k>/checkpoint_final.pth``, the plans
    and ``dataset.json``, as nnU-Net lays them out.
    """
    require_nnunet()
    command = [sys.executable, "-m", "spinesegdiff.training.nnunet", str(dataset_id), str(fold), str(epochs),
               str(iterations), device]
    _run(command, folders, log, "training")
    return model_folder(dataset_id, folders)


def model_folder(dataset_id: int, folders: NnUNetFolders) -> Path:
    matches = sorted(folders.results.glob(f"Dataset{dataset_id:03d}_*/{TRAINER_NAME}__{PLANS_NAME}__2d"))
    if not matches:
        raise SpineSegDiffError(f"{folders.results}: no nnU-Net 2d model of dataset {dataset_id}")
    return matches[0]


def _train_in_child(dataset_id: int, fold: int, epochs: int, iterations: int, device: str) -> None:
    """Runs in the child process that :func:`train_fold` starts (nnU-Net's folders set in its environment)."""
    import shutil

    import torch
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    class ShortScheduleTrainer(nnUNetTrainer):
        """nnUNetTrainer with fewer epochs and iterations: the only change."""

        # nnUNetTrainer records its constructor arguments by name: same signature as its own
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")) -> None:  # noqa: B008
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, iterations // 5)

    name = convert_id_to_dataset_name(dataset_id)
    preprocessed = Path(nnUNet_preprocessed) / name
    plans = json.loads((preprocessed / f"{PLANS_NAME}.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # nnU-Net >= 2.6 reads (and removes) this flag in the trainer
    dataset_json = json.loads((preprocessed / "dataset.json").read_text(encoding="utf-8"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    trainer = ShortScheduleTrainer(plans=plans, configuration="2d", fold=fold, dataset_json=dataset_json,
                                   device=torch.device(device))
    trainer.run_training()
    try:  # nnU-Net's own scoring of its val fold (our held-out test patients); the model stands without it
        trainer.perform_actual_validation()
    except Exception as err:
        print(f"nnU-Net's final validation failed: {err!r}", flush=True)
    scratch = Path(trainer.output_folder_base)
    final = Path(nnUNet_results) / name / f"{TRAINER_NAME}__{PLANS_NAME}__2d"
    (final / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    for item in scratch.iterdir():
        if item.is_file():
            shutil.copy2(item, final / item.name)
    for item in (scratch / f"fold_{fold}").iterdir():
        target = final / f"fold_{fold}" / item.name
        if item.name.startswith("checkpoint"):
            checkpoint = torch.load(item, map_location="cpu", weights_only=False)
            checkpoint["trainer_name"] = TRAINER_NAME  # same network and inference; only the schedule differed
            checkpoint["spinesegdiff_schedule"] = {"epochs": epochs, "iterations_per_epoch": iterations}
            torch.save(checkpoint, target)
        elif item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    shutil.rmtree(scratch)


if __name__ == "__main__":  # the training child process of train_fold
    dataset, fold_index, epoch_count, iteration_count, device_name = sys.argv[1:6]
    _train_in_child(int(dataset), int(fold_index), int(epoch_count), int(iteration_count), device_name)
