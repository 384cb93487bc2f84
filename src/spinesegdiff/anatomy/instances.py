"""Vertebrae and discs of a segmented sagittal slice as separate instances, ordered and named from the sacrum up.

The semantic masks (SPIDER's merged classes, and what the models learn from them) label the *whole* vertebra,
posterior elements included, and leave the sacrum unlabelled. So:

1. a vertebral **body** is the vertebra in front of the spinal canal (its nearest canal pixel lies behind it,
   so a tilted canal is followed; every canal piece of at least :data:`CANAL_PIECE_MM2` counts, so a canal
   interrupted at a stenosis still bounds the bodies beside its lower piece); each body piece of at least
   :data:`MIN_BODY_MM2` (or a piece cut by the image edge) is one vertebra;
2. the bodies, top to bottom, make the spine's axis (:class:`~spinesegdiff.anatomy.components.SpineAxis`);
   disc pieces are placed on it, and pieces of one gap between bodies closer than :data:`SAME_DISC_MM`
   along it are one disc (a herniated or split disc stays one level);
3. naming walks the alternating sequence from the bottom: a lowest *disc* is L5-S1 (the sacrum is
   unlabelled); a lowest *vertebra* with no disc beneath it is the sacrum (S1) when clearly larger than the
   other bodies, else L5 whose L5-S1 disc was not found (a doubt);
4. every other vertebra pixel (posterior elements, fragments) joins the body it lies nearest to, every disc
   fragment the nearest disc: the instances' union is exactly the semantic class mask.

Doubts are said, not guessed over (:attr:`SpineLevels.doubtful` and :attr:`SpineLevels.reasons`): a missing
disc or body in the alternation, a lowest structure cut by the image's lower edge, a lowest vertebra that does
not look like a sacrum, a small lowest disc (a possible rudimentary disc of a transitional vertebra), no canal.
A top vertebra or disc cut by the image edge is named and marked ``partial``, which is no doubt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from spinesegdiff.anatomy.components import Component, SpineAxis, anterior_of_canal, components, nearest_label
from spinesegdiff.anatomy.naming import disc_name, spider_code, vertebra_name
from spinesegdiff.anatomy.sagittal import SagittalSlice
from spinesegdiff.data.labels import SPINAL_CANAL

MIN_BODY_MM2 = 100.0
"""A whole vertebral body on a mid-sagittal slice covers about 400-1500 mm^2; smaller pieces are fragments."""
MIN_PARTIAL_MM2 = 15.0
"""A piece cut by the image edge counts as a partly visible level from this area on."""
MIN_DISC_MM2 = 15.0
"""Disc pieces smaller than this are fragments (merged into the nearest disc)."""
SAME_DISC_MM = 10.0
"""Disc pieces of one gap closer than this along the spine axis are one disc (a disc is 5-15 mm high)."""
SACRUM_AREA_RATIO = 1.5
"""A lowest vertebra without a disc beneath is sacrum-like when this much larger than the median body."""
CANAL_PIECE_MM2 = 50.0
"""Every canal piece of at least this area (and the largest one) decides what is in front of the canal: a
segmentation often interrupts the thecal sac at a stenosis, and its lower segment still bounds the bodies beside
it; smaller pieces are stray pixels."""
RUDIMENTARY_DISC_RATIO = 0.35
"""A lowest disc smaller than this share of the median disc may be the rudimentary disc of a transitional
vertebra (a lumbarised S1): the count is then doubtful."""


@dataclass(frozen=True)
class Level:
    """One vertebra or disc instance.

    Attributes:
        kind: ``vertebra`` or ``disc``.
        label: its value in :attr:`SpineLevels.instance_map` (1, 2, ... top to bottom).
        rank: counted from the sacrum (:mod:`spinesegdiff.anatomy.naming`); ``None`` when not nameable.
        name: ``L4``, ``L4-L5``, ...; ``None`` when not nameable.
        partial: cut by the image edge (or, for the end vertebrae, much smaller than the others).
        centroid_mm: ``(row_mm, col_mm)`` of its main piece (the body, for a vertebra).
        area_mm2: area of its main piece(s).
    """

    kind: str
    label: int
    rank: int | None
    name: str | None
    partial: bool
    centroid_mm: tuple[float, float]
    area_mm2: float


@dataclass(frozen=True)
class SpineLevels:
    """The instances of a slice, named.

    Attributes:
        instance_map: ``(rows, cols)`` int32: 0 background and canal, else the :attr:`Level.label`.
        anterior: ``(rows, cols)`` bool: pixels in front of the spinal canal (a vertebra's body is its part
            there; all ``True`` when there is no canal).
        levels: every instance, top to bottom.
        named_from: ``lowest disc`` (L5-S1 above an unlabelled sacrum), ``sacrum`` (a labelled lowest vertebra,
            larger than the others), ``lowest vertebra`` (taken as L5, its L5-S1 disc not found: doubtful), or
            ``none``.
        doubtful: whether the count may be wrong; ``reasons`` say why (empty when not doubtful).
    """

    instance_map: np.ndarray
    anterior: np.ndarray
    levels: tuple[Level, ...]
    named_from: str
    doubtful: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def vertebrae(self) -> tuple[Level, ...]:
        return tuple(level for level in self.levels if level.kind == "vertebra")

    @property
    def discs(self) -> tuple[Level, ...]:
        return tuple(level for level in self.levels if level.kind == "disc")

    def mask(self, level: Level) -> np.ndarray:
        return self.instance_map == level.label

    def body(self, level: Level) -> np.ndarray:
        """The vertebral body of a vertebra: its pixels in front of the canal."""
        return self.mask(level) & self.anterior

    def by_rank(self, kind: str, rank: int) -> Level | None:
        return next((lv for lv in self.levels if lv.kind == kind and lv.rank == rank), None)

    def spider_map(self, labels: np.ndarray) -> np.ndarray:
        """SPIDER-style instance codes of the slice (``labels`` its semantic classes): canal 100, vertebrae from
        L5 = 1 (partly visible ``100 +``), discs from L5-S1 = 201. The sacrum (S1), which SPIDER does not
        label, and instances that could not be named become 0."""
        codes = np.zeros(self.instance_map.shape, dtype=np.uint16)
        codes[labels == SPINAL_CANAL] = 100
        for level in self.levels:
            if level.rank is not None:
                codes[self.mask(level)] = spider_code(level.kind, level.rank, partial=level.partial)
        return codes


@dataclass
class _Element:
    """A body or a disc (one or more pieces) on the spine axis, before naming."""

    kind: str
    pieces: list[Component]
    position: float
    partial: bool = False

    @property
    def area_mm2(self) -> float:
        return sum(p.area_mm2 for p in self.pieces)

    @property
    def centroid_mm(self) -> np.ndarray:
        weights = np.array([p.area_mm2 for p in self.pieces])
        return np.average([p.centroid_mm for p in self.pieces], axis=0, weights=weights)


def _bodies(scan: SagittalSlice, anterior: np.ndarray) -> list[_Element]:
    """Vertebral bodies (pieces in front of the canal large enough, or cut by the edge), unordered."""
    found = []
    for piece in components(scan.vertebra & anterior, scan):
        if piece.area_mm2 >= MIN_BODY_MM2 or (piece.touches_border and piece.area_mm2 >= MIN_PARTIAL_MM2):
            found.append(_Element("vertebra", [piece], 0.0, partial=piece.touches_border))
    return found


def _discs(scan: SagittalSlice, axis: SpineAxis, body_positions: np.ndarray) -> list[_Element]:
    """Disc pieces grouped per gap between bodies, then by distance along the axis; fragments dropped."""
    groups: dict[int, list[tuple[float, Component]]] = {}
    for piece in components(scan.disc, scan):
        position = axis.position(piece.centroid_mm)
        groups.setdefault(int(np.searchsorted(body_positions, position)), []).append((position, piece))
    discs = []
    for members in groups.values():
        members.sort(key=lambda m: m[0])
        clusters: list[list[tuple[float, Component]]] = []
        for position, piece in members:
            if clusters and position - clusters[-1][-1][0] < SAME_DISC_MM:
                clusters[-1].append((position, piece))
            else:
                clusters.append([(position, piece)])
        for cluster in clusters:
            pieces = [piece for _, piece in cluster]
            element = _Element("disc", pieces, 0.0, partial=any(p.touches_border for p in pieces))
            if element.area_mm2 >= MIN_DISC_MM2 or element.partial:
                element.position = axis.position(element.centroid_mm)
                discs.append(element)
    return discs


def _mark_small_end_bodies(bodies: list[_Element]) -> None:
    """The top and bottom bodies much smaller than the median are partly visible."""
    full = [b.area_mm2 for b in bodies if not b.partial]
    if len(full) < 3:
        return
    median = float(np.median(full))
    for end in (bodies[0], bodies[-1]):
        if end.area_mm2 < 0.4 * median:
            end.partial = True


def _bottom(elements: list[_Element]) -> tuple[str, int, list[str]]:
    """Where naming starts: ``(named_from, position of the lowest element, doubts)``.

    Positions run S1 = 0, L5-S1 = 1, L5 = 2, ... (see :func:`_name`). A lowest disc is L5-S1. A lowest vertebra
    with no disc beneath is the sacrum (S1) when it is clearly larger than the other bodies; otherwise it is
    taken as L5 whose L5-S1 disc was not found (the masks the models learn from never label the sacrum), which
    is a doubt.
    """
    lowest = elements[-1]
    same_kind = [e.area_mm2 for e in elements[:-1] if e.kind == lowest.kind and not e.partial]
    median = float(np.median(same_kind)) if same_kind else None
    cut = any(p.touches_bottom for p in lowest.pieces)
    if lowest.kind == "disc":
        doubts = []
        if cut:
            doubts.append("the lowest disc is cut by the image's lower edge: the sacrum may be out of view")
        if median and lowest.area_mm2 < RUDIMENTARY_DISC_RATIO * median:
            doubts.append(f"the lowest disc is small ({lowest.area_mm2:.0f} mm^2, median {median:.0f}): it may "
                          "be the rudimentary disc of a transitional vertebra")
        return "lowest disc", 1, doubts
    if median is not None and lowest.area_mm2 >= SACRUM_AREA_RATIO * median:
        return "sacrum", 0, []
    where = ", is cut by the image's lower edge," if cut else ""
    return "lowest vertebra", 2, [f"the lowest vertebra has no disc beneath{where} and is no larger than a lumbar "
                                  "body: taken as L5 with its L5-S1 disc not found (it may instead be the sacrum)"]


def _name(elements: list[_Element], start: int) -> tuple[list[int | None], list[str]]:
    """Ranks bottom-up along the alternating sequence; a break in the alternation skips a rank and is a doubt.

    Position ``p`` in the sequence S1, L5-S1, L5, L4-L5, ...: even ``p`` is vertebra rank ``p / 2``, odd ``p``
    disc rank ``(p + 1) / 2``; the lowest element is at ``start``.
    """
    ranks: list[int | None] = [None] * len(elements)
    doubts = []
    p = start
    for k in range(len(elements) - 1, -1, -1):
        element = elements[k]
        expected = "vertebra" if p % 2 == 0 else "disc"
        if element.kind != expected:
            plural = "discs" if element.kind == "disc" else "vertebrae"
            doubts.append(f"no {expected} between two {plural} near {element.centroid_mm[0]:.0f} mm from the "
                          f"top: one was counted there (a missed {expected}, a fused or a transitional level)")
            p += 1
        rank = p // 2 if element.kind == "vertebra" else (p + 1) // 2
        ranks[k] = rank if rank < 25 else None
        p += 1
    return ranks, doubts


def _attach(instance_map: np.ndarray, pieces: np.ndarray, targets: list[int], scan: SagittalSlice) -> None:
    """Give each connected piece of ``pieces`` the target instance nearest to its closest tenth (in place)."""
    if not targets or not pieces.any():
        return
    candidates = np.where(np.isin(instance_map, targets), instance_map, 0)
    nearest, distance = nearest_label(candidates, scan)
    labelled, _ = ndimage.label(pieces)
    for k, box in enumerate(ndimage.find_objects(labelled), start=1):
        inside = labelled[box] == k
        near = distance[box][inside] <= np.quantile(distance[box][inside], 0.1)
        instance_map[box][inside] = np.bincount(nearest[box][inside][near]).argmax()


def _build(scan: SagittalSlice, elements: list[_Element],
           ranks: list[int | None]) -> tuple[np.ndarray, tuple[Level, ...]]:
    """The instance map and levels: each element's pieces, then every other class pixel attached."""
    instance_map = np.zeros(scan.labels.shape, dtype=np.int32)
    levels = []
    for label, (element, rank) in enumerate(zip(elements, ranks, strict=True), start=1):
        for piece in element.pieces:
            piece.paint(instance_map, label)
        name = None if rank is None else (vertebra_name(rank) if element.kind == "vertebra" else disc_name(rank))
        centroid = element.centroid_mm
        levels.append(Level(kind=element.kind, label=label, rank=rank, name=name, partial=element.partial,
                            centroid_mm=(float(centroid[0]), float(centroid[1])), area_mm2=element.area_mm2))
    for kind, mask in (("vertebra", scan.vertebra), ("disc", scan.disc)):
        targets = [lv.label for lv in levels if lv.kind == kind]
        left = mask & (instance_map == 0)
        if not targets and left.any():  # nothing nameable of this kind: one unnamed instance keeps the union
            label = len(levels) + 1
            instance_map[left] = label
            centroid = scan.points_mm(left).mean(axis=0)
            levels.append(Level(kind=kind, label=label, rank=None, name=None, partial=False,
                                centroid_mm=(float(centroid[0]), float(centroid[1])),
                                area_mm2=float(left.sum() * scan.pixel_area_mm2)))
        _attach(instance_map, left, targets, scan)
    return instance_map, tuple(levels)


def _spine_axis(scan: SagittalSlice, bodies: list[_Element]) -> SpineAxis:
    """The axis through the bodies' centroids; without bodies, a vertical line through the spine's pixels."""
    if bodies:
        return SpineAxis(np.array([b.pieces[0].centroid_mm for b in bodies]))
    spine = scan.disc | scan.vertebra
    return SpineAxis(scan.points_mm(spine).mean(axis=0, keepdims=True) if spine.any() else np.zeros((1, 2)))


def anterior_of_canal_pieces(scan: SagittalSlice, min_piece_mm2: float | None = CANAL_PIECE_MM2) -> np.ndarray | None:
    """Pixels in front of the spinal canal: the nearest pixel of the canal's pieces of at least
    ``min_piece_mm2`` (and of its largest piece) lies behind them (``None``: the largest piece only);
    ``None`` when there is no canal (:func:`~spinesegdiff.anatomy.components.anterior_of_canal`)."""
    pixels = None if min_piece_mm2 is None else min_piece_mm2 / scan.pixel_area_mm2
    return anterior_of_canal(scan.canal, pixels)


def identify_levels(scan: SagittalSlice) -> SpineLevels:
    """Split the slice's vertebrae and discs into instances and name them from the sacrum up.

    Never raises on an odd segmentation: what cannot be named has ``rank`` ``None`` and the result is
    ``doubtful`` with its reasons.
    """
    anterior = anterior_of_canal_pieces(scan, CANAL_PIECE_MM2)
    doubts = []
    if anterior is None:
        anterior = np.ones(scan.labels.shape, dtype=bool)
        doubts.append("no spinal canal: vertebral bodies cannot be told from posterior elements")
    bodies = sorted(_bodies(scan, anterior), key=lambda b: b.pieces[0].centroid_mm[0])
    axis = _spine_axis(scan, bodies)
    for element in bodies:
        element.position = axis.position(element.pieces[0].centroid_mm)
    _mark_small_end_bodies(bodies)
    discs = _discs(scan, axis, np.array([b.position for b in bodies]))
    elements = sorted(bodies + discs, key=lambda e: e.position)
    if len(bodies) < 2 or not elements:
        doubts.append(f"only {len(bodies)} vertebral bodies found: too few to name levels")
        ranks: list[int | None] = [None] * len(elements)
        named_from = "none"
    else:
        named_from, start, bottom_doubts = _bottom(elements)
        ranks, walk_doubts = _name(elements, start)
        doubts += bottom_doubts + walk_doubts
    instance_map, levels = _build(scan, elements, ranks)
    return SpineLevels(instance_map=instance_map, anterior=anterior, levels=levels, named_from=named_from,
                       doubtful=bool(doubts), reasons=tuple(doubts))
