"""Spine anatomy on a segmented sagittal slice: levels named from the sacrum up, measured in millimetres.

Pure numpy/scipy, above :mod:`spinesegdiff.data`: :mod:`~spinesegdiff.anatomy.sagittal` (the slice in mm),
:mod:`~spinesegdiff.anatomy.components` (pieces, the canal's front, the spine axis),
:mod:`~spinesegdiff.anatomy.instances` (split, order, name, doubts), :mod:`~spinesegdiff.anatomy.naming`
(level names, SPIDER codes), :mod:`~spinesegdiff.anatomy.measures` (heights, index, canal, signal, slip, with
their uncertainty) and :mod:`~spinesegdiff.anatomy.report` (the ``discs`` / ``vertebrae`` lists).
"""

from spinesegdiff.anatomy.instances import Level, SpineLevels, identify_levels
from spinesegdiff.anatomy.report import (
    LevelReport,
    draw_level_names,
    label_positions,
    level_table_html,
    measure_levels,
    scan_levels,
    spider_labels,
)
from spinesegdiff.anatomy.sagittal import SagittalSlice, scan_slice

__all__ = ["Level", "LevelReport", "SagittalSlice", "SpineLevels", "draw_level_names", "identify_levels",
           "label_positions", "level_table_html", "measure_levels", "scan_levels", "scan_slice", "spider_labels"]
