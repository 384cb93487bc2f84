"""``spinesegdiff review OUT``: draw every case's layers, then write the page, so a failed run changes nothing.

The layers of one build go into a new folder ``OUT/review/build-<time>-<random>/<case>/`` (see
:mod:`spinesegdiff.review.layers`); only when all are written is ``OUT/review.html`` (which links to that folder)
replaced, in one rename (:func:`~spinesegdiff.files.atomic_write_text`). Then the folders of earlier builds are
removed. A build that fails or is interrupted removes its own folder and leaves the previous page and its layers
as they were; a folder a killed build left behind is removed by the next build, as no page links to it.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.files import atomic_write_text
from spinesegdiff.review.cases import CaseRecord, most_doubtful_first, read_cases
from spinesegdiff.review.layers import CaseLayers, write_case_layers
from spinesegdiff.review.page import GENERATOR, PageCase, render_page
from spinesegdiff.review.volumes import read_case_volumes

PAGE_NAME = "review.html"
LAYER_ROOT = "review"
BUILD_PREFIX = "build-"
BUILD_NAME = re.compile(r"build-\d{8}T\d{6}-[a-z0-9_]{8}")
"""A build's layer folder: the prefix, the UTC time it started, and 8 random characters."""
PAGE_HEAD_BYTES = 4096
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


@dataclass(frozen=True)
class ReviewPage:
    """What :func:`build_review` wrote.

    Attributes:
        path: the page (``OUT/review.html``).
        cases: the cases, most doubtful first (:func:`~spinesegdiff.review.cases.most_doubtful_first`).
        measure: what they are ordered by (``quality score`` or ``mean uncertainty``).
        notes: JSON files of the folder left out, one line each.
        drawn: how many cases have picture layers.
        seconds: how long the build took.
    """

    path: Path
    cases: tuple[CaseRecord, ...]
    measure: str
    notes: tuple[str, ...]
    drawn: int
    seconds: float


def _is_our_page(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(PAGE_HEAD_BYTES)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}"'.encode() in head


def check_targets(out: Path) -> None:
    """Refuse to replace a ``review.html`` this command did not write, or to use a ``review`` that is no folder.

    Raises:
        InputError: naming the file.
    """
    page, root = out / PAGE_NAME, out / LAYER_ROOT
    if (page.exists() or page.is_symlink()) and (page.is_symlink() or not page.is_file() or not _is_our_page(page)):
        raise InputError(page, "is not a spinesegdiff review page and would be replaced: move it away")
    if (root.exists() or root.is_symlink()) and (root.is_symlink() or not root.is_dir()):
        raise InputError(root, "is in the way of the review page's layers (a folder is needed there): move it away")


def _folder_names(cases: list[CaseRecord]) -> dict[str, str]:
    """A layer folder name per case: its name, made unique where file systems ignore case."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for case in cases:
        name, count = case.case, 1
        while name.casefold() in taken:
            count += 1
            name = f"{case.case}~{count}"
        taken.add(name.casefold())
        names[case.case] = name
    return names


def _draw(case: CaseRecord, folder: Path) -> tuple[CaseLayers | None, tuple[str, ...]]:
    """The case's layers and flags; a case whose maps cannot be read gets a flag and no layers."""
    if case.failed or case.segmentation is None or case.uncertainty is None:
        return None, ()
    try:
        volumes = read_case_volumes(case)
        return write_case_layers(case, volumes, folder), volumes.flags
    except (SpineSegDiffError, ValueError, IndexError) as err:
        problem = getattr(err, "problem", None) or str(err)
        return None, (f"not drawn: {problem}",)


def _new_build(root: Path) -> Path:
    """A new, empty build folder in ``root`` (made with the permissions the umask gives, like the page)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    while True:
        build = root / f"{BUILD_PREFIX}{stamp}-{''.join(secrets.choice(_NAME_CHARACTERS) for _ in range(8))}"
        try:
            build.mkdir()
            return build
        except FileExistsError:
            continue


def _remove_other_builds(root: Path, keep: Path) -> None:
    for entry in root.iterdir():
        if BUILD_NAME.fullmatch(entry.name) and entry != keep and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def build_review(out: str | Path, *, workers: int = 1) -> ReviewPage:
    """Write ``OUT/review.html`` and its layers for the results in ``out``.

    Args:
        out: a results folder of ``spinesegdiff predict``.
        workers: cases drawn at the same time (threads).

    Raises:
        MissingInputError, InputError: no such folder, no results in it, a ``review.html`` that is not ours, or
            the page cannot be written (the previous page is then left as it was).
    """
    started = time.perf_counter()
    out = Path(out)
    collection = read_cases(out)
    ordered, measure = most_doubtful_first(collection.cases)
    check_targets(out)
    root = out / LAYER_ROOT
    try:
        root.mkdir(exist_ok=True)
        build = _new_build(root)
    except OSError as err:
        raise InputError(root, f"cannot write the review page's layers ({err.strerror or err})") from err
    try:
        names = _folder_names(ordered)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            drawn = list(pool.map(lambda case: _draw(case, build / names[case.case]), ordered))
        page_cases = [PageCase(record=case, layers=layers, flags=flags, rank=rank)
                      for rank, (case, (layers, flags)) in enumerate(zip(ordered, drawn, strict=True), start=1)]
        html = render_page(out, page_cases, measure=measure)
        atomic_write_text(out / PAGE_NAME, html)
    except OSError as err:
        shutil.rmtree(build, ignore_errors=True)
        raise InputError(out / PAGE_NAME, f"cannot write the review page ({err.strerror or err})") from err
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _remove_other_builds(root, keep=build)
    return ReviewPage(path=out / PAGE_NAME, cases=tuple(ordered), measure=measure, notes=collection.notes,
                      drawn=sum(layers is not None for layers, _ in drawn), seconds=time.perf_counter() - started)
