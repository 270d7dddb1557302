"""Reference weights and losses from TransformerLens 3.9's HookedTransformer, as test fixtures.

toytasks' `model.init: hooked` (the default) claims the initial weights of TransformerLens 3's
`HookedTransformer(cfg)` bit for bit, and with them the Grokking_Demo seed notebook's training
trajectory. TransformerLens 4 has no HookedTransformer, so this script runs in a separate
virtual environment outside the repository; it is never a dependency of toytasks:

    python3 -m venv /work/venv-tl3
    /work/venv-tl3/bin/pip install torch==2.13.0    # first: a bare torch requirement pulls a CUDA build
    /work/venv-tl3/bin/pip install transformer-lens==3.9.0
    /work/venv-tl3/bin/python scripts/make_seed_fixtures.py    # from the repository root, ~2 minutes
    /work/venv-tl3/bin/python scripts/make_seed_fixtures.py --init-only    # after adding a config

It imports only `toytasks.tasks` from this repository (plain Python and torch) to derive d_vocab,
d_vocab_out and n_ctx from each config's task, and writes into tests/fixtures/:

  seed_init.json                   for every configs/*.yaml: the HookedTransformerConfig fields it
                                   used, and each parameter's shape and SHA-256 (of its float32 bytes)
                                   at step 0, i.e. after the seed's own edits (no_position zeroes W_pos);
                                   for a zeroed W_pos also the hash of what HookedTransformer drew
  seed_init_grokking.safetensors   configs/grokking.yaml's initial weights in full (0.9 MB)
  seed_trajectory_grokking.json    the seed notebook's training loop on that model (p = 113, frac 0.3,
                                   data seed 598, model seed 999), 300 full-batch steps on the CPU:
                                   the train and test loss at every step

tests/test_init.py compares toytasks' models and training with them.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import einops
import torch
import yaml
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
from toytasks.tasks import task_from_config  # noqa: E402  (plain Python and torch, no TransformerLens)

# The Grokking_Demo notebook's model (its cfg cell), which configs/grokking.yaml must give.
NOTEBOOK_CFG = dict(n_layers=1, n_heads=4, d_model=128, d_head=32, d_mlp=512, act_fn="relu",
                    normalization_type=None, d_vocab=114, d_vocab_out=113, n_ctx=3, seed=999)


def model_defaults() -> dict:
    """ModelConfig's defaults, read from toytasks/config.py (importing it needs Lightning)."""
    tree = ast.parse((ROOT / "toytasks" / "config.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelConfig")
    return {n.target.id: ast.literal_eval(n.value) for n in cls.body
            if isinstance(n, ast.AnnAssign) and n.value is not None}


def hooked_config(path: Path) -> tuple[dict, dict]:
    """The HookedTransformerConfig fields for a toytasks config, and its model section."""
    data = yaml.safe_load(path.read_text())
    model = {**model_defaults(), **data.get("model", {})}
    task = task_from_config(data["task"])
    seed = model["seed"] if model["seed"] is not None else data.get("seed", 0)  # Config.model_seed
    fields = dict(n_layers=model["n_layers"], n_heads=model["n_heads"], d_model=model["d_model"],
                  d_head=model["d_head"], d_mlp=model["d_mlp"], act_fn=model["act_fn"],
                  normalization_type=model["normalization"], attention_dir=model["attention"],
                  attn_only=model["attn_only"], d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out,
                  n_ctx=task.n_ctx, seed=seed)
    return fields, model


def seed_model(fields: dict) -> HookedTransformer:
    return HookedTransformer(HookedTransformerConfig(**fields, init_weights=True, device="cpu"))


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def describe(tensor: torch.Tensor) -> dict:
    return {"shape": list(tensor.shape), "sha256": sha256(tensor)}


def init_fixtures() -> dict:
    out = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        fields, model_section = hooked_config(path)
        model = seed_model(fields)
        entry = {"hooked_config": fields}
        if model_section["zero_pos_embed"]:
            # HookedTransformer draws W_pos (second, after W_E) like any weight; the No_Position
            # notebook then zeroes it (`deactivate_position`), as toytasks' zero_pos_embed does.
            entry["W_pos_drawn"] = describe(model.pos_embed.W_pos)
            model.pos_embed.W_pos.data[:] = 0.0
        entry["params"] = {name: describe(param) for name, param in model.named_parameters()}
        out[path.stem] = entry
        if path.stem == "grokking":
            assert fields == {**NOTEBOOK_CFG, "attention_dir": "causal", "attn_only": False}, fields
            weights = {name: param.detach().contiguous() for name, param in model.named_parameters()}
            save_file(weights, str(FIXTURES / "seed_init_grokking.safetensors"))
        print(f"{path.stem}: {len(entry['params'])} parameters", flush=True)
    return out


def seed_trajectory(steps: int) -> dict:
    """The Grokking_Demo notebook's training loop (its "Actually Train" cell), on the CPU."""
    p, frac_train, lr, wd, betas, DATA_SEED = 113, 0.3, 1e-3, 1.0, (0.9, 0.98), 598
    a_vector = einops.repeat(torch.arange(p), "i -> (i j)", j=p)
    b_vector = einops.repeat(torch.arange(p), "j -> (i j)", i=p)
    equals_vector = einops.repeat(torch.tensor(113), " -> (i j)", i=p, j=p)
    dataset = torch.stack([a_vector, b_vector, equals_vector], dim=1)
    labels = (dataset[:, 0] + dataset[:, 1]) % p
    torch.manual_seed(DATA_SEED)
    indices = torch.randperm(p * p)
    cutoff = int(p * p * frac_train)
    train_data, train_labels = dataset[indices[:cutoff]], labels[indices[:cutoff]]
    test_data, test_labels = dataset[indices[cutoff:]], labels[indices[cutoff:]]

    model = seed_model({**NOTEBOOK_CFG, "attention_dir": "causal", "attn_only": False})
    for name, param in model.named_parameters():
        if "b_" in name:
            param.requires_grad = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=betas)

    def loss_fn(logits, labels):
        if len(logits.shape) == 3:
            logits = logits[:, -1]
        logits = logits.to(torch.float64)
        log_probs = logits.log_softmax(dim=-1)
        correct_log_probs = log_probs.gather(dim=-1, index=labels[:, None])[:, 0]
        return -correct_log_probs.mean()

    train_losses, test_losses = [], []
    for epoch in range(steps):
        train_logits = model(train_data)
        train_loss = loss_fn(train_logits, train_labels)
        train_loss.backward()
        train_losses.append(train_loss.item())
        optimizer.step()
        optimizer.zero_grad()
        with torch.inference_mode():
            test_losses.append(loss_fn(model(test_data), test_labels).item())
        if (epoch + 1) % 50 == 0:
            print(f"step {epoch + 1}: train {train_loss.item():.6f} test {test_losses[-1]:.6f}", flush=True)
    return {"p": p, "frac_train": frac_train, "data_seed": DATA_SEED, "model_seed": NOTEBOOK_CFG["seed"],
            "steps": steps, "device": "cpu", "threads": torch.get_num_threads(),
            # train_loss[i]: before update i+1 (the weights after i updates); test_loss[i]: after it
            "train_loss": train_losses, "test_loss": test_losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the tests use 2)")
    ap.add_argument("--init-only", action="store_true",
                    help="rewrite seed_init.json only (after adding a config), not the 300-step trajectory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    versions = {"transformer_lens": version("transformer-lens"), "torch": torch.__version__}
    FIXTURES.mkdir(parents=True, exist_ok=True)
    init = {"versions": versions, "configs": init_fixtures()}
    (FIXTURES / "seed_init.json").write_text(json.dumps(init, indent=1) + "\n")
    if args.init_only:
        return
    trajectory = {"versions": versions, **seed_trajectory(args.steps)}
    (FIXTURES / "seed_trajectory_grokking.json").write_text(json.dumps(trajectory, indent=1) + "\n")
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
