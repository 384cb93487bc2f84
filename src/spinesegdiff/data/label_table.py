"""The label table shipped with the package (``assets/labels.json``): each structure's value, name, colour, code.

One place for what a label value means outside this package: the Slicer segmentation writer
(:mod:`spinesegdiff.data.slicer`) takes segment names and colours from it. It agrees with
:data:`spinesegdiff.data.labels.STRUCTURE_NAMES` (a test checks). Torch-free.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from spinesegdiff.assets import ASSETS

LABEL_TABLE_FILE = ASSETS / "labels.json"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Structure:
    """One segmented structure: its label ``value``, ``name``, sRGB ``colour`` (``#rrggbb``) and SNOMED CT code."""

    value: int
    name: str
    abbreviation: str
    colour: str
    snomed_code: str
    snomed_meaning: str

    def __post_init__(self) -> None:
        if not 1 <= self.value <= 255:
            raise ValueError(f"structure {self.name!r}: label value must lie in 1..255, got {self.value}")
        if not _HEX.match(self.colour):
            raise ValueError(f"structure {self.name!r}: colour must read #rrggbb, got {self.colour!r}")
        if not self.snomed_code.isdigit():
            raise ValueError(f"structure {self.name!r}: SNOMED CT code must be digits, got {self.snomed_code!r}")

    @property
    def rgb(self) -> tuple[float, float, float]:
        """The colour as three floats in 0..1 (Slicer's ``Segment{i}_Color``)."""
        return tuple(int(self.colour[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelTable:
    """The background value and the structures, ordered by label value."""

    background: int
    structures: tuple[Structure, ...]

    def __post_init__(self) -> None:
        values = [s.value for s in self.structures]
        if values != sorted(set(values)) or self.background in values:
            raise ValueError(f"label values must be distinct, increasing and not the background, got {values}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    def by_value(self, value: int) -> Structure:
        for structure in self.structures:
            if structure.value == value:
                return structure
        raise KeyError(f"no structure has label value {value}")


def parse_label_table(data: dict) -> LabelTable:
    """A :class:`LabelTable` from the JSON form of ``assets/labels.json``.

    Raises:
        ValueError: a field is missing or out of range (the message names it).
    """
    try:
        structures = tuple(
            Structure(value=int(item["value"]), name=str(item["name"]), abbreviation=str(item["abbreviation"]),
                      colour=str(item["colour"]), snomed_code=str(item["snomed"]["code"]),
                      snomed_meaning=str(item["snomed"]["meaning"]))
            for item in data["structures"]
        )
        return LabelTable(background=int(data["background"]), structures=structures)
    except (KeyError, TypeError) as error:
        raise ValueError(f"label table lacks the field {error}") from None


def read_label_table(path: str | Path) -> LabelTable:
    """The label table in the JSON file ``path``."""
    return parse_label_table(json.loads(Path(path).read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def label_table() -> LabelTable:
    """The shipped label table (``assets/labels.json``), read once."""
    return read_label_table(LABEL_TABLE_FILE)
