"""Training real nnU-Net v2 as a baseline and presegmenter (``pip install 'spinesegdiff[nnunet]'``).

The pipeline, end to end, with nnU-Net's own code at every step:

1. :func:`export_dataset` writes our cached 320 x 320 slices as an nnU-Net raw dataset
   (``DatasetNNN_Name/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` with labels 0-3, ``dataset.json``)
   and our patient folds as its ``splits_final.json`` (our test fold is its ``val`` fold, so its own final
   validation scores the held-out patients). :func:`export_slab_dataset` does the same for sagittal slabs
   (:class:`~spinesegdiff.data.slabs.Slabs`), one 3D volume per scan, for the ``3d_fullres`` configuration.
2. :func:`plan_and_preprocess` runs ``nnUNetv2_plan_and_preprocess -c <configuration>
   --verify_dataset_integrity`` (``2d`` or ``3d_fullres``, :data:`CONFIGURATIONS`).
3. :func:`train_fold` trains that configuration with :class:`nnUNetTrainer`'s network, loss (Dice + CE),
   SGD (lr 0.01, poly), augmentation and deep supervision, on a shortened schedule for CPUs
   (``--epochs`` x ``--iterations`` instead of 1000 x 250); the final checkpoint names ``nnUNetTrainer`` (the
   schedule is the only change), so nnU-Net's own predictor loads it.
4. :class:`spinesegdiff.pipelines.nnunet.NnUNetPresegmenter` predicts slices with ``nnUNetPredictor`` (any
   nnU-Net 2d model folder, a user's own too) and :class:`~spinesegdiff.pipelines.nnunet.NnUNetSlabSegmenter`
   predicts slabs with a 3d one; both return class probabilities on our grid.

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
from typing import TYPE_CHECKING

import numpy as np

from spinesegdiff.data.splits import Split
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.pipelines.nnunet import LABELS, require_nnunet

if TYPE_CHECKING:
    from spinesegdiff.data.slabs import Slabs

TRAINER_NAME = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"
CONFIGURATIONS: tuple[str, ...] = ("2d", "3d_fullres")
"""The nnU-Net configurations planned and trained here: slices (``2d``) and slabs (``3d_fullres``)."""


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


def check_configuration(configuration: str) -> str:
    """Return ``configuration`` if it is one of :data:`CONFIGURATIONS`.

    Raises:
        ValueError: any other name (``3d_lowres`` and the cascade are not trained here).
    """
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"unknown nnU-Net configuration {configuration!r}: use one of {', '.join(CONFIGURATIONS)}")
    return configuration


def model_folder_name(configuration: str) -> str:
    """nnU-Net's name of a model folder: ``nnUNetTrainer__nnUNetPlans__<configuration>``."""
    return f"{TRAINER_NAME}__{PLANS_NAME}__{check_configuration(configuration)}"


def nnunet_environment(folders: NnUNetFolders) -> dict[str, str]:
    """The environment for an nnU-Net child process: its folders, no compilation, one augmentation worker."""
    return os.environ | {
        "nnUNet_raw": str(folders.raw), "nnUNet_preprocessed": str(folders.preprocessed),
        "nnUNet_results": str(folders.results), "nnUNet_compile": "false",
        "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1"),  # noqa: SIM112 (nnU-Net's name)
    }


def export_dataset(images: np.ndarray, labels: np.ndarray, cases: Sequence[str], folders: NnUNetFolders, *,
                   dataset_id: int = 501, name: str = "SpineSegDiff", split: Split | None = None) -> Path:
    """Write slices as an nnU-Net v2 raw dataset (and our folds as its ``splits_final.json``), for ``2d``.

    Each slice becomes a ``1 x H x W`` volume (1 mm spacing).

    Args:
        images: ``(N, H, W)`` ``uint8`` slices on the 1 mm model grid.
        labels: ``(N, H, W)`` classes 0-3.
        cases: ``N`` distinct case identifiers (file names).
        split: our folds (``train``/``test`` lists); written as nnU-Net's ``train``/``val``.

    Returns:
        The dataset folder under ``folders.raw``.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_export(images, labels, cases, ndim=3, what="slices (N, H, W)")
    description = ("SPIDER central sagittal slices, 1 mm, 320 x 320 (van der Graaf et al., Sci Data 2024, "
                   "CC BY 4.0), exported by spinesegdiff")
    return _write_raw_dataset(images[:, None], labels[:, None], cases, folders, dataset_id=dataset_id, name=name,
                              split=split, description=description)


def export_slab_dataset(slabs: Slabs, folders: NnUNetFolders, *, dataset_id: int = 502,
                        name: str = "SpineSegDiffSlabs", split: Split | None = None) -> Path:
    """Write sagittal slabs as an nnU-Net v2 raw dataset (one 3D volume per scan), for ``3d_fullres``.

    Each slab is written as a ``D x H x W`` volume (SimpleITK axis order: ``D`` is the file's third axis, the
    left-right one) with 1 mm isotropic spacing; nnU-Net's ``SimpleITKIO`` reads it back as ``(1, D, H, W)``.

    Args:
        slabs: ``images``/``labels`` ``(N, D, H, W)`` ``uint8`` (intensities 0..255, classes 0..3) and ``N``
            distinct ``cases`` (the file names).
        split: our folds (``train``/``test`` lists of case names); written as nnU-Net's ``train``/``val``.

    Returns:
        The dataset folder under ``folders.raw``.
    """
    images, labels = np.asarray(slabs.images), np.asarray(slabs.labels)
    _check_export(images, labels, slabs.cases, ndim=4, what="slabs (N, D, H, W)")
    description = (f"SPIDER sagittal slabs of {images.shape[1]} slices, 1 mm, {images.shape[2]} x {images.shape[3]}"
                   " (van der Graaf et al., Sci Data 2024, CC BY 4.0), exported by spinesegdiff")
    return _write_raw_dataset(images, labels, slabs.cases, folders, dataset_id=dataset_id, name=name, split=split,
                              description=description)


def _check_export(images: np.ndarray, labels: np.ndarray, cases: Sequence[str], *, ndim: int, what: str) -> None:
    if images.ndim != ndim:
        raise ValueError(f"expected {what}, got an array of shape {images.shape}")
    if len(set(cases)) != len(cases) or len(cases) != len(images) or images.shape != labels.shape:
        raise ValueError("export needs one distinct case name per image, and labels shaped as images")
    if labels.max(initial=0) > 3:
        raise ValueError(f"labels must lie in 0..3, found {int(labels.max())}")


def _write_raw_dataset(volumes: np.ndarray, labels: np.ndarray, cases: Sequence[str], folders: NnUNetFolders, *,
                       dataset_id: int, name: str, split: Split | None, description: str) -> Path:
    """Write ``(N, D, H, W)`` volumes and labels (SimpleITK order per volume, 1 mm) and ``dataset.json``."""
    from spinesegdiff.data.io import Geometry, write_image

    folder = folders.raw / dataset_name(dataset_id, name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for case, volume, label in zip(cases, volumes, labels, strict=True):
        write_image(folder / "imagesTr" / f"{case}_0000.nii.gz", volume.astype(np.uint8), geometry)
        write_image(folder / "labelsTr" / f"{case}.nii.gz", label.astype(np.uint8), geometry)
    dataset = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": len(cases),
               "file_ending": ".nii.gz", "description": description}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    if split is not None:
        target = folders.preprocessed / folder.name / "splits_final.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        nnunet_split = [{"train": list(fold["train"]), "val": list(fold["test"])} for fold in split]
        target.write_text(json.dumps(nnunet_split, indent=2), encoding="utf-8")
    return folder


def _run(command: list[str], folders: NnUNetFolders, log: Path | None, what: str, *,
         environment: dict[str, str] | None = None) -> None:
    log_handle = log.open("a") if log else subprocess.DEVNULL
    try:
        completed = subprocess.run(command, env=nnunet_environment(folders) | (environment or {}),
                                   stdout=log_handle, stderr=subprocess.STDOUT, check=False)
    finally:
        if log:
            log_handle.close()
    if completed.returncode != 0:
        where = f"; see {log}" if log else ""
        raise SpineSegDiffError(f"nnU-Net {what} failed (exit code {completed.returncode}){where}")


def plan_and_preprocess(dataset_id: int, folders: NnUNetFolders, *, processes: int = 2,
                        log: Path | None = None, configuration: str = "2d") -> None:
    """nnU-Net's fingerprint, dataset integrity check, planning and preprocessing of ``configuration``.

    Planning writes every configuration's plan to ``nnUNetPlans.json``; only ``configuration`` (``2d`` or
    ``3d_fullres``) is preprocessed.

    Raises:
        ValueError: an unknown configuration.
    """
    check_configuration(configuration)
    require_nnunet()
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as main; sys.exit(main())")
    command = [sys.executable, "-c", code, "-d", str(dataset_id), "-c", configuration, "-np", str(processes),
               "--verify_dataset_integrity"]
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA, and fails on 0 (augmentation in the
    # training process, a setting for training only)
    workers = nnunet_environment(folders)["nnUNet_n_proc_DA"]
    environment = {"nnUNet_n_proc_DA": "1"} if workers.strip() == "0" else None
    _run(command, folders, log, "planning and preprocessing", environment=environment)


def train_fold(dataset_id: int, fold: int, folders: NnUNetFolders, *, epochs: int = 30, iterations: int = 25,
               device: str = "cpu", log: Path | None = None, configuration: str = "2d",
               threads: int | None = None, final_validation: bool = True) -> Path:
    """Train one nnU-Net configuration on one fold with a shortened schedule; returns the model folder.

    Args:
        configuration: ``2d`` (slices) or ``3d_fullres`` (slabs); planned and preprocessed beforehand.
        threads: PyTorch CPU threads of the training process (``OMP_NUM_THREADS`` too); ``None``: one per CPU.
        final_validation: run nnU-Net's own prediction and scoring of the fold's ``val`` cases (our held-out
            test patients) after training; off for timing runs.

    The model folder (``nnUNetTrainer__nnUNetPlans__<configuration>``) holds ``fold_<k>/checkpoint_final.pth``,
    the plans and ``dataset.json``, as nnU-Net lays them out.

    Raises:
        ValueError: an unknown configuration, or fewer than one thread.
    """
    check_configuration(configuration)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    require_nnunet()
    command = [sys.executable, "-m", "spinesegdiff.training.nnunet", str(dataset_id), str(fold), str(epochs),
               str(iterations), device, configuration, str(threads or 0), str(int(final_validation))]
    environment = {"OMP_NUM_THREADS": str(threads)} if threads else None
    _run(command, folders, log, "training", environment=environment)
    return model_folder(dataset_id, folders, configuration)


def model_folder(dataset_id: int, folders: NnUNetFolders, configuration: str = "2d") -> Path:
    """The trained model folder ``<results>/DatasetNNN_*/nnUNetTrainer__nnUNetPlans__<configuration>``.

    Raises:
        ValueError: an unknown configuration.
        SpineSegDiffError: no such model has been trained.
    """
    matches = sorted(folders.results.glob(f"Dataset{dataset_id:03d}_*/{model_folder_name(configuration)}"))
    if not matches:
        raise SpineSegDiffError(f"{folders.results}: no nnU-Net {configuration} model of dataset {dataset_id}")
    return matches[0]


def _validate(trainer) -> None:
    """nnU-Net's own scoring of its val fold (our held-out test patients); the model stands without it."""
    try:
        trainer.perform_actual_validation()
    except Exception as err:  # reported in the log: the trained model is kept
        print(f"nnU-Net's final validation failed: {err!r}", flush=True)


def _train_in_child(dataset_id: int, fold: int, epochs: int, iterations: int, device: str,
                    configuration: str = "2d", threads: int = 0, final_validation: bool = True) -> None:
    """Runs in the child process that :func:`train_fold` starts (nnU-Net's folders set in its environment);
    ``threads`` 0 means one per CPU."""
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
    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))
    trainer = ShortScheduleTrainer(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                                   device=torch.device(device))
    trainer.run_training()
    if final_validation:
        _validate(trainer)
    scratch = Path(trainer.output_folder_base)
    final = Path(nnUNet_results) / name / model_folder_name(configuration)
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
    dataset, fold_index, epoch_count, iteration_count, device_name, configuration_name, thread_count, validate = (
        sys.argv[1:9])
    _train_in_child(int(dataset), int(fold_index), int(epoch_count), int(iteration_count), device_name,
                    check_configuration(configuration_name), int(thread_count), validate == "1")
