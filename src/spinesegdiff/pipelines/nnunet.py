"""Real nnU-Net v2 models (``pip install 'spinesegdiff[nnunet]'``): :class:`NnUNetPresegmenter` (slices, 2d)
and :class:`NnUNetSlabSegmenter` (sagittal slabs, 3d).

Any nnU-Net model folder whose labels are ours (a user's own, or one trained with
:mod:`spinesegdiff.training.nnunet`) predicts class probabilities on our 320 x 320 grid through nnU-Net's own
``nnUNetPredictor``. The folder's configuration decides which class takes it: a 2d model predicts slices, a
3d one slabs; the other class refuses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from spinesegdiff.errors import SpineSegDiffError

LABELS = {"background": 0, "spinal_canal": 1, "vertebra": 2, "disc": 3}
NNUNET_FOLDER_VARIABLES: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
"""The environment variables nnU-Net reads its folders from, once, when ``nnunetv2.paths`` is imported."""


def nnunet_available() -> bool:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        return False
    return True


def require_nnunet() -> None:
    if not nnunet_available():
        raise SpineSegDiffError("nnU-Net v2 is not installed: pip install 'spinesegdiff[nnunet]'")


@contextmanager
def environment_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set the variables of ``values`` that are unset, for the ``with`` block only; the environment is restored
    afterwards (variables set inside the block by others are left alone)."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name, value in added.items():
            if os.environ.get(name) == value:
                del os.environ[name]


def _import_predictor(model_folder: Path):
    """nnU-Net's predictor class, imported with its folder variables set (it warns at import without them; a
    predictor reads nothing there) and the environment restored afterwards."""
    placeholders = {name: str(model_folder / name) for name in NNUNET_FOLDER_VARIABLES}
    with environment_defaults(placeholders):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    return nnUNetPredictor


def check_model_folder(folder: Path, *, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth") -> None:
    """Refuse a folder that is not an nnU-Net model folder (2d or 3d) with our four labels, before nnU-Net opens it
    (nnU-Net unpickles its checkpoints: nothing of a folder that fails here is ever loaded).

    Raises:
        MissingInputError: no ``plans.json``, ``dataset.json`` or checkpoint of the fold.
        InputError: ``dataset.json`` is not JSON or its labels are not background, canal, vertebra, disc 0-3.
    """
    from spinesegdiff.errors import InputError, MissingInputError

    for required, what in ((folder / "plans.json", "nnU-Net model folder"),
                           (folder / "dataset.json", "nnU-Net model folder"),
                           (folder / f"fold_{fold}" / checkpoint, "nnU-Net checkpoint")):
        if not required.is_file():
            raise MissingInputError(required, what)
    try:
        labels = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
        values = sorted(int(v) for v in labels.values())
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as err:
        raise InputError(folder / "dataset.json", f"not an nnU-Net dataset.json ({err})") from err
    if values != [0, 1, 2, 3]:
        raise InputError(folder / "dataset.json", f"labels {labels} are not background/canal/vertebra/disc 0-3")


def folder_configuration(folder: Path) -> str | None:
    """The configuration an nnU-Net model folder's name states (``<Trainer>__<Plans>__<configuration>``, e.g.
    ``2d`` or ``3d_fullres``), or ``None`` for a folder named otherwise."""
    parts = Path(folder).name.split("__")
    return parts[2] if len(parts) == 3 and all(parts) else None


def _refuse_other_dimension(folder: Path, dimensions: int, configuration: str | None, what: str) -> None:
    """Raise :class:`InputError` when a model of ``configuration`` (``2d``, ``3d...``; other names and ``None``
    pass) is not ``dimensions``-D."""
    from spinesegdiff.errors import InputError

    if configuration == "2d":
        model_dimensions = 2
    elif configuration is not None and configuration.startswith("3d"):
        model_dimensions = 3
    else:
        return
    if model_dimensions != dimensions:
        raise InputError(folder, f"an nnU-Net {configuration} model; {what} needs a {dimensions}D model "
                                 f"({'3d_fullres' if dimensions == 3 else '2d'})")


def _load_predictor(folder: Path, *, dimensions: int, what: str, fold: int | str, checkpoint: str, device: str,
                    mirroring: bool):
    """nnU-Net's predictor of a checked model folder whose network is ``dimensions``-D (2: slices, 3: slabs).

    The folder's name is checked before anything is loaded, the loaded plans' patch size after (a renamed
    folder cannot slip through).

    Raises:
        InputError: the folder's model has the other dimensionality (a 2d model for slabs, or the reverse).
    """
    require_nnunet()
    check_model_folder(folder, fold=fold, checkpoint=checkpoint)
    _refuse_other_dimension(folder, dimensions, folder_configuration(folder), what)
    import torch

    nnUNetPredictor = _import_predictor(folder)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=device != "cpu", device=torch.device(device),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,), checkpoint_name=checkpoint)
    patch_dimensions = len(predictor.configuration_manager.patch_size)
    _refuse_other_dimension(folder, dimensions, "2d" if patch_dimensions == 2 else "3d", what)
    return predictor


class NnUNetPresegmenter:
    """A trained nnU-Net 2d model as a presegmenter: ``uint8`` slices -> class probabilities.

    Args:
        model_folder: nnU-Net's ``<Trainer>__<Plans>__2d`` folder (with ``plans.json``, ``dataset.json`` and
            ``fold_<k>/``); its labels must be ours (0 background, 1 canal, 2 vertebra, 3 disc).
        fold: which fold's checkpoint.
        checkpoint: ``checkpoint_final.pth`` by default.
        device: ``cpu`` or ``cuda``.
        mirroring: nnU-Net's test-time mirroring (off by default: 4x the cost, for little on this task).

    Raises:
        InputError: the folder holds a 3d model (see :class:`NnUNetSlabSegmenter`).
    """

    name = "nnunet"

    def __init__(self, model_folder: str | Path, *, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth",
                 device: str = "cpu", mirroring: bool = False) -> None:
        self.predictor = _load_predictor(Path(model_folder), dimensions=2, what="the slice presegmenter",
                                         fold=fold, checkpoint=checkpoint, device=device, mirroring=mirroring)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` ``uint8`` slices -> ``(N, 4, H, W)`` float32 class probabilities."""
        outputs = []
        for image in np.asarray(images_u8):
            _, probabilities = self.predictor.predict_single_npy_array(
                image[None, None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]},
                save_or_return_probabilities=True)
            outputs.append(np.asarray(probabilities, dtype=np.float32)[:, 0])
        return np.stack(outputs)


class NnUNetSlabSegmenter:
    """A trained nnU-Net 3d model on sagittal slabs: each slab's central slice -> class probabilities.

    nnU-Net segments the whole slab (sliding window over the 1 mm isotropic volume, as it was trained on the
    slabs of :func:`spinesegdiff.training.nnunet.export_slab_dataset`); the central slice of its probabilities
    is returned, the slice the 2D systems are scored on.

    Args:
        model_folder: nnU-Net's ``<Trainer>__<Plans>__3d_fullres`` folder (with ``plans.json``,
            ``dataset.json`` and ``fold_<k>/``); its labels must be ours (0 background, 1 canal, 2 vertebra,
            3 disc).
        fold: which fold's checkpoint.
        checkpoint: ``checkpoint_final.pth`` by default.
        device: ``cpu`` or ``cuda``.
        mirroring: nnU-Net's test-time mirroring (off by default: 8x the cost in 3D).

    Raises:
        InputError: the folder holds a 2d model (see :class:`NnUNetPresegmenter`).
    """

    name = "nnunet3d"

    def __init__(self, model_folder: str | Path, *, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth",
                 device: str = "cpu", mirroring: bool = False) -> None:
        self.predictor = _load_predictor(Path(model_folder), dimensions=3, what="the slab segmenter",
                                         fold=fold, checkpoint=checkpoint, device=device, mirroring=mirroring)

    def __call__(self, images_u8: np.ndarray, central: np.ndarray) -> np.ndarray:
        """Class probabilities of each slab's central slice.

        Args:
            images_u8: ``(N, D, H, W)`` ``uint8`` slabs (intensities 0..255, ``D`` sagittal slices at 1 mm).
            central: ``(N,)`` int, the index along ``D`` of each slab's central slice.

        Returns:
            ``(N, 4, H, W)`` float32 probabilities (background, canal, vertebra, disc) summing to 1 per pixel.

        Raises:
            ValueError: slabs not 4D, or central indices not one per slab within ``0..D-1``.
        """
        slabs = np.asarray(images_u8)
        central = np.asarray(central)
        if slabs.ndim != 4:
            raise ValueError(f"slabs must be (N, D, H, W), got shape {slabs.shape}")
        if central.shape != (len(slabs),) or not np.all((central >= 0) & (central < slabs.shape[1])):
            raise ValueError(f"central must hold one index in 0..{slabs.shape[1] - 1} per slab, got {central}")
        outputs = []
        for slab, index in zip(slabs, central, strict=True):
            _, probabilities = self.predictor.predict_single_npy_array(
                slab[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]}, save_or_return_probabilities=True)
            outputs.append(np.asarray(probabilities, dtype=np.float32)[:, int(index)])
        return np.stack(outputs)
