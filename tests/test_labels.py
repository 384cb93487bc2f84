from __future__ import annotations

import numpy as np
import pytest

from spinesegdiff.data.labels import detect_convention, one_hot_structures, to_classes
from spinesegdiff.errors import InputError


def test_spider_codes_map_to_classes() -> None:
    mask = np.array([0, 1, 5, 25, 100, 101, 125, 201, 225], dtype=np.uint16)
    assert to_classes(mask).tolist() == [0, 2, 2, 2, 1, 2, 2, 3, 3]


def test_partial_vertebrae_option() -> None:
    mask = np.array([0, 3, 103, 100, 203], dtype=np.uint16)
    assert to_classes(mask, partial_vertebrae_as_vertebra=False).tolist() == [0, 2, 0, 1, 3]
    assert to_classes(mask, partial_vertebrae_as_vertebra=True).tolist() == [0, 2, 2, 1, 3]


def test_semantic_masks_pass_through() -> None:
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    assert detect_convention(np.unique(mask)) == "semantic"
    np.testing.assert_array_equal(to_classes(mask), mask)
    # forcing the SPIDER reading turns 1-3 into vertebrae
    assert to_classes(mask, convention="spider").tolist() == [[0, 2], [2, 2]]


@pytest.mark.parametrize("code", [26, 99, 126, 200, 226, 300, -1])
def test_unknown_spider_code_names_file_and_code(code: int) -> None:
    mask = np.array([0, 100, code], dtype=np.int32)
    with pytest.raises(InputError, match=rf"case.mha: unknown SPIDER label code\(s\) {code}"):
        to_classes(mask, source="case.mha")


def test_unknown_code_in_semantic_mask() -> None:
    with pytest.raises(InputError, match=r"m.mha: unknown label code\(s\) 7 in a semantic mask"):
        to_classes(np.array([0, 1, 7]), convention="semantic", source="m.mha")


def test_float_masks() -> None:
    assert to_classes(np.array([0.0, 100.0, 201.0])).tolist() == [0, 1, 3]
    with pytest.raises(InputError, match="non-integer"):
        to_classes(np.array([0.0, 0.5]), source="m.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        to_classes(np.array([0.0, np.nan]), source="m.nii.gz")


def test_one_hot_structures() -> None:
    classes = np.array([[0, 1], [2, 3]])
    one_hot = one_hot_structures(classes)
    assert one_hot.shape == (3, 2, 2) and one_hot.dtype == np.float32
    np.testing.assert_array_equal(one_hot[:, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(one_hot[:, 0, 1], [1, 0, 0])
    np.testing.assert_array_equal(one_hot[:, 1, 0], [0, 1, 0])
    np.testing.assert_array_equal(one_hot[:, 1, 1], [0, 0, 1])
