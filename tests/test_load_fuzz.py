"""Property test: whatever array and geometry reach ``load_scan``, the answer is a model-ready scan or a
user-facing error, never another exception.

Hypothesis draws shapes (including empty axes), dtypes (integers, floats, bool, complex), values (constant, NaN,
huge), spacings and orientations (any axis permutation and flips, and oblique rotations).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spinesegdiff.data.io import Geometry  # noqa: E402
from spinesegdiff.errors import SpineSegDiffError  # noqa: E402
from spinesegdiff.pipelines.predict import load_scan  # noqa: E402

PERMUTATIONS = list(itertools.permutations(range(3)))
DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64]


@st.composite
def scans(draw) -> tuple[np.ndarray, Geometry]:
    shape = tuple(draw(st.integers(0, 40)) for _ in range(3))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["random", "constant", "nan", "huge", "smooth"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "constant":
        array = np.full(shape, draw(st.integers(-5, 5)), dtype=np.float64)
    elif kind == "smooth":
        grids = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
        array = np.sin(sum(grids)) * 500 + 600 if shape and all(shape) else np.zeros(shape)
    else:
        array = rng.random(shape) * 1000
        if kind == "nan" and array.size:
            array.flat[rng.integers(array.size)] = np.nan
        if kind == "huge":
            array = array * 1e300
    with np.errstate(all="ignore"):
        array = array.astype(dtype)
    spacing = tuple(draw(st.floats(0.2, 6.0)) for _ in range(3))
    direction = np.zeros((3, 3))
    for axis, world in enumerate(draw(st.sampled_from(PERMUTATIONS))):
        direction[world, axis] = draw(st.sampled_from([-1.0, 1.0]))
    angle = np.radians(draw(st.floats(0.0, 40.0)))
    tilt = np.asarray([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    geometry = Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=tuple((tilt @ direction).ravel()))
    return array, geometry


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scans())
def test_load_scan_answers_with_a_scan_or_a_user_error(scan: tuple[np.ndarray, Geometry]) -> None:
    array, geometry = scan
    before = array.copy()
    try:
        loaded = load_scan((array, geometry))
    except SpineSegDiffError as err:
        assert str(err) and "\n" not in str(err)  # one line for the user
        assert not np.iscomplexobj(array) or "complex" in str(err)
    else:
        assert loaded.prepared.images.dtype == np.uint8 and loaded.prepared.images.shape[1:] == (320, 320)
        assert not np.iscomplexobj(array) and np.isfinite(array).all() and array.size  # such input is refused
    np.testing.assert_array_equal(array, before)  # the caller's array is never changed
