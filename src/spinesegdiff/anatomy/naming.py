"""Level names counted from the sacrum up, and SPIDER's instance codes for them.

A level's *rank* counts from the sacrum: vertebra S1 is rank 0, L5 rank 1, L4 rank 2, ..., L1 rank 5, T12
rank 6; the disc below vertebra rank ``k`` has rank ``k`` (L5-S1 is disc rank 1, L4-L5 rank 2), which is also
SPIDER's ``IVD label`` in ``radiological_gradings.csv`` and its disc code minus 200.
"""

from __future__ import annotations

VERTEBRA_NAMES: tuple[str, ...] = (
    "S1", "L5", "L4", "L3", "L2", "L1", *(f"T{k}" for k in range(12, 0, -1)), *(f"C{k}" for k in range(7, 0, -1))
)
"""Vertebra names by rank (index): S1, L5 ... L1, T12 ... T1, C7 ... C1."""

SPIDER_CANAL = 100
SPIDER_PARTIAL_OFFSET = 100
SPIDER_DISC_OFFSET = 200
SPIDER_MAX_RANK = 25


def vertebra_name(rank: int) -> str:
    """``S1`` for rank 0, ``L5`` for 1, ... (``rank`` beyond C1 is refused)."""
    if not 0 <= rank < len(VERTEBRA_NAMES):
        raise ValueError(f"vertebra rank {rank} is outside 0..{len(VERTEBRA_NAMES) - 1} (S1..C1)")
    return VERTEBRA_NAMES[rank]


def disc_name(rank: int) -> str:
    """The disc below vertebra ``rank``: ``L5-S1`` for rank 1, ``L4-L5`` for 2, ..."""
    if rank < 1:
        raise ValueError(f"disc rank {rank} must be at least 1 (L5-S1)")
    return f"{vertebra_name(rank)}-{vertebra_name(rank - 1)}"


def spider_code(kind: str, rank: int, *, partial: bool = False) -> int:
    """SPIDER's instance code of a named level; 0 for the sacrum, which SPIDER does not label.

    Vertebrae are counted from L5 = 1 (``rank``), partially visible ones get ``100 + rank``; discs are
    ``200 + rank`` (L5-S1 = 201). Ranks above 25 have no SPIDER code (0).
    """
    if kind == "disc":
        return SPIDER_DISC_OFFSET + rank if 1 <= rank <= SPIDER_MAX_RANK else 0
    if kind != "vertebra":
        raise ValueError(f"kind must be 'vertebra' or 'disc', got {kind!r}")
    if not 1 <= rank <= SPIDER_MAX_RANK:
        return 0
    return rank + (SPIDER_PARTIAL_OFFSET if partial else 0)
