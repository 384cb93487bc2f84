"""Files that ship inside the package: the trained compact models and one sample scan for the demo.

All derive from SPIDER (van der Graaf et al., Scientific Data 11:264, 2024, CC BY 4.0); see MODEL_CARD.md.
"""

from __future__ import annotations

from pathlib import Path

from spinesegdiff.errors import MissingInputError

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = "spinesegdiff-compact.pt"
SAMPLE_SCAN = "spider_107_t2_SPACE.mha"
DEFAULT_PRESEGMENTER = "spinesegdiff-unet-compact.pt"
DEFAULT_REFINER = "spinesegdiff-refiner-compact.pt"


def _shipped(name: str, what: str) -> Path:
    path = ASSETS / name
    if not path.is_file():
        raise MissingInputError(path, f"shipped {what} (reinstall spinesegdiff)")
    return path


def default_model_path() -> Path:
    """The shipped compact SpineSegDiff weights (sampling from noise, ``--preseg none``)."""
    return _shipped(DEFAULT_MODEL, "model file")


def default_presegmenter_path() -> Path:
    """The shipped built-in segmentation U-Net (the default presegmenter)."""
    return _shipped(DEFAULT_PRESEGMENTER, "presegmenter file")


def default_refiner_path() -> Path:
    """The shipped SpineSegDiff refiner (trained to refine the shipped U-Net's masks from T_pre <= 999)."""
    return _shipped(DEFAULT_REFINER, "refiner file")


def sample_scan_path() -> Path:
    """The shipped sample scan (SPIDER patient 107, t2_SPACE, the 9 central sagittal slices)."""
    return _shipped(SAMPLE_SCAN, "sample scan")
