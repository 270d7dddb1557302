"""Matplotlib figures of runs: `toytasks plot RUN_DIR` writes them to RUN_DIR/plots/, and the
notebooks draw them inline, along with the seed notebooks' plotly helpers redone in matplotlib
(`imshow`, `line`, `attention`, and `over_training` for a table's columns against the step).
Every function returns its Figure.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .measures.grokking import PHASES
from .measures.heads import HEADS_SUMMARY

PLOTS_DIR = "plots"


def plot_run(run) -> list[Path]:
    out = run.path / PLOTS_DIR
    out.mkdir(exist_ok=True)
    metrics = run.metrics
    written = [_save(loss_curves(metrics, phases(run)), out / "loss.png")]
    if "fourier/restricted_loss" in metrics.columns:
        written.append(_save(restricted_excluded(metrics, phases(run)), out / "restricted_excluded_loss.png"))
    if run.task.name == "modular_addition":
        written.append(_save(embedding_fourier_norms(run), out / "embed_fourier_norms.png"))
    if any(c.startswith("heads/induction/") for c in metrics.columns):
        written.append(_save(head_scores(metrics, _summary(run, HEADS_SUMMARY)), out / "head_scores.png"))
    if run.task.name == "previous_token" and "pos_loss/p1" in metrics.columns:
        written.append(_save(loss_by_position(metrics), out / "loss_by_position.png"))
    if "brackets/acc/all" in metrics.columns:
        written.append(_save(brackets_accuracy(metrics), out / "brackets_accuracy.png"))
    return written


def brackets_accuracy(metrics):
    """Test error (1 - accuracy) of a bracket classifier over training, by kind, length and depth.
    The error, on a log-like scale: past 99% accuracy the differences between groups are in it."""
    panels = (("kind", ("all", "balanced", "total", "negative", "both", "near_miss")),
              ("length", sorted(c[13:] for c in metrics.columns if c.startswith("brackets/acc/len_"))),
              ("nesting depth", sorted((c[13:] for c in metrics.columns if c.startswith("brackets/acc/depth_")),
                                       key=lambda g: int(g[6:].split("-")[0].rstrip("+")))))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, (title, groups) in zip(axes, panels):
        for group in groups:
            column = f"brackets/acc/{group}"
            if column in metrics.columns:
                rows = metrics.dropna(subset=[column])
                ax.plot(rows["step"], 1 - rows[column], marker=".", label=group.replace("_", " "))
        ax.set(xlabel="step", title=f"Test error by {title}", ylim=(0, 1.05))
        ax.set_yscale("symlog", linthresh=1e-3)  # zero error stays on the plot
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("1 - accuracy")
    return fig


def head_scores(metrics, summary: dict):
    """Each head's previous-token, duplicate-token and induction score over training."""
    kinds = ("prev_token", "duplicate_token", "induction")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, kind in zip(axes, kinds):
        columns = sorted(c for c in metrics.columns if c.startswith(f"heads/{kind}/"))
        for column in columns:
            rows = metrics.dropna(subset=[column])
            ax.plot(rows["step"], rows[column], label=column.rsplit("/", 1)[1])
        ax.set(xlabel="step", title=f"{kind.replace('_', '-')} score", ylim=(-0.02, 1.02))
        if summary.get("induction_onset_step") is not None:
            _phase_lines(ax, {"induction onset": summary["induction_onset_step"]})
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("score (share of attention)")
    return fig


def loss_by_position(metrics):
    """Loss at each position at a few evaluation steps (early positions are the hard ones)."""
    columns = sorted((c for c in metrics.columns if c.startswith("pos_loss/p")), key=lambda c: int(c[10:]))
    rows = metrics.dropna(subset=columns)
    picks = rows.iloc[sorted({round(i * (len(rows) - 1) / 5) for i in range(6)})]
    fig, ax = plt.subplots(figsize=(9, 5))
    positions = [int(c[10:]) for c in columns]
    for _, row in picks.iterrows():
        ax.plot(positions, row[columns].to_numpy(dtype=float), marker=".", label=f"step {int(row['step'])}")
    ax.set(yscale="log", xlabel="position", ylabel="loss", title="Loss by position")
    ax.legend()
    return fig


def phases(run) -> dict:
    return _summary(run, PHASES)


def _summary(run, name: str) -> dict:
    path = run.path / name
    return json.loads(path.read_text()) if path.exists() else {}


def loss_curves(metrics, phase_steps: dict):
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ("train", "val"):
        if f"{name}/loss" not in metrics.columns:
            continue
        rows = metrics.dropna(subset=[f"{name}/loss"])
        label = "test" if name == "val" else name
        loss_ax.plot(rows["step"], rows[f"{name}/loss"], label=label)
        acc_ax.plot(rows["step"], rows[f"{name}/acc"], label=label)
    for column in sorted(c for c in metrics.columns if c.startswith("val/loss/")):  # e.g. induction's groups
        rows = metrics.dropna(subset=[column])
        loss_ax.plot(rows["step"], rows[column], ":", label=f"test, {column.rsplit('/', 1)[1]}")
    loss_ax.set(yscale="log", xlabel="step", ylabel="loss", title="Loss")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(-0.02, 1.02))
    for ax in (loss_ax, acc_ax):
        _phase_lines(ax, phase_steps)
    loss_ax.legend(loc="lower left")
    acc_ax.legend(loc="lower right")
    return fig


def restricted_excluded(metrics, phase_steps: dict):
    """The seed's "Excluded and Restricted Loss Curve" (log y), with the phase boundaries."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for column, label in (("train/loss", "train"), ("val/loss", "test")):
        rows = metrics.dropna(subset=[column])
        ax.plot(rows["step"], rows[column], label=label, linewidth=1.2)
    for column, label, style in (
        ("fourier/excluded_loss_final_freqs", "excluded (final key freqs)", "-"),
        ("fourier/restricted_loss_final_freqs", "restricted (final key freqs)", "-"),
        ("fourier/excluded_loss", "excluded (live key freqs)", ":"),
        ("fourier/restricted_loss", "restricted (live key freqs)", ":"),
    ):
        if column in metrics.columns:
            rows = metrics.dropna(subset=[column])
            ax.plot(rows["step"], rows[column], style, label=label, linewidth=1.5)
    ax.set(yscale="log", xlabel="step", ylabel="loss", title="Excluded and Restricted Loss Curve")
    _phase_lines(ax, phase_steps)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def embedding_fourier_norms(run, step: int | None = None):
    """Norms of W_E (without the `=` token) in the Fourier basis (at the last step unless given),
    sin and cos per k: the seed's "Norm of embedding of each Fourier Component"."""
    from .measures.fourier import fourier_basis

    p, step = run.task.p, run.steps[-1] if step is None else step
    with torch.no_grad():
        norms = (fourier_basis(p) @ run.model_at(step).W_E[:-1]).norm(dim=-1)
    k = torch.arange(1, p // 2 + 1).numpy()
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(k - 0.2, norms[1::2].numpy(), width=0.4, label="sin")
    ax.bar(k + 0.2, norms[2::2].numpy(), width=0.4, label="cos")
    ax.set(xlabel="frequency k", ylabel="norm", title=f"Norm of the embedding in the Fourier basis (step {step})")
    ax.legend()
    return fig


def _phase_lines(ax, phase_steps: dict) -> None:
    """Dashed vertical lines at named steps (phase boundaries, an onset); None is skipped."""
    for name, step in phase_steps.items():
        if step is not None:
            ax.axvline(step, linestyle="--", color="grey", alpha=0.7)
            ax.annotate(name.replace("_", " "), (step, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="grey")


# --- the seed notebooks' helpers, in matplotlib ------------------------------------------------

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
    _phase_lines(ax, marks or {})
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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
