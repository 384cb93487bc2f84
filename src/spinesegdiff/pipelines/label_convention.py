"""``predict --labels spider``: label maps in SPIDER's instance convention, for comparison with its benchmark.

SPIDER (van der Graaf et al., Scientific Data 2024) labels each vertebra and disc on its own: vertebrae 1-25
counted from L5 upwards (partly visible ones ``100 +``), the spinal canal 100, discs 201-225 from L5-S1 upwards;
the sacrum is not labelled. With ``--labels spider`` the label map holds these codes, levels named on each
segmented sagittal slice from the sacrum up (:mod:`spinesegdiff.anatomy`). A vertebra or disc whose level cannot
be named keeps one value per class instead, outside SPIDER's ranges: :data:`UNNAMED_VERTEBRA` and
:data:`UNNAMED_DISC`. The sacrum, as in SPIDER, is 0. The report lists the values present and their names
(``label_values``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spinesegdiff.anatomy import identify_levels, scan_slice
from spinesegdiff.anatomy.naming import SPIDER_CANAL, SPIDER_DISC_OFFSET, SPIDER_PARTIAL_OFFSET
from spinesegdiff.data.preprocess import SagittalGrid, slices_to_volume

UNNAMED_VERTEBRA = 99
"""A vertebra whose level could not be named (SPIDER's vertebrae are 1-25 and 101-125)."""
UNNAMED_DISC = 299
"""A disc whose level could not be named (SPIDER's discs are 201-225)."""


def spider_label_map(labels_zyx: np.ndarray, grid: SagittalGrid, indices: Sequence[int]) -> np.ndarray:
    """SPIDER instance codes on the scan's grid: ``(z, y, x)`` ``uint16``, 0 where nothing (or the sacrum) is."""
    views = []
    for index in indices:
        scan = scan_slice(labels_zyx, grid, index)
        levels = identify_levels(scan)
        codes = levels.spider_map(scan.labels)
        for level in levels.levels:
            if level.rank is None:
                codes[levels.mask(level)] = UNNAMED_VERTEBRA if level.kind == "vertebra" else UNNAMED_DISC
        views.append(codes.astype(np.uint16))
    return slices_to_volume(np.stack(views), list(indices), grid).astype(np.uint16)


def spider_value_names(codes: np.ndarray) -> dict[str, str]:
    """The name of every value present in a SPIDER-convention map (``{"1": "L5", "201": "L5-S1", ...}``)."""
    from spinesegdiff.anatomy.naming import disc_name, vertebra_name

    names: dict[str, str] = {}
    for value in (int(v) for v in np.unique(codes) if v):
        if value == SPIDER_CANAL:
            names[str(value)] = "spinal canal"
        elif value == UNNAMED_VERTEBRA:
            names[str(value)] = "vertebra (level not named)"
        elif value == UNNAMED_DISC:
            names[str(value)] = "intervertebral disc (level not named)"
        elif value > SPIDER_DISC_OFFSET:
            names[str(value)] = disc_name(value - SPIDER_DISC_OFFSET)
        elif value > SPIDER_PARTIAL_OFFSET:
            names[str(value)] = f"{vertebra_name(value - SPIDER_PARTIAL_OFFSET)} (partly visible)"
        else:
            names[str(value)] = vertebra_name(value)
    return names
