"""Files that ship inside the package: the trained compact model and one sample scan for the demo.

Both derive from SPIDER (van der Graaf et al., Scientific Data 11:264, 2024, CC BY 4.0); see MODEL_CARD.md.
"""

from __future__ import annotations

from pathlib import Path

from spinesegdiff.errors import MissingInputError

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = "spinesegdiff-compact.pt"
SAMPLE_SCAN = "spider_107_t2_SPACE.mha"
DEFAULT_PRESEGMENTER = "spinesegdiff-unet-compact.pt"
DEFAULT_REFINER = "spinesegdiff-refiner-compact.pt"


def default_model_path() -> Path:
    """The shipped compact SpineSegDiff weights."""
    path = ASSETS / DEFAULT_MODEL
    if not path.is_file():
        raise MissingInputError(path, "shipped model file (reinstall spinesegdiff)")
    return path


def default_presegmenter_path() -> Path:
    """The shipped built-in segmentation U-Net (the default presegmenter)."""
    path = ASSETS / DEFAULT_PRESEGMENTER
    if not path.is_file():
        raise MissingInputError(path, "shipped presegmenter file (reinstall spinesegdiff)")
    return path


def default_refiner_path() -> Path:
    """The shipped SpineSegDiff refiner (trained to refine the shipped U-Net's masks from T_pre <= 999)."""
    path = ASSETS / DEFAULT_REFINER
    if not path.is_file():
        raise MissingInputError(path, "shipped refiner file (reinstall spinesegdiff)")
    return path


def sample_scan_path() -> Path:
    """The shipped sample scan (SPIDER patient 107, t2_SPACE, the 9 central sagittal slices)."""
    path = ASSETS / SAMPLE_SCAN
    if not path.is_file():
        raise MissingInputError(path, "shipped sample scan (reinstall spinesegdiff)")
    return path
