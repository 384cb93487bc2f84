"""Shared fixtures: the real SPIDER subset beside the checkout (skipped where absent) and synthetic folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from spinesegdiff.data.io import write_image
from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.phantom import make_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPINESEGDIFF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SPIDER_SUBSET = SHARED_DATA / "spider-t2space"
SPIDER_METADATA = SHARED_DATA / "spider-metadata"
TPTBOX = SHARED_DATA / "tptbox-sample"


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted OpenVINO graphs go to a temporary folder, not the user's ~/.cache."""
    os.environ["SPINESEGDIFF_CACHE"] = str(tmp_path_factory.mktemp("spinesegdiff-cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny network in our checkpoint format (``predict_helpers.tiny_checkpoint``): fast, for which
    scans run and where outputs go, not for what they hold. Read only: one file for the whole session."""
    from predict_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture()
def spine_judgement_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any segmentation is written: the tiny network draws no spine (``predict_helpers.switch_off_spine_judgement``)."""
    from predict_helpers import switch_off_spine_judgement

    switch_off_spine_judgement(monkeypatch)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set SPINESEGDIFF_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def spider_subset() -> Path:
    """The 33 real SPIDER t2_SPACE series (van der Graaf et al., Sci Data 2024, CC BY 4.0)."""
    return _require(SPIDER_SUBSET)


@pytest.fixture(scope="session")
def spider_metadata() -> Path:
    return _require(SPIDER_METADATA)


@pytest.fixture(scope="session")
def tptbox_sample() -> Path:
    return _require(TPTBOX)


def to_spider_codes(labels: np.ndarray) -> np.ndarray:
    """Semantic phantom labels -> SPIDER instance codes (vertebrae 1.. and discs 201.. counted from the bottom)."""
    codes = np.zeros(labels.shape, dtype=np.uint16)
    codes[labels == SPINAL_CANAL] = 100
    for cls, first in ((VERTEBRA, 1), (DISC, 201)):
        components, count = ndimage.label(labels == cls)
        if count == 0:
            continue
        # order components from inferior (largest row index) to superior
        centres = ndimage.center_of_mass(np.ones_like(components), components, range(1, count + 1))
        order = np.argsort([-c[1] for c in centres])
        for rank, component in enumerate(order):
            codes[components == component + 1] = first + min(rank, 24)
    return codes


@pytest.fixture
def make_spider_folder(tmp_path: Path):
    """Factory: a SPIDER-layout folder of phantom series with instance-code masks.

    ``make_spider_folder([("1", "t1"), ("1", "t2"), ("2", "t2")])`` -> folder path.
    """

    def make(series: list[tuple[str, str]], *, name: str = "spider", shape=(5, 128, 96)) -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for k, (patient, contrast) in enumerate(series):
            phantom = make_phantom(
                shape=shape,
                spacing=(2.5, 2.5, 3.0),
                contrast="T1" if contrast == "t1" else "T2",
                seed=int(patient) * 10 + k,
            )
            stem = f"{patient}_{contrast}"
            write_image(
                root / "images" / f"{stem}.mha", (phantom.image * 1000).astype(np.int16), phantom.geometry
            )
            write_image(root / "masks" / f"{stem}.mha", to_spider_codes(phantom.labels), phantom.geometry)
        return root

    return make


@pytest.fixture
def small_cache(make_spider_folder, tmp_path: Path):
    """A cache of 8 phantom patients (one T2 series each, 3 slices of 96 x 80)."""
    from spinesegdiff.data.cache import build_cache

    root = make_spider_folder([(str(p), "t2") for p in range(1, 9)], shape=(3, 96, 80))
    return build_cache(root, tmp_path / "cache", progress=False)
