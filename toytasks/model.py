"""The only place that builds TransformerLens models.

`TransformerBridge.boot_native` is TransformerLens 4's own path for small models trained from
scratch (HookedTransformer was removed in 4.0). The bridge keeps the names TransformerLens users
know: `run_with_cache`, `cache["post", 0, "mlp"]`, `model.W_E`, `model.blocks[0].attn.W_Q`.
Its initial weights are by default those of TransformerLens 3's `HookedTransformer` (`model.init`).
"""
from __future__ import annotations

import math

import einops
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
    # boot_native always draws its own weights (on a private generator, the global RNG untouched);
    # `hooked` then overwrites every weight matrix. Drawing twice costs milliseconds at these sizes.
    model = TransformerBridge.boot_native(arch, device=device)
    if cfg.init == "hooked":
        init_hooked(model.original_model, arch, seed)
    if cfg.init_scale != 1.0:  # at 1.0 the weights are left untouched, bit for bit
        scale_parameters(model, cfg.init_scale)
    apply_frozen_parts(model, cfg)
    return model


@torch.no_grad()
def scale_parameters(model: torch.nn.Module, factor: float) -> None:
    """Multiply every parameter by `factor`, as Omnigrok's `param.data *= alpha` does (biases and
    positional embeddings that start or stay at zero stay zero; LayerNorm weights are scaled too)."""
    for param in model.parameters():
        param.mul_(factor)


def init_hooked(native: torch.nn.Module, arch: TransformerBridgeConfig, seed: int) -> None:
    """Overwrite the weight matrices with TransformerLens 3's `HookedTransformer(cfg)` draws, bit for bit.

    HookedTransformer.init_weights calls `torch.manual_seed(cfg.seed)`, then draws each parameter
    whose name contains "W_" with `nn.init.normal_(std=0.8 / sqrt(d_model))` on the CPU, in
    `named_parameters()` order and in its own shapes; biases stay zero and LayerNorm weights one, as
    boot_native leaves them. Nothing drawn before that seeding matters. A fresh CPU generator with
    the same seed gives the same stream as the global one, without touching it.
    """
    generator = torch.Generator().manual_seed(seed)
    std = 0.8 / math.sqrt(arch.d_model)  # HookedTransformerConfig's initializer_range
    h, m, d, f = arch.n_heads, arch.d_model, arch.d_head, arch.d_mlp

    def draw(param: torch.Tensor, shape: tuple[int, ...], to_native: str) -> None:
        """Draw a tensor of HookedTransformer's `shape`; store it in the native (torch) layout."""
        hooked = torch.empty(shape).normal_(0.0, std, generator=generator)
        with torch.no_grad():
            param.copy_(einops.rearrange(hooked, to_native))

    draw(native.tok_embed.weight, (arch.d_vocab, m), "v m -> v m")  # W_E
    draw(native.pos.weight, (arch.n_ctx, m), "p m -> p m")  # W_pos, drawn even when zeroed later
    for layer in native.layers:
        attn = layer.attn
        # HookedTransformer's Attention registers W_Q and W_O (in AbstractAttention) before W_K and
        # W_V (in Attention), so that is the draw order. nn.Linear computes x @ weight.T.
        draw(attn.q.weight, (h, m, d), "h m d -> (h d) m")  # W_Q
        draw(attn.o.weight, (h, d, m), "h d m -> m (h d)")  # W_O
        draw(attn.k.weight, (h, m, d), "h m d -> (h d) m")  # W_K
        draw(attn.v.weight, (h, m, d), "h m d -> (h d) m")  # W_V
        if not arch.attn_only:
            draw(layer.mlp.fc_in.weight, (m, f), "m f -> f m")  # W_in
            draw(layer.mlp.fc_out.weight, (f, m), "f m -> m f")  # W_out
    draw(native.head.weight, (m, arch.d_vocab_out), "m v -> v m")  # W_U


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
