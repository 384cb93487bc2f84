"""Text on Pillow pictures: fonts by pixel size and labels anchored at a point, on an optional box.

For the PNG overlay of ``predict`` (:mod:`spinesegdiff.pipelines.overlay`) and the level names on it
(:func:`spinesegdiff.anatomy.draw_level_names`), drawn without matplotlib. Pillow is imported when a function
runs. Fonts: Pillow's own scalable font (``ImageFont.load_default(size=...)``, Pillow >= 10.1 built with
FreeType), else its one-size bitmap font, so a picture is drawn on every Pillow, only less neatly on an old one.
Coordinates are canvas pixels, ``x`` to the right and ``y`` down.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

RGBA = tuple[int, int, int, int]
Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in canvas pixels."""
ANCHORS = {"l": 0.0, "m": 0.5, "r": 1.0, "t": 0.0, "b": 1.0}
"""Where the anchor point lies on the text: horizontal ``l``/``m``/``r``, then vertical ``t``/``m``/``b``."""


@lru_cache(maxsize=16)
def font(size: int) -> Font:
    """Pillow's scalable default font at ``size`` pixels, or its bitmap font where that one is not available."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 takes no size; without FreeType it cannot scale
        return ImageFont.load_default()


def scalable(chosen: Font) -> bool:
    """Whether ``chosen`` is a FreeType font (sized as asked), not the bitmap fallback."""
    from PIL import ImageFont

    return isinstance(chosen, ImageFont.FreeTypeFont)


def _printable(text: str, chosen: Font) -> str:
    """``text`` as the font can take it: the bitmap font knows Latin-1 only (other characters become ``?``)."""
    return text if scalable(chosen) else text.encode("latin-1", "replace").decode("latin-1")


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, *, size: int, fill: RGBA,
              anchor: str = "lt", box: RGBA | None = None, pad: int = 2) -> Box:
    """Write ``text`` so that its ``anchor`` point (see :data:`ANCHORS`, e.g. ``"rm"``: right end, middle) lies
    at ``xy``, on a rectangle of colour ``box`` reaching ``pad`` pixels beyond the text when given.

    Colours are RGBA: on a drawing made with ``ImageDraw.Draw(image, "RGBA")`` a colour with alpha below 255 is
    blended into the picture. Returns the box the text (with its padding) covers.

    Raises:
        ValueError: an anchor not made of :data:`ANCHORS`.
    """
    if len(anchor) != 2 or anchor[0] not in "lmr" or anchor[1] not in "tmb":
        raise ValueError(f"anchor must be one of l/m/r then one of t/m/b, got {anchor!r}")
    chosen = font(size)
    text = _printable(text, chosen)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=chosen)
    x = xy[0] - left - (right - left) * ANCHORS[anchor[0]]
    y = xy[1] - top - (bottom - top) * ANCHORS[anchor[1]]
    covered = (x + left - pad, y + top - pad, x + right + pad, y + bottom + pad)
    if box is not None:
        draw.rectangle(covered, fill=box)
    draw.text((x, y), text, font=chosen, fill=fill)
    return covered


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> ``(r, g, b)`` in 0..255."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
