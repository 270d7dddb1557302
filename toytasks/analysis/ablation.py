"""The no-position seed's closing experiment: mean-ablate one activation at a time.

For every hook that a HookedTransformer caches by default, by its TransformerLens name
(`hook_embed`, `blocks.0.attn.hook_pattern`, `blocks.1.mlp.hook_post`, ...), the activation on an
evaluation batch is replaced by its mean over a reference batch and the loss is recorded. An
activation whose mean does as well as itself carries nothing about the particular sequence that
the model uses (the seed found the whole of layer 0's attention replaceable this way).
"""
from __future__ import annotations

import functools

import torch

from ..loss import loss_and_accuracy

# The bridge's wrapper hooks (`.hook_in` / `.hook_out`) duplicate the TransformerLens ones, and it
# has a few that HookedTransformer caches only when asked (split q/k/v inputs, hook_mlp_in, the
# per-head results, which the seed also skips). hook_pos_embed is skipped as in the seed, and
# hook_attn_scores because the bridge discards edits to it (it warns so): ablating hook_pattern
# is what reaches the output.
_SKIP = (".hook_in", ".hook_out", "hook_hidden_states", "hook_attn_in", "hook_q_input", "hook_k_input",
         "hook_v_input", "hook_mlp_in", "hook_result", "hook_pos_embed", "hook_attn_scores")


def standard_hook_names(model) -> list[str]:
    """The seed's hooks, by their TransformerLens names (in the model's hook_dict order)."""
    return [name for name in model.hook_dict if not name.endswith(_SKIP)]


@torch.no_grad()
def mean_activations(model, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Each hook's activation averaged over the batch, in the order the forward pass reaches them
    (kept as running hooks rather than a full cache: a cache of a large batch is gigabytes)."""
    means = {}

    def keep_mean(activation, hook, name):
        means[name] = activation.mean(0)

    model.run_with_hooks(tokens, fwd_hooks=[(n, functools.partial(keep_mean, name=n)) for n in names])
    return means


@torch.no_grad()
def mean_ablation(model, reference: dict, batch: dict):
    """A pandas Series: the loss on `batch` with each hook's activation replaced by its mean over
    `reference` (both dicts with `tokens` and `targets`), indexed by hook name, after `none` (the
    unablated loss)."""
    import pandas as pd

    means = mean_activations(model, reference["tokens"], standard_hook_names(model))
    losses = {"none": loss_and_accuracy(model(batch["tokens"]), batch["targets"])[0].item()}
    for name, mean in means.items():
        def replace(activation, hook, mean=mean):
            return mean.expand_as(activation).clone()

        logits = model.run_with_hooks(batch["tokens"], fwd_hooks=[(name, replace)])
        losses[name] = loss_and_accuracy(logits, batch["targets"])[0].item()
    return pd.Series(losses, name="loss")
