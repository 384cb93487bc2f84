"""The review page's colours: readable with red-green (and blue-yellow) colour blindness, named in its legend.

- Structures: three colours of the Okabe-Ito palette (Okabe and Ito, *Color Universal Design*, 2008), chosen so
  that each pair differs in lightness as well as hue and stays apart under protanopia, deuteranopia and
  tritanopia (``tests/test_review.py`` checks the simulated colour differences). They keep the hues of the shipped
  label table (canal yellow, vertebra blue, disc red) so the overlay PNGs and Slicer files read the same way.
- Uncertainty: matplotlib's ``cividis`` (Nuñez, Anderton and Renslow, PLOS ONE 2018), a perceptually uniform
  blue-to-yellow map designed for colour-vision deficiency; a pixel's opacity grows with its uncertainty, so
  confident pixels leave the image visible (:data:`UNCERTAINTY_OPAQUE_AT`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from spinesegdiff.cividis import cividis_lut
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES

PALETTE_NAME = "Okabe-Ito"
STRUCTURE_COLOURS: dict[str, str] = {"SC": "#F0E442", "VB": "#56B4E9", "IVD": "#D55E00"}
"""sRGB colour of each structure (Okabe-Ito yellow, sky blue, vermillion), by abbreviation."""
COLOUR_NAMES: dict[str, str] = {"SC": "yellow", "VB": "sky blue", "IVD": "vermillion"}
UNCERTAINTY_MAP = "cividis"
UNCERTAINTY_OPAQUE_AT = 0.25
"""Uncertainty at and above which the heatmap is fully opaque; below it the opacity falls linearly to 0."""
LEGEND_STOPS = 9
"""Colour stops of the uncertainty legend's CSS gradient."""


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> ``(r, g, b)`` in 0..255."""
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def label_lut() -> np.ndarray:
    """``(4, 4)`` uint8 RGBA per class: background transparent, then SC, VB, IVD opaque."""
    lut = np.zeros((4, 4), dtype=np.uint8)
    for value, abbreviation in enumerate(STRUCTURE_ABBREVIATIONS, start=1):
        lut[value, :3] = hex_to_rgb(STRUCTURE_COLOURS[abbreviation])
        lut[value, 3] = 255
    return lut


@lru_cache(maxsize=1)
def uncertainty_lut() -> np.ndarray:
    """``(256, 3)`` uint8 sRGB of the uncertainty map, entry ``k`` for uncertainty ``k / 255`` (the overlay's
    table: :mod:`spinesegdiff.cividis`, no matplotlib)."""
    return cividis_lut()


def legend() -> dict:
    """What the page's legend shows: palette names, each structure's name and colour, the heatmap's gradient."""
    lut = uncertainty_lut()
    stops = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in lut[np.linspace(0, 255, LEGEND_STOPS).round().astype(int)]]
    return {
        "palette": PALETTE_NAME,
        "structures": [{"abbreviation": a, "name": n, "colour": STRUCTURE_COLOURS[a], "colour_name": COLOUR_NAMES[a]}
                       for a, n in zip(STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES, strict=True)],
        "uncertainty_map": UNCERTAINTY_MAP,
        "uncertainty_stops": stops,
        "opaque_at": UNCERTAINTY_OPAQUE_AT,
    }
