"""Where a bracket classifier fails: accuracy and logit difference by group of test strings.

On the whole stored test split, at each measure step:

    brackets/acc/<group>         share classified correctly
    brackets/logit_diff/<group>  mean of logit(balanced) - logit(unbalanced): positive on
                                 balanced strings and negative on the others once learnt

The groups: `all`, each kind (`balanced`, `total`, `negative`, `both`), `near_miss` (the
unbalanced strings one step from balanced), four length buckets (`len_02-10`, ...) and buckets
of the maximum nesting depth (`depth_0-1`, `depth_2-3`, ..., `depth_8+`).
"""
from __future__ import annotations

import numpy as np
import torch

from . import Measure, MeasureOptions, register

DEPTH_EDGES = (0, 2, 4, 6, 8)  # bucket i holds depths in [edge_i, edge_i+1); the last is open


def length_buckets(max_length: int, n: int = 4) -> list[tuple[int, int]]:
    """`n` contiguous ranges of the even lengths 2..max_length, as (shortest, longest)."""
    chunks = np.array_split(np.arange(2, max_length + 1, 2), min(n, max_length // 2))
    return [(int(c[0]), int(c[-1])) for c in chunks]


def group_masks(split, max_length: int) -> dict[str, torch.Tensor]:
    """Boolean masks over the rows of a stored split, one per group (empty groups left out)."""
    kind = np.array(list(split["kind"]))
    length, depth = np.array(list(split["length"])), np.array(list(split["depth"]))
    masks = {"all": np.ones(len(kind), dtype=bool)}
    for name in ("balanced", "total", "negative", "both"):
        masks[name] = kind == name
    masks["near_miss"] = np.array(list(split["near_miss"]), dtype=bool)
    width = len(str(max_length))
    for lo, hi in length_buckets(max_length):
        masks[f"len_{lo:0{width}d}-{hi:0{width}d}"] = (length >= lo) & (length <= hi)
    for lo, hi in zip(DEPTH_EDGES, DEPTH_EDGES[1:] + (None,)):
        name = f"depth_{lo}+" if hi is None else f"depth_{lo}-{hi - 1}"
        masks[name] = (depth >= lo) & (depth < (hi or np.inf))
    return {name: torch.from_numpy(mask) for name, mask in masks.items() if mask.any()}


@torch.no_grad()
def unbalanced_contributions(model, tokens: torch.Tensor, attention_mask: torch.Tensor,
                             balanced: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """ARENA 1.5.1's logit attribution at position 0: how far each component pushes a string
    towards "unbalanced" (the seed's `out_by_component_in_unbalanced_dir`).

    The unbalanced direction after the final LayerNorm is W_U[:, 0] - W_U[:, 1]; before it, that
    direction pulled back through a linear fit of the LayerNorm on these strings (least squares with
    an intercept, of its output on its input at position 0: the seed's `get_pre_final_ln_dir`; its
    output is the bridge's `ln_final.hook_out`, the seed's `hook_normalized`, affine included).
    Each component's output at position 0 (the seed's `get_out_by_components`) is projected on that
    direction, less its mean over the `balanced` strings.

    tokens, attention_mask [batch, pos]; balanced [batch] bool. Returns ({component: [batch]}, the
    direction [d_model], the r^2 of the fit). Components in the order they write to the residual
    stream: `embed` (token and position), `L<l>H<h>` each head, `mlp<l>` each MLP; only the
    attention output biases b_O are left out (the same for every string).
    """
    _, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    n_layers = model.cfg.n_layers
    x = cache["resid_post", n_layers - 1][:, 0].double()  # [batch, d_model]: the final LayerNorm's input
    y = cache["ln_final.hook_out"][:, 0].double()  # [batch, d_model]: its output
    inputs = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [batch, d_model + 1]
    fit = torch.linalg.lstsq(inputs, y).solution  # [d_model + 1, d_model]
    r2 = (1 - ((y - inputs @ fit) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)).mean().item()  # sklearn's score
    direction = fit[:-1] @ (model.W_U[:, 0] - model.W_U[:, 1]).double()  # [d_model]
    outputs = {"embed": cache["hook_embed"][:, 0] + cache["hook_pos_embed"][:, 0]}  # [batch, d_model]
    for layer in range(n_layers):
        heads = torch.einsum("bhd,hdm->hbm", cache["z", layer][:, 0], model.W_O[layer])  # [head, batch, d_model]
        outputs.update({f"L{layer}H{head}": out for head, out in enumerate(heads)})
        if not model.cfg.attn_only:
            outputs[f"mlp{layer}"] = cache["mlp_out", layer][:, 0]
    contributions = {name: out.double() @ direction for name, out in outputs.items()}  # [batch] each
    return {name: c - c[balanced].mean() for name, c in contributions.items()}, direction, r2


@register
class BracketMeasures(Measure):
    """Accuracy and logit difference per group, on the stored test split."""

    name = "brackets"
    Options = MeasureOptions
    prefixes = ("brackets/",)

    @classmethod
    def why_not(cls, task, model_cfg):
        return None if task.name == "brackets" else f"needs the brackets task, not {task.name}"

    def __init__(self, options, config, dataset=None):
        super().__init__(options, config, dataset)
        split = dataset["test"]
        columns = split.with_format("torch", columns=["tokens", "attention_mask", "label"])[:]
        self.tokens = columns["tokens"]  # [batch, n_ctx]
        self.attention_mask = columns["attention_mask"]  # [batch, n_ctx]
        self.label = columns["label"]  # [batch]
        self.masks = group_masks(split, self.task.max_length)

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.tokens.device != device:  # moved once, on first use there
            for name in ("tokens", "attention_mask", "label"):
                setattr(self, name, getattr(self, name).to(device))
            self.masks = {k: v.to(device) for k, v in self.masks.items()}
        logits = model(self.tokens, attention_mask=self.attention_mask)[:, 0]  # [batch, 2]
        correct = (logits.argmax(-1) == self.label).double()
        diff = (logits[:, 1] - logits[:, 0]).double()  # balanced minus unbalanced
        values = {}
        for name, mask in self.masks.items():
            values[f"brackets/acc/{name}"] = correct[mask].mean()
            values[f"brackets/logit_diff/{name}"] = diff[mask].mean()
        return values

    @classmethod
    def figures(cls, run) -> dict:
        if "brackets/acc/all" not in run.metrics.columns:
            return {}
        return {"brackets_accuracy.png": accuracy_figure(run.metrics)}


def accuracy_figure(metrics):
    """Test error (1 - accuracy) of a bracket classifier over training, by kind, length and depth.
    The error, on a log-like scale: past 99% accuracy the differences between groups are in it."""
    from ..plots import plt

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
