"""Real nnU-Net v2 as a presegmenter (``pip install 'spinesegdiff[nnunet]'``): :class:`NnUNetPresegmenter`.

Any nnU-Net 2d model folder whose labels are ours (a user's own, or one trained with
:mod:`spinesegdiff.training.nnunet`) predicts class probabilities on our 320 x 320 grid through nnU-Net's own
``nnUNetPredictor``.
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
    """Refuse a folder that is not an nnU-Net 2d model folder with our four labels, before nnU-Net opens it
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


class NnUNetPresegmenter:
    """A trained nnU-Net 2d model as a presegmenter: ``uint8`` slices -> class probabilities.

    Args:
        model_folder: nnU-Net's ``<Trainer>__<Plans>__2d`` folder (with ``plans.json``, ``dataset.json`` and
            ``fold_<k>/``); its labels must be ours (0 background, 1 canal, 2 vertebra, 3 disc).
        fold: which fold's checkpoint.
        checkpoint: ``checkpoint_final.pth`` by default.
        device: ``cpu`` or ``cuda``.
        mirroring: nnU-Net's test-time mirroring (off by default: 4x the cost, for little on this task).
    """

    name = "nnunet"

    def __init__(self, model_folder: str | Path, *, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth",
                 device: str = "cpu", mirroring: bool = False) -> None:
        require_nnunet()
        folder = Path(model_folder)
        check_model_folder(folder, fold=fold, checkpoint=checkpoint)
        import torch

        nnUNetPredictor = _import_predictor(folder)

        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                         perform_everything_on_device=device != "cpu",
                                         device=torch.device(device), verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,),
                                                            checkpoint_name=checkpoint)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` ``uint8`` slices -> ``(N, 4, H, W)`` float32 class probabilities."""
        outputs = []
        for image in np.asarray(images_u8):
            _, probabilities = self.predictor.predict_single_npy_array(
                image[None, None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]},
                save_or_return_probabilities=True)
            outputs.append(np.asarray(probabilities, dtype=np.float32)[:, 0])
        return np.stack(outputs)
