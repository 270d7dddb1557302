"""Resumable checkpoints of an ensemble, one single-run `last.ckpt` per seed."""
from __future__ import annotations

import copy

import torch
from lightning.fabric.plugins import CheckpointIO

from ..files import write_atomically
from ..series import RESUMABLE


class EnsembleCheckpointIO(CheckpointIO):
    """Saves the ensemble's Lightning checkpoint as one single-run `last.ckpt` per seed, and loads
    those back as one stacked checkpoint. Per seed: its weights (through its bridge, under the
    single run's keys), its slice of the optimizer state, its data generator; the loop and
    schedule state is the same for all."""

    def __init__(self, module):
        self.module = module

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        self.module.materialise()
        for i, member in enumerate(self.module.members):
            part = self.split(checkpoint, i)
            write_atomically(member.run_dir / RESUMABLE, lambda tmp: torch.save(part, tmp))

    def split(self, checkpoint: dict, i: int) -> dict:
        member = self.module.members[i]
        part = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states", "loops")}
        part["state_dict"] = member.as_single_module().state_dict()
        part["optimizer_states"] = [_map_state(s, lambda t: t[i]) for s in checkpoint["optimizer_states"]]
        if "toytasks_batches" in checkpoint:
            part["toytasks_batches"] = checkpoint["toytasks_batches"]["streams"][i]
        part["loops"] = _with_loader_state(checkpoint["loops"], lambda state: state["streams"][i])
        return part

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        module = self.module
        parts = [torch.load(m.run_dir / RESUMABLE, map_location="cpu", weights_only=True) for m in module.members]
        for member, part in zip(module.members, parts):
            member.as_single_module().load_state_dict(part["state_dict"])
        stacked = {f"stacked.{j}": torch.stack([list(m.native_parameters().values())[j].detach() for m in module.members])
                   for j in range(len(module.names))}
        checkpoint = {k: v for k, v in parts[0].items() if k not in ("state_dict", "optimizer_states", "loops")}
        checkpoint["state_dict"] = stacked
        checkpoint["optimizer_states"] = [
            _stack_states([p["optimizer_states"][k] for p in parts]) for k in range(len(parts[0]["optimizer_states"]))]
        if "toytasks_batches" in parts[0]:
            checkpoint["toytasks_batches"] = {"streams": [p["toytasks_batches"] for p in parts]}
        loaders = [_loader_state(p["loops"]) for p in parts]
        checkpoint["loops"] = _with_loader_state(parts[0]["loops"], lambda _: {"streams": loaders})
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        pass  # each seed's last.ckpt is replaced in place


def _map_state(state: dict, per_seed) -> dict:
    """An optimizer state dict with `per_seed` applied to every per-parameter tensor (not `step`)."""
    return {"state": {k: {n: per_seed(v) if torch.is_tensor(v) and v.dim() > 0 else v for n, v in s.items()}
                      for k, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def _stack_states(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {k: {n: torch.stack([s["state"][k][n] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v
                          for n, v in first["state"][k].items()} for k in first["state"]},
            "param_groups": first["param_groups"]}


def _loader_state(loops: dict):
    """The data iterable's state inside Lightning's loop state (saved there too since it has one)."""
    return loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [None])[0]


def _with_loader_state(loops: dict, convert) -> dict:
    loops = copy.deepcopy(loops)
    state = loops.get("fit_loop", {}).get("state_dict", {})
    if state.get("combined_loader"):
        state["combined_loader"] = [convert(state["combined_loader"][0])]
    return loops
