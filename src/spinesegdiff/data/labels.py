"""Label conventions: SPIDER instance codes and merged semantic masks to the paper's four classes.

Classes (the SpineSegDiff ``dataset.json``): 0 background, 1 spinal canal (SC), 2 vertebra (VB),
3 intervertebral disc (IVD). SPIDER instance codes (van der Graaf et al., Scientific Data 2024):

=============  =====================================================  ============
code           meaning                                                class
=============  =====================================================  ============
0              background                                             0
1-25           vertebra, counted from L5 = 1                          2
100            spinal canal                                           1
101-125        partially visible vertebra                             2 (option)
201-225        intervertebral disc, counted from L5/S1 = 201          3
=============  =====================================================  ============

A mask whose values all lie in {0, 1, 2, 3} is ambiguous (vertebrae 1-3 or merged classes). It is read as an
already-merged semantic mask unless it also holds SPIDER-only codes; :func:`detect_convention` decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from spinesegdiff.errors import InputError

BACKGROUND, SPINAL_CANAL, VERTEBRA, DISC = 0, 1, 2, 3
CLASS_NAMES: tuple[str, ...] = ("background", "spinal canal", "vertebra", "intervertebral disc")
STRUCTURE_NAMES: tuple[str, ...] = CLASS_NAMES[1:]
STRUCTURE_ABBREVIATIONS: tuple[str, ...] = ("SC", "VB", "IVD")
NUM_CLASSES = 4
NUM_STRUCTURES = 3

Convention = Literal["auto", "spider", "semantic"]


def _spider_lookup(partial_vertebrae_as_vertebra: bool) -> np.ndarray:
    """Table of length 256 mapping SPIDER codes to classes; -1 marks codes SPIDER does not define."""
    table = np.full(256, -1, dtype=np.int16)
    table[0] = BACKGROUND
    table[1:26] = VERTEBRA
    table[100] = SPINAL_CANAL
    table[101:126] = VERTEBRA if partial_vertebrae_as_vertebra else BACKGROUND
    table[201:226] = DISC
    return table


def detect_convention(codes: np.ndarray) -> Literal["spider", "semantic"]:
    """``semantic`` when every code is in {0, 1, 2, 3}, else ``spider``. ``codes`` are the unique values."""
    return "semantic" if np.all(np.isin(codes, (0, 1, 2, 3))) else "spider"


def to_classes(
    mask: np.ndarray,
    *,
    convention: Convention = "auto",
    partial_vertebrae_as_vertebra: bool = True,
    source: str | Path | None = None,
) -> np.ndarray:
    """Map a mask to the four classes.

    Args:
        mask: integer array of any shape holding SPIDER instance codes or semantic classes.
        convention: ``spider``, ``semantic`` or ``auto`` (see :func:`detect_convention`).
        partial_vertebrae_as_vertebra: count SPIDER codes 101-125 as vertebra (default, as the paper) or as
            background.
        source: the file the mask came from, named in error messages.

    Returns:
        ``uint8`` array of the same shape with values in {0, 1, 2, 3}.

    Raises:
        InputError: a code outside the convention (the message names the file and the codes).
    """
    if not np.issubdtype(mask.dtype, np.integer):
        if (
            np.issubdtype(mask.dtype, np.floating)
            and np.all(np.isfinite(mask))
            and np.all(mask == np.round(mask))
        ):
            mask = mask.astype(np.int64)
        else:
            raise InputError(source, f"mask holds non-integer values (dtype {mask.dtype})")
    codes = np.unique(mask)
    if convention == "auto":
        convention = detect_convention(codes)
    if convention == "semantic":
        unknown = codes[~np.isin(codes, (0, 1, 2, 3))]
        if unknown.size:
            raise InputError(
                source, f"unknown label code(s) {_format_codes(unknown)} in a semantic mask (0-3)"
            )
        return mask.astype(np.uint8)
    if convention != "spider":
        raise ValueError(f"convention must be 'auto', 'spider' or 'semantic', got {convention!r}")
    table = _spider_lookup(partial_vertebrae_as_vertebra)
    in_range = (codes >= 0) & (codes < table.size)
    known = np.zeros(codes.shape, dtype=bool)
    known[in_range] = table[codes[in_range]] >= 0
    if not np.all(known):
        raise InputError(source, f"unknown SPIDER label code(s) {_format_codes(codes[~known])}")
    return table[mask].astype(np.uint8)


def _format_codes(codes: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(c)) for c in codes[:limit])
    return shown + (f" and {codes.size - limit} more" if codes.size > limit else "")


def one_hot_structures(classes: np.ndarray) -> np.ndarray:
    """Three binary channels (SC, VB, IVD) from a class map.

    Args:
        classes: integer array ``(...)`` with values in {0, 1, 2, 3}.

    Returns:
        ``float32`` array ``(3, ...)`` with values in {0, 1}.
    """
    return np.stack([(classes == c) for c in (SPINAL_CANAL, VERTEBRA, DISC)]).astype(np.float32)
