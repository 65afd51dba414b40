"""The report's figures: matplotlib, rendered to inline SVG (no files, no external assets).

Every function returns an ``<svg>`` string sized by the page's CSS. Colours follow the
status (kept green, filtered amber, duplicate violet, ...) on every figure, so a reader
learns them once.
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")  # no display: the report is built on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STATUS_COLOURS = {
    "kept": "#2e9d5b",
    "filtered": "#e0a030",
    "duplicate": "#8a63d2",
    "download_failed": "#d9534f",
    "blocked": "#7f8c8d",
    "kept (CapFilt caption)": "#1f8fb4",  # kept with a synthetic caption: curate.report.stats.RESCUED
}
INK, GRID = "#333a44", "#e4e7eb"
STYLE = {
    "font.size": 9, "axes.edgecolor": GRID, "axes.labelcolor": INK, "xtick.color": INK, "ytick.color": INK,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": GRID,
    "axes.axisbelow": True, "legend.frameon": False, "svg.fonttype": "none",
}


# A document image's text: the document's own, or its synthetic caption.
SOURCE_COLOURS = {"original": "#3569c9", "synthetic": "#d9762b"}


def status_colour(status: str) -> str:
    """The colour of a status (or of a text source) on every figure and badge."""
    return STATUS_COLOURS.get(status) or SOURCE_COLOURS.get(status, "#5b8def")


def _svg(fig, name: str) -> str:
    """The figure as an inline <svg> element; ``name`` salts its ids so figures never share one."""
    buffer = io.StringIO()
    with plt.rc_context({"svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # Let CSS size the figure: drop the fixed width/height, keep the viewBox.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 role="img"', text, count=1)


def _figure(width: float = 5.6, height: float = 3.0):
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(True, color=GRID)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(GRID)
    ax.tick_params(colors=INK, labelsize=8)
    return fig, ax


def histogram_by_status(values: dict[str, np.ndarray], xlabel: str, name: str,
                        threshold: float | None = None, bins: np.ndarray | None = None) -> str:
    """Overlaid step histograms of one measure, one per status, on shared bins."""
    fig, ax = _figure()
    everything = np.concatenate([v for v in values.values() if len(v)]) if values else np.array([0.0])
    if bins is None:
        bins = np.histogram_bin_edges(everything, bins=40)
    for status, data in values.items():
        if len(data):
            ax.hist(data, bins=bins, histtype="stepfilled", alpha=0.35, color=status_colour(status))
            ax.hist(data, bins=bins, histtype="step", linewidth=1.4, color=status_colour(status),
                    label=f"{status} ({len(data):,})")
    if threshold is not None:
        ax.axvline(threshold, color=INK, linestyle="--", linewidth=1)
        ax.annotate(f"threshold {threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(4, -4), textcoords="offset points", va="top", fontsize=8, color=INK)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, loc="best")
    return _svg(fig, name)


def judges_map(points: dict[str, tuple[list, list]], labels: tuple[str, str], limits: dict[str, tuple], name: str) -> str:
    """One 2-D histogram per caption group of two judges' scores of the same captions
    (``points[group] = (a_scores, b_scores)``), log-scaled counts, with each judge's
    threshold in that group (``limits[group] = (t_a, t_b)``, None: accepts all) as dashed
    lines: the captions one judge accepts and the other rejects sit in the off quadrants."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(points), figsize=(5.6 * len(points) / 1.6, 3.2), squeeze=False)
    for ax, (group, (a, b)) in zip(axes[0], points.items()):
        from matplotlib.colors import LogNorm

        ax.hist2d(a, b, bins=40, cmap="Blues", norm=LogNorm(), cmin=1)
        t_a, t_b = limits.get(group, (None, None))
        if t_a is not None:
            ax.axvline(t_a, color=INK, linestyle="--", linewidth=1)
        if t_b is not None:
            ax.axhline(t_b, color=INK, linestyle="--", linewidth=1)
        ax.set_title(f"{group} ({len(a):,})", fontsize=9, color=INK)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.tick_params(colors=INK, labelsize=8)
    return _svg(fig, name)


def keep_fraction_curve(values: np.ndarray, xlabel: str, name: str, threshold: float | None = None,
                        higher_is_better: bool = True) -> str:
    """Fraction of ``values`` a threshold at each value keeps: at or above it, or at or below it
    when lower is better (the score's declaration): what a stricter or looser cut keeps."""
    fig, ax = _figure()
    data = np.sort(np.asarray(values, dtype=float))
    if len(data):
        grid = np.linspace(data[0], data[-1], 200)
        if higher_is_better:
            kept = 1.0 - np.searchsorted(data, grid, side="left") / len(data)
        else:
            kept = np.searchsorted(data, grid, side="right") / len(data)
        ax.plot(grid, kept, color="#3569c9", linewidth=1.8)
    if threshold is not None and len(data):
        fraction = float(np.mean(data >= threshold if higher_is_better else data <= threshold))
        ax.axvline(threshold, color=INK, linestyle="--", linewidth=1)
        ax.plot([threshold], [fraction], "o", color=INK, markersize=4)
        ax.annotate(f"{threshold:g} keeps {fraction:.0%}", (threshold, fraction), xytext=(6, 6),
                    textcoords="offset points", fontsize=8, color=INK)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel(f"threshold on {xlabel} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_ylabel("fraction kept")
    return _svg(fig, name)


def funnel(steps: list[tuple[str, int]], name: str) -> str:
    """Horizontal bars: rows left after each step, with the count and share of rows in."""
    fig, ax = _figure(7.2, 0.42 * len(steps) + 0.6)
    labels = [label for label, _ in steps]
    counts = [count for _, count in steps]
    total = max(counts[0], 1) if counts else 1
    colours = ["#3569c9"] * (len(steps) - 1) + [STATUS_COLOURS["kept"]]
    bars = ax.barh(range(len(steps)), counts, color=colours, height=0.62)
    for bar, count in zip(bars, counts):
        ax.annotate(f"{count:,}  ({count / total:.1%})", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8, color=INK)
    ax.set_yticks(range(len(steps)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.25)
    ax.grid(False)
    ax.spines["bottom"].set_visible(False)
    ax.set_xticks([])
    return _svg(fig, name)
