"""Softmax collapse (Prieto et al. 2025, "Grokking at the edge of numerical stability"): the share
of training examples whose correct-class probability, computed in float32, rounds to exactly 1.
Their loss in float32 is then exactly 0 and so is their gradient's correct-class component: the
examples stop pushing, and without weight decay grokking stalls.

    train/softmax_collapse   that share, over the scored targets of the training split

The probability is `torch.softmax` of the logits in float32 (exp(z - max) / sum), whatever the
run's `loss_dtype`, on the stored training split (its first 8,192 examples when it has more: the
whole split of every grokking config; a sampled task: 512 examples drawn from its distribution
with a generator of the measure's own). Prieto et al.'s logger counts the examples whose float32
sum of exp(z - max) is exactly 1, whichever class is largest; on an example whose correct class
has the largest logit the two agree, and an example the model gets wrong still has a gradient,
so it is not counted here.
"""
from __future__ import annotations

import torch

from ..tasks import IGNORE, batch_from_split
from . import Measure, register

SAMPLED_EXAMPLES = 512
MAX_EXAMPLES = 8192  # one forward pass over at most this many: the share, estimated, on larger splits
SAMPLE_SEED = 2_000_003  # added to the run's seed: never the training or held-out stream


@register
class SoftmaxCollapse(Measure):
    name = "softmax_collapse"
    prefixes = ("train/softmax_collapse",)

    def __init__(self, options, config, dataset=None):
        super().__init__(options, config, dataset)
        if dataset is not None:
            train = dataset["train"]
            self.batch = batch_from_split(train.select(range(min(len(train), MAX_EXAMPLES))))
        else:
            self.batch = self.task.sample(SAMPLED_EXAMPLES, torch.Generator().manual_seed(config.seed + SAMPLE_SEED))

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.batch["tokens"].device != device:  # moved once, on first use there
            self.batch = {k: v.to(device) for k, v in self.batch.items()}
        positions = self.task.scored_positions
        logits = model(self.batch["tokens"], attention_mask=self.batch.get("attention_mask"))[:, positions]
        return {"train/softmax_collapse": collapsed_fraction(logits, self.batch["targets"][:, positions])}

    @classmethod
    def figures(cls, run) -> dict:
        """The collapsed share beside train and test accuracy, with memorisation and grokking marked."""
        from ..phases import milestones
        from ..plots import over_training

        metrics = run.metrics
        if "train/softmax_collapse" not in metrics.columns:
            return {}
        columns = [c for c in ("train/softmax_collapse", "train/acc", "val/acc") if c in metrics.columns]
        labels = {"train/softmax_collapse": "softmax collapse (train)", "train/acc": "train accuracy",
                  "val/acc": "test accuracy"}
        fig = over_training(metrics, columns, [labels[c] for c in columns], title="Softmax collapse (float32)",
                            ylabel="share of examples", marks=milestones(metrics))
        return {"softmax_collapse.png": fig}


def collapsed_fraction(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [..., d_vocab_out], targets [...] (-100: not scored) -> 0-d: the share of scored
    targets whose float32 softmax probability is exactly 1."""
    logits = logits.flatten(0, -2).float()  # [n, d_vocab_out]
    targets = targets.flatten()  # [n]
    scored = targets != IGNORE
    probs = torch.softmax(logits, dim=-1)
    correct = probs.gather(-1, targets.clamp_min(0)[:, None])[:, 0]  # [n]
    return ((correct == 1.0) & scored).sum() / scored.sum()
