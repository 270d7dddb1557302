"""Attention-head progress measures on token tensors, for any causal task.

TransformerLens' own head detector needs text and a tokenizer; these scores read the attention
patterns and the tokens directly. For every head, averaged over a fixed evaluation batch, the
share of attention a query row puts on its target keys:

- prev_token: the position before it;
- duplicate_token: the earlier occurrences of its token;
- induction: the positions just after the earlier occurrences of its token (the head
  detector's induction pattern: "the share of attention on the token after the previous
  occurrence of the current token").

Two conventions, both logged. `heads/<kind>/L<l>H<h>` (the one toytasks reads: the induction
onset, `heads/induction_max`, the plots) averages over the query rows that HAVE a target: a
previous-token score over the n - 1 rows after the first, an induction score over the tokens with
an earlier occurrence, so a perfect head scores 1 whatever the data. `heads/detector/<kind>/...`
is TransformerLens' `detect_head` with its defaults (error_measure "mul", no exclusions) on each
sequence, averaged over the batch as it averages a list of sequences: the attention on the targets
summed over all rows, divided by the attention summed over all rows (n, one per row), so rows
without a target count as zeros. The detector score is the toytasks score times the share of
rows that have a target: (n - 1) / n for previous tokens, and on induction sequences, where only
some tokens repeat, far less: on configs/induction_cpu.yaml's sequences 6 of 21 rows repeat on
average, and its best head, 0.98 here, scores 0.28 there).

Plus, for the no-position experiment, the average attention to BOS (position 0) per layer, and
the in-context-learning score: the mean loss over the last quarter of the scored positions minus
the mean loss over the first quarter (negative once later tokens are easier, as with induction).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..phases import first_step_reaching
from ..tasks import IGNORE
from . import Measure, MeasureOptions, register

MEASURE_SEED = 7_919  # added to the run's seed: the fixed evaluation batch


@dataclasses.dataclass(frozen=True)
class HeadsOptions(MeasureOptions):
    n_sequences: int = 256
    """Size of the fixed evaluation batch (drawn once, from its own generator)."""
    induction_threshold: float = 0.5
    """The summary records the first step at which the best induction score reaches this."""

    def __post_init__(self):
        super().__post_init__()
        if self.n_sequences < 1:
            raise ConfigError("n_sequences", f"must be at least 1, got {self.n_sequences}")


def head_scores(pattern: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """pattern [batch, head, query, key], tokens [batch, pos] -> scores [head] per kind, in both
    conventions (module docstring): `prev_token`, ... and `detector/prev_token`, ..."""
    n = tokens.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # key < query
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # [batch, query, key]
    after_same = F.pad(same[:, :, :-1], (1, 0))  # key - 1 is an earlier occurrence of the query's token
    previous = F.pad(torch.eye(n - 1, dtype=torch.bool, device=tokens.device), (0, 1, 1, 0))  # key = query - 1
    masks = {"prev_token": previous.expand_as(same), "duplicate_token": same, "induction": after_same}
    scores = {kind: _masked_share(pattern, mask) for kind, mask in masks.items()}
    scores.update({f"detector/{kind}": detector_score(pattern, mask) for kind, mask in masks.items()})
    return scores


def _masked_share(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the (batch, query) rows that have any masked key of the attention they put there."""
    share = (pattern * mask[:, None]).sum(-1)  # [batch, head, query]
    rows = mask.any(-1)[:, None].expand_as(share)  # [batch, head, query]
    return (share * rows).sum(dim=(0, 2)) / rows.sum(dim=(0, 2)).clamp_min(1)


def detector_score(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TransformerLens' `detect_head` score ("mul", no exclusions), sequence by sequence, averaged
    over the batch: the attention on the masked keys over the whole pattern's attention."""
    per_sequence = (pattern * mask[:, None]).sum(dim=(-2, -1)) / pattern.sum(dim=(-2, -1))  # [batch, head]
    return per_sequence.mean(0)


def repeated_sequences(n: int, vocab: int, half: int, generator: torch.Generator) -> torch.Tensor:
    """Fresh test sequences [n, 2 * half + 1]: BOS, `half` distinct random tokens from 1..vocab-1
    (as the induction task draws them), the same tokens again."""
    order = torch.rand(n, vocab - 1, generator=generator, device=generator.device).argsort(dim=1)
    segment = 1 + order[:, :half]
    return torch.cat([torch.zeros_like(segment[:, :1]), segment, segment], dim=1)


def second_copy_attention(pattern: torch.Tensor, half: int) -> torch.Tensor:
    """pattern [batch, head, query, key] on `repeated_sequences` -> [head]: the mean attention from
    each token of the second copy to the token after its first occurrence (that one key only, not
    the successors of coincidental repeats within the segment)."""
    query = torch.arange(half + 1, 2 * half + 1, device=pattern.device)  # the second copy
    return pattern[:, :, query, query - half + 1].mean(dim=(0, 2))


def icl_score(per_token_loss: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Mean loss over the last quarter of the scored positions minus over the first quarter."""
    quarter = max(1, len(positions) // 4)
    early, late = positions[:quarter], positions[-quarter:]
    return per_token_loss[:, late].mean() - per_token_loss[:, early].mean()


@register
class HeadMeasures(Measure):
    """Head scores, attention to BOS, per-position loss and ICL score on a fixed batch."""

    name = "heads"
    Options = HeadsOptions
    prefixes = ("heads/", "icl/", "attn/", "pos_loss/", "weights/pos_embed_norm", "val/loss/")
    summary_file = "heads.json"

    @classmethod
    def why_not(cls, task, model_cfg):
        if task.finite:
            return f"needs a sampled task (previous_token, induction), not {task.name}"
        if model_cfg.attention != "causal":
            return "needs causal attention (the scores read earlier positions)"
        return None

    def __init__(self, options: HeadsOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        task = self.task
        # Its own generator: the training stream never sees these draws.
        self.batch = task.sample(options.n_sequences, torch.Generator().manual_seed(config.seed + MEASURE_SEED))
        self.positions = (self.batch["targets"] != IGNORE).any(0).nonzero().flatten().tolist()  # scored
        self.groups = task.position_groups(self.batch) if hasattr(task, "position_groups") else {}

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.batch["tokens"].device != device:  # moved once, on first use there
            self.batch = {k: v.to(device) for k, v in self.batch.items()}
            self.groups = {k: v.to(device) for k, v in self.groups.items()}
        tokens, targets = self.batch["tokens"], self.batch["targets"]
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
        values = {}
        n_layers = model.cfg.n_layers
        for layer in range(n_layers):
            pattern = cache["pattern", layer]  # [batch, head, query, key]
            for kind, scores in head_scores(pattern, tokens).items():
                for head, score in enumerate(scores):
                    values[f"heads/{kind}/L{layer}H{head}"] = score
            values[f"attn/bos/L{layer}"] = pattern[..., 1:, 0].mean()  # queries after BOS itself
        induction = torch.stack([v for k, v in values.items() if k.startswith("heads/induction/")])
        values["heads/induction_max"] = induction.max()
        scored = targets != IGNORE
        loss = F.cross_entropy(logits.transpose(1, 2).double(), targets, ignore_index=IGNORE, reduction="none")
        values["icl/score"] = icl_score(loss, self.positions)
        per_position = (loss * scored).sum(0) / scored.sum(0).clamp_min(1)
        for position in self.positions:
            values[f"pos_loss/p{position}"] = per_position[position]
        for group, mask in self.groups.items():
            values[f"val/loss/{group}"] = (loss * mask).sum() / mask.sum()
        if model.cfg.positional_embedding_type == "standard":
            values["weights/pos_embed_norm"] = model.W_pos.norm()
        return values

    @classmethod
    def summary(cls, options: HeadsOptions, metrics) -> dict:
        return {"induction_threshold": options.induction_threshold,
                "induction_onset_step": induction_onset(metrics, options.induction_threshold)}

    @classmethod
    def figures(cls, run) -> dict:
        metrics, figures = run.metrics, {}
        if any(c.startswith("heads/induction/") for c in metrics.columns):
            options = run.measure_options(cls.name)
            figures["head_scores.png"] = head_scores_figure(metrics, cls.summary(options, metrics))
        if "pos_loss/p1" in metrics.columns:
            figures["loss_by_position.png"] = loss_by_position(metrics)
        return figures


def best_head(values, kind: str) -> tuple[int, int]:
    """(layer, head) with the highest `heads/<kind>/L<l>H<h>` score in a row of measures."""
    scores = {name: values[name] for name in values.keys() if name.startswith(f"heads/{kind}/L")}
    if not scores:
        raise KeyError(f"no heads/{kind}/ scores among these values")
    layer, head = max(scores, key=lambda name: scores[name]).rsplit("/L", 1)[1].split("H")
    return int(layer), int(head)


def induction_onset(metrics, threshold: float) -> int | None:
    """The first step at which the best induction score reaches `threshold` (None if never)."""
    return first_step_reaching(metrics, "heads/induction_max", threshold)


def head_scores_figure(metrics, summary: dict):
    """Each head's previous-token, duplicate-token and induction score over training."""
    from ..plots import phase_lines, plt

    kinds = ("prev_token", "duplicate_token", "induction")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, kind in zip(axes, kinds):
        columns = sorted(c for c in metrics.columns if c.startswith(f"heads/{kind}/"))
        for column in columns:
            rows = metrics.dropna(subset=[column])
            ax.plot(rows["step"], rows[column], label=column.rsplit("/", 1)[1])
        ax.set(xlabel="step", title=f"{kind.replace('_', '-')} score", ylim=(-0.02, 1.02))
        if summary.get("induction_onset_step") is not None:
            phase_lines(ax, {"induction onset": summary["induction_onset_step"]})
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("score (share of attention)")
    return fig


def loss_by_position(metrics):
    """Loss at each position at a few evaluation steps (early positions are the hard ones)."""
    from ..plots import plt

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
