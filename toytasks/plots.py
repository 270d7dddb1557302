"""Plotting helpers for notebooks: the seed notebooks' plotly helpers redone in matplotlib
(`imshow`, `line`, `attention`), `over_training` for a table's columns against the step, and the
pieces the run figures share (`phase_lines`, `save_figure`). Every function returns its Figure.

The figures of a run (`toytasks plot`) are drawn by toytasks/analysis/figures.py and by each
measure (its `figures`).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .files import write_atomically


def imshow(tensor, title: str = "", xlabel: str = "", ylabel: str = "", x=None, y=None, facets=None,
           symmetric: bool = True, cmap: str = "RdBu", vmin=None, vmax=None, figsize=None):
    """A heatmap (rows down, columns across). Like the seed's `imshow`: red-blue centred on 0
    unless `symmetric=False`; `x` and `y` label the columns and rows. A 3-D tensor draws one panel
    per entry of its first dimension (the seed's `facet_col=0`) on one colour scale, titled by
    `facets`."""
    data = _numpy(tensor)
    panels = list(data) if data.ndim == 3 else [data]
    if data.ndim == 3:
        titles = list(facets) if facets is not None else [str(i) for i in range(len(panels))]
    else:
        titles = [title]
    if figsize is None:  # tall enough for a label on every row (e.g. the Fourier components)
        height = 4.5 if y is None else min(max(4.5, 0.12 * min(len(y), _MAX_TICKS) + 1.5), 11)
        figsize = (min(4.2 * len(panels), 18) if data.ndim == 3 else 7.5, height)
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False, sharey=True)
    if data.size == 0:
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
        axes[0, 0].set(title=title, xticks=[], yticks=[])
        return fig
    if symmetric and vmin is None and vmax is None:
        vmax = float(np.nanmax(np.abs(data), initial=0.0)) or 1.0  # all zero (or NaN): any scale
        vmin = -vmax
    for i, (ax, panel, panel_title) in enumerate(zip(axes[0], panels, titles)):
        image = ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set(title=panel_title, xlabel=xlabel, ylabel=ylabel if i == 0 else "")
        for axis, labels, n in ((ax.xaxis, x, panel.shape[1]), (ax.yaxis, y, panel.shape[0])):
            _tick_labels(axis, labels, n)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85)
    if data.ndim == 3 and title:
        fig.suptitle(title)
    return fig


def attention(pattern, tokens=None, titles=None, title: str = "Attention pattern"):
    """Attention patterns [head, query, key] (or one [query, key]) from 0 to 1, the tokens (ids or
    strings) on both axes: each row is where that query position looks."""
    labels = None if tokens is None else [str(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
    n_panels = pattern.shape[0] if pattern.ndim == 3 else 1
    return imshow(pattern, title=title, xlabel="key (source)", ylabel="query (destination)", x=labels,
                  y=labels, facets=titles, symmetric=False, cmap="Blues", vmin=0.0, vmax=1.0,
                  figsize=(min(5 * n_panels + 1, 18), 5))


def line(tensor, title: str = "", xlabel: str = "", ylabel: str = "", x=None, labels=None, logy: bool = False):
    """The seed's `line`: a 1-D tensor as one line, each row of a 2-D one as a line named by
    `labels`; `x` names the points (e.g. Fourier components)."""
    data = _numpy(tensor)
    rows = data[None] if data.ndim == 1 else data
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, row in enumerate(rows):
        ax.plot(row, label=None if labels is None else labels[i])
    if x is not None:
        _tick_labels(ax.xaxis, x, rows.shape[1])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, yscale="log" if logy else "linear")
    if labels is not None:
        ax.legend(fontsize=7)
    return fig


def over_training(table, columns, labels=None, title: str = "", ylabel: str = "", logy: bool = False,
                  marks: dict | None = None, ax=None, background=()):
    """Columns of a table (run.metrics, a run.map result) against `step`, each skipping its empty
    rows, with named steps (phases, an onset) as dashed lines; `background` columns are drawn thin
    and grey behind them, as one legend entry. Draws into `ax` when given."""
    fig, ax = plt.subplots(figsize=(9, 4.5)) if ax is None else (ax.figure, ax)
    for i, column in enumerate(background):
        rows = table.dropna(subset=[column])
        ax.plot(rows["step"], rows[column], color="lightgrey", linewidth=0.8, label="others" if i == 0 else None)
    for column, label in zip(columns, labels or columns):
        rows = table.dropna(subset=[column])
        ax.plot(rows["step"], rows[column], label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title, yscale="log" if logy else "linear")
    phase_lines(ax, marks or {})
    if len(columns) + bool(background) > 1:
        ax.legend(fontsize=7, ncol=1 + len(columns) // 12)
    return fig


_MAX_TICKS = 60


def _tick_labels(axis, labels, n: int) -> None:
    """Name every row or column when they fit, every k-th otherwise; whole numbers without names."""
    if labels is None:
        axis.set_major_locator(plt.MaxNLocator(nbins=8, integer=True))
        return
    every = max(1, -(-n // _MAX_TICKS))
    positions = list(range(0, n, every))
    names = [str(labels[i]) for i in positions]
    long = axis.axis_name == "x" and max(len(name) for name in names) > 3
    axis.set_ticks(positions, names, fontsize=7 if len(names) <= 30 else 6, rotation=90 if long else 0)


def _numpy(tensor) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().float().numpy()
    return np.asarray(tensor, dtype=float)


def phase_lines(ax, phase_steps: dict) -> None:
    """Dashed vertical lines at named steps (phase boundaries, an onset); None is skipped."""
    for name, step in phase_steps.items():
        if step is not None:
            ax.axvline(step, linestyle="--", color="grey", alpha=0.7)
            ax.annotate(name.replace("_", " "), (step, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="grey")


def save_figure(fig, path: Path) -> Path:
    """Write a figure as its file's suffix says (png), atomically (toytasks/files.py), and close it."""
    try:
        fig.tight_layout()
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
