"""The only place that builds TransformerLens models.

`TransformerBridge.boot_native` is TransformerLens 4's own path for small models trained from
scratch (HookedTransformer was removed in 4.0). The bridge keeps the names TransformerLens users
know: `run_with_cache`, `cache["post", 0, "mlp"]`, `model.W_E`, `model.blocks[0].attn.W_Q`.
"""
from __future__ import annotations

import torch
from transformer_lens import TransformerBridge, TransformerBridgeConfig

from .config import ModelConfig
from .tasks import Task


def build_model(cfg: ModelConfig, task: Task, seed: int, device: str | torch.device = "cpu") -> TransformerBridge:
    """A freshly initialised model for `task`; the same (cfg, task, seed) gives the same weights."""
    arch = TransformerBridgeConfig.from_dict(dict(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=cfg.d_mlp, act_fn=cfg.act_fn, normalization_type=cfg.normalization,
        attention_dir=cfg.attention, attn_only=cfg.attn_only,
        d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx, seed=seed,
    ))
    model = TransformerBridge.boot_native(arch, device=device)
    apply_frozen_parts(model, cfg)
    return model


def apply_frozen_parts(model: TransformerBridge, cfg: ModelConfig) -> None:
    """Freeze biases and zero-and-freeze positional embeddings as the config asks."""
    for name, param in model.named_parameters():
        if cfg.freeze_biases and is_bias(name):
            param.requires_grad_(False)
        if cfg.zero_pos_embed and is_pos_embed(name):
            with torch.no_grad():
                param.zero_()
            param.requires_grad_(False)


def is_bias(name: str) -> bool:
    """Biases of the linear maps; norm biases stay trainable (the seed froke only `b_*` params)."""
    parts = name.split(".")
    return parts[-1] == "bias" and not any(part.startswith("ln") for part in parts)


def is_pos_embed(name: str) -> bool:
    # The native model calls it `pos`, the bridge's state dict `pos_embed`.
    return name.split(".")[0] in ("pos", "pos_embed")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
