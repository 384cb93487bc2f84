"""Report figures: Dice per system, pathology box plots (paper Fig. 2), qualitative cases (paper Fig. 3), and
uncertainty against Dice. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.files import atomic_write

COLOURS = ["#00000000", "#f6c445", "#4fa3e0", "#e8575a"]


def _figure(**options):
    """A figure of its own, drawn by the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    """Lay the figure out and write it as a PNG through :func:`~spinesegdiff.files.atomic_write`."""
    figure.tight_layout()
    return atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))


def dice_boxplots(rows: list[dict], systems: list[str], path: Path) -> Path:
    """One panel per structure, one box per system (per-case Dice)."""
    figure = _figure(figsize=(4 + 1.2 * len(systems) * 1.5, 4))
    axes = figure.subplots(1, 3, sharey=True)
    for axis, structure in zip(axes, STRUCTURE_ABBREVIATIONS, strict=True):
        data = [[r[f"dice_{structure}"] for r in rows if r["system"] == s] for s in systems]
        axis.boxplot(data, showmeans=True)
        axis.set_xticks(range(1, len(systems) + 1), systems, rotation=35, ha="right", fontsize=8)
        axis.set_title(structure)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice (held-out central slices)")
    return _save(figure, path)


def pathology_boxplots(per_patient: dict[str, dict[str, float]], flags: dict[str, dict[str, bool]],
                       tests: list[dict], path: Path) -> Path:
    """Paper Fig. 2: per structure, per pathology, patient Dice without (left) and with (right) it.

    Args:
        per_patient: ``{structure: {patient: mean Dice}}``.
        flags: ``{patient: {pathology: present}}``.
        tests: :func:`~spinesegdiff.evaluation.pathology.pathology_tests` rows (for the q-values shown).
    """
    pathologies = list(next(iter(flags.values()))) if flags else []
    q_of = {(t["pathology"], t["structure"]): t["q_bh"] for t in tests}
    figure = _figure(figsize=(max(8, 1.3 * len(pathologies)), 9))
    axes = figure.subplots(3, 1, sharex=True)
    for axis, structure in zip(axes, STRUCTURE_ABBREVIATIONS, strict=True):
        values = per_patient[structure]
        positions, data, colours = [], [], []
        for k, pathology in enumerate(pathologies):
            absent = [v for p, v in values.items() if p in flags and not flags[p][pathology]]
            present = [v for p, v in values.items() if p in flags and flags[p][pathology]]
            positions += [3 * k, 3 * k + 1]
            data += [absent or [np.nan], present or [np.nan]]
            colours += ["#9ecae1", "#fc9272"]
            q = q_of.get((pathology, structure), float("nan"))
            axis.text(3 * k + 0.5, 1.005, "q=n/a" if np.isnan(q) else f"q={q:.2f}", ha="center", fontsize=7,
                      transform=axis.get_xaxis_transform())
        boxes = axis.boxplot(data, positions=positions, widths=0.8, patch_artist=True)
        for patch, colour in zip(boxes["boxes"], colours, strict=True):
            patch.set_facecolor(colour)
        axis.set_ylabel(f"{structure} Dice")
        axis.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks([3 * k + 0.5 for k in range(len(pathologies))],
                        [p.replace("_", " ") for p in pathologies], rotation=25, ha="right")
    figure.suptitle("Dice per patient without (blue) and with (red) each pathology; q: Benjamini-Hochberg")
    return _save(figure, path)


def qualitative_cases(images: dict[str, np.ndarray], truth: dict[str, np.ndarray],
                      predictions: dict[str, dict[str, np.ndarray]], uncertainty: dict[str, np.ndarray],
                      cases: list[str], titles: dict[str, str], path: Path) -> Path:
    """Paper Fig. 3: per case, the image, the ground truth, each system's mask, and the uncertainty heatmap.

    Args:
        images, truth: per case, ``(H, W)`` arrays; ``predictions``: per system, per case label maps;
        uncertainty: per case, the primary system's heatmap; ``titles``: per case, a row label.
    """
    from matplotlib.colors import ListedColormap

    systems = list(predictions)
    columns = 3 + len(systems)
    figure = _figure(figsize=(2.2 * columns, 2.4 * len(cases)))
    axes = figure.subplots(len(cases), columns, squeeze=False)
    cmap = ListedColormap(COLOURS[1:])
    for r, case in enumerate(cases):
        panels = [("image", None), ("ground truth", truth[case])]
        panels += [(s, predictions[s][case]) for s in systems]
        for c, (title, labels) in enumerate(panels):
            axis = axes[r, c]
            axis.imshow(images[case], cmap="gray")
            if labels is not None:
                axis.imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=1, vmax=3, alpha=0.5,
                            interpolation="nearest")
            axis.set_title(title if r == 0 else "", fontsize=8)
            axis.set_axis_off()
        axis = axes[r, -1]
        axis.imshow(images[case], cmap="gray")
        axis.imshow(uncertainty[case], cmap="magma", vmin=0, vmax=1, alpha=0.7)
        axis.set_title(f"uncertainty ({systems[0]})" if r == 0 else "", fontsize=8)
        axis.set_axis_off()
        axes[r, 0].text(-0.05, 0.5, titles.get(case, case), rotation=90, va="center", ha="right", fontsize=8,
                        transform=axes[r, 0].transAxes)
    return _save(figure, path)


def uncertainty_vs_dice(rows: list[dict], system: str, path: Path) -> tuple[Path, float, float]:
    """Scatter of a case's mean uncertainty against its mDice; returns the path, Pearson r and Spearman rho."""
    from scipy import stats

    chosen = [r for r in rows if r["system"] == system]
    x = np.asarray([r["mean_uncertainty"] for r in chosen])
    y = np.asarray([r["mDice"] for r in chosen])
    pearson = float(stats.pearsonr(x, y)[0]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")
    spearman = float(stats.spearmanr(x, y)[0]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")
    figure = _figure(figsize=(4.5, 3.6))
    axis = figure.subplots()
    axis.scatter(x, y, s=18)
    axis.set_xlabel("mean uncertainty of the slice")
    axis.set_ylabel("mDice")
    axis.set_title(f"{system}: Pearson r = {pearson:.2f}, Spearman rho = {spearman:.2f}", fontsize=9)
    axis.grid(alpha=0.3)
    return _save(figure, path), pearson, spearman
