"""The report says when a slice does not look T2-weighted, the only contrast the shipped models were trained on."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from spinesegdiff.pipelines.checks import QualityWarning, check_contrast


def _slice(canal: float, body: float) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((64, 64), np.uint8)
    labels[10:50, 20:30] = 2
    labels[10:50, 30:36] = 1
    image = np.full((64, 64), 60.0)
    image[labels == 1], image[labels == 2] = canal, body
    return labels, image


def test_a_dark_canal_is_named_and_warned_about() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_contrast(*_slice(canal=220.0, body=90.0), "a.mha") == "T2-like"
        assert not caught
        assert check_contrast(*_slice(canal=40.0, body=180.0), "b.mha") == "not T2-like"
    assert len(caught) == 1 and caught[0].category is QualityWarning
    message = str(caught[0].message)
    assert message.startswith("b.mha: the slice does not look T2-weighted") and "\n" not in message
    labels, image = _slice(canal=40.0, body=180.0)
    labels[labels == 1] = 0
    assert check_contrast(labels, image, None) == "unknown", "no canal: nothing to judge"


def test_predict_reports_the_contrast_of_t1_and_t2_phantoms() -> None:
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.pipelines.predict import segment
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter
    from spinesegdiff.pipelines.segmenter import Segmenter
    from spinesegdiff.pipelines.settings import SamplerSettings

    presegmenter = resolve_presegmenter(None, user_model=False, device="cpu")
    segmenter = Segmenter.from_checkpoint(None, device="cpu", quiet=True, presegmenter=presegmenter,
                                          settings=SamplerSettings(num_samples=2))
    for contrast, expected in (("T2", "T2-like"), ("T1", "not T2-like")):
        phantom = make_phantom(shape=(5, 400, 340), spacing=(0.6, 0.6, 1.0), contrast=contrast, seed=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = segment((phantom.image, phantom.geometry), segmenter=segmenter)
        assert result.quality["contrast"] == expected
        said = [str(w.message) for w in caught if "T2-weighted" in str(w.message)]
        assert len(said) == (contrast == "T1"), said
    assert json.loads(json.dumps(result.quality))["contrast"] == "not T2-like"


def test_a_segmentation_that_is_no_spine_is_not_judged(monkeypatch: pytest.MonkeyPatch, tiny_model) -> None:
    from predict_helpers import switch_off_spine_judgement
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.pipelines.predict import segment
    from spinesegdiff.pipelines.segmenter import Segmenter
    from spinesegdiff.pipelines.settings import SamplerSettings

    switch_off_spine_judgement(monkeypatch)  # the untrained network draws no spine
    segmenter = Segmenter.from_checkpoint(tiny_model, device="cpu", quiet=True,
                                          settings=SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1))
    phantom = make_phantom(shape=(5, 400, 340), spacing=(0.6, 0.6, 1.0), contrast="T1", seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment((phantom.image, phantom.geometry), segmenter=segmenter)
    assert result.quality["verdict"] != "ok" and result.quality["contrast"] == "unknown"
    assert not [w for w in caught if "T2-weighted" in str(w.message)]
