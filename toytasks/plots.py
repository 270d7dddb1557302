"""`toytasks plot RUN_DIR`: PNG figures of a run, written to RUN_DIR/plots/."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .measures.grokking import PHASES  # noqa: E402
from .measures.heads import HEADS_SUMMARY  # noqa: E402

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


def embedding_fourier_norms(run):
    """Norms of W_E (without the `=` token) in the Fourier basis at the last step, sin and cos per k."""
    from .measures.fourier import fourier_basis

    p, step = run.task.p, run.steps[-1]
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
    for name, step in phase_steps.items():
        if step is not None:
            ax.axvline(step, linestyle="--", color="grey", alpha=0.7)
            ax.annotate(name.replace("_", " "), (step, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="grey")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
