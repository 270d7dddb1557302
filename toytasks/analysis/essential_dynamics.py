"""Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context learning"):
the principal components of the model's outputs over training.

At each checkpoint the model's outputs on one fixed batch, its logits at the scored targets,
are flattened into one vector; the vectors of all the checkpoints, centred on their mean over
training, are projected onto their first principal components. The trajectory through
(PC1, PC2, ...) is the model's development seen through its function alone: it moves fast where
the function changes, and its turns mark changes in what the model is learning.

    frame = run.essential_dynamics(n_components=3)   # step, PC1, PC2, PC3
    frame.attrs["explained_variance"]                # the fraction of variance of each component
    plot_trajectory(frame, phases)                   # the trajectory, the steps marked

The batch: `n_examples` inputs drawn once (with `seed`) from the task's whole enumeration, train and
test splits together, for a finite task (all of them when there are fewer); for a sampled task,
`run.sample(n_examples, seed)`. The outputs are the logits themselves (not log-probabilities), as
in the paper's "the model's outputs"; each component's sign is fixed so that the last checkpoint
has a non-negative coordinate, so the same run always draws the same way round.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import ToytasksError
from ..tasks import IGNORE, batch_from_split


def fixed_batch(run, n_examples: int, seed: int) -> dict[str, torch.Tensor]:
    """The inputs essential dynamics evaluates every checkpoint on."""
    if not run.task.finite:
        return run.sample(n_examples, seed)
    splits = [batch_from_split(run.dataset[name]) for name in ("train", "test")]
    batch = {key: torch.cat([split[key] for split in splits]) for key in splits[0]}
    n = len(batch["tokens"])
    if n_examples < n:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_examples].sort().values
        batch = {key: value[keep] for key, value in batch.items()}
    return batch


def essential_dynamics(run, n_components: int, n_examples: int, steps: list[int], seed: int = 0,
                       progress: bool = True) -> pd.DataFrame:
    """A DataFrame with a `step` column and PC1 ... PC<n_components>: the checkpoints' outputs
    projected on their principal components over training; `attrs["explained_variance"]` holds
    each component's fraction of the variance."""
    from .run import checkpoint_progress

    if n_components < 1:
        raise ToytasksError(f"n_components must be at least 1, got {n_components}")
    if len(steps) < 2:
        raise ToytasksError(f"{run.path}: essential dynamics needs at least 2 checkpoints, found {len(steps)}")
    batch = fixed_batch(run, n_examples, seed)
    positions = run.task.scored_positions
    scored = batch["targets"][:, positions] != IGNORE  # [batch, pos]: the outputs that are answers
    outputs = []
    for step in checkpoint_progress(steps, progress and len(steps) > 1, "essential dynamics"):
        with torch.no_grad():
            logits = run.model_at(step).original_model(batch["tokens"], attention_mask=batch.get("attention_mask"))
        outputs.append(logits[:, positions][scored].flatten().double())  # [answers * d_vocab_out]
    centred = torch.stack(outputs)  # [checkpoint, output]
    centred -= centred.mean(dim=0)
    left, singular, _ = torch.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(steps))
    coordinates = left[:, :k] * singular[:k]  # [checkpoint, component]
    coordinates *= torch.where(coordinates[-1] < 0, -1.0, 1.0)  # the last checkpoint on the + side
    variance = singular.pow(2)
    frame = pd.DataFrame({"step": steps, **{f"PC{i + 1}": coordinates[:, i].numpy() for i in range(k)}})
    frame.attrs["explained_variance"] = (variance[:k] / variance.sum()).tolist()
    return frame


def turning_angles(frame: pd.DataFrame) -> pd.Series:
    """The angle in degrees between the trajectory's step into and out of each checkpoint (in the
    space of all the frame's components): 0 straight on, 180 straight back; NaN at the ends."""
    points = frame.filter(regex=r"^PC\d+$").to_numpy()
    into, out = points[1:-1] - points[:-2], points[2:] - points[1:-1]
    cosine = (into * out).sum(1) / np.maximum(np.linalg.norm(into, axis=1) * np.linalg.norm(out, axis=1), 1e-300)
    angles = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    return pd.Series([np.nan, *angles, np.nan], index=frame.index, name="turn_degrees")


def plot_trajectory(frame: pd.DataFrame, marks: dict | None = None, title: str = "Essential dynamics"):
    """The trajectory in PC1-PC2 (and PC2-PC3 when there is a third component), coloured by step on
    a log scale, the first and last steps labelled and each named step in `marks` (e.g. the
    grokking phases) starred at the checkpoint nearest it."""
    from matplotlib.colors import LogNorm

    from ..plots import plt

    pairs = [(1, 2), (2, 3)] if "PC3" in frame.columns else [(1, 2)] if "PC2" in frame.columns else []
    if not pairs:
        raise ToytasksError("plot_trajectory needs at least 2 components")
    variance = frame.attrs.get("explained_variance", [])
    steps = frame["step"].to_numpy()
    norm = LogNorm(vmin=max(steps.min(), 1), vmax=max(steps.max(), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.2 * len(pairs), 5.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        x, y = frame[f"PC{i}"].to_numpy(), frame[f"PC{j}"].to_numpy()
        ax.plot(x, y, color="lightgrey", linewidth=1, zorder=1)
        points = ax.scatter(x, y, c=np.maximum(steps, 1), norm=norm, cmap="viridis", s=16, zorder=2)
        for row in (0, len(frame) - 1):
            ax.annotate(f"step {steps[row]}", (x[row], y[row]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        for name, step in (marks or {}).items():
            if step is None:
                continue
            row = int(np.abs(steps - step).argmin())  # the checkpoint nearest the named step
            ax.scatter(x[row], y[row], marker="*", s=160, color="crimson", edgecolor="black", linewidth=0.5, zorder=3)
            ax.annotate(f"{name.replace('_', ' ')} ({step})", (x[row], y[row]), fontsize=7, color="crimson",
                        xytext=(6, -10), textcoords="offset points")
        label = lambda k: f"PC{k}" + (f" ({variance[k - 1]:.0%})" if len(variance) >= k else "")
        ax.set(xlabel=label(i), ylabel=label(j))
    fig.colorbar(points, ax=axes[0].tolist(), label="step", shrink=0.85)
    fig.suptitle(title)
    return fig
