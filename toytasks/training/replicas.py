"""The weights being trained: one run's model, or several runs' models stacked into one.

The LightningModule (module.py) is written once for both, against this small interface:

    score(batch, shared)   each run's loss and accuracy, [runs] each
    trainable()            the parameters the optimizer steps
    per_run(t)             one of them (or its gradient) viewed as [runs, n], a row per run
    run_weights(i)         run i's parameters, in its model's order (for the weight norm)
    run_grads(i)           run i's gradients (for clipping by its own norm)
    scale_grads(scales)    multiply run i's gradients by scales[i]
    materialise()          each run's TransformerLens model holds its current weights
    run_checkpoint(c, i)   run i's part of a Lightning checkpoint, in the one-run format
    stack_checkpoints(ps)  the inverse: one checkpoint for this module from the runs' parts

`OneRun` trains the bridge's native module directly (no hook wrappers on the hot path). `StackedRuns`
(an ensemble, `seeds:`) stacks the runs' parameters along a new first dimension and runs them all
in one `torch.func.vmap` over `functional_call` of the native module: AdamW is elementwise and
the loss is the sum of the runs' losses, so each run gets its own gradient and update.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional

import torch
from torch.func import functional_call, vmap

from ..loss import loss_function
from ..model import trainable_parameters

if TYPE_CHECKING:
    from .members import Member

PREFIX = "runs."  # where the LightningModule holds these (`self.runs`); its state-dict keys start so
# A checkpoint entry of nested dicts and lists whose tensors are all per run ([run, ...] stacked):
# the interventions' state (toytasks/interventions/), split and stacked like the weights.
PER_RUN_STATE = "toytasks_interventions"


def of(members: list["Member"]) -> "OneRun | StackedRuns":
    return OneRun(members[0]) if len(members) == 1 else StackedRuns(members)


class OneRun(torch.nn.Module):
    def __init__(self, member: "Member"):
        super().__init__()
        self.model = member.model  # registered: moved to the device and checkpointed with the module
        self.positions = member.config.task.scored_positions
        self.loss = loss_function(member.config.loss, member.config.loss_dtype)
        self._trainable = trainable_parameters(self.model)
        self._weights: Optional[list[torch.Tensor]] = None

    def score(self, batch: dict, shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.original_model(batch["tokens"], attention_mask=batch.get("attention_mask"))
        loss, accuracy = self.loss(logits[:, self.positions], batch["targets"][:, self.positions])
        return loss[None], accuracy[None]

    def trainable(self) -> list[torch.nn.Parameter]:
        return self._trainable

    def per_run(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(1, -1)

    def run_weights(self, i: int) -> list[torch.Tensor]:
        if self._weights is None:  # collected once, after the move to the device
            self._weights = [p.detach() for p in self.model.parameters()]
        return self._weights

    def run_grads(self, i: int) -> list[torch.Tensor]:
        return [p.grad for p in self._trainable if p.grad is not None]

    def scale_grads(self, scales: torch.Tensor) -> None:
        torch._foreach_mul_(self.run_grads(0), scales[0])

    def materialise(self) -> None:
        pass  # the trained model is the run's model

    def on_device(self, device) -> None:
        pass

    def run_checkpoint(self, checkpoint: dict, i: int) -> dict:
        return {**checkpoint, "state_dict": _strip(checkpoint["state_dict"])}

    def stack_checkpoints(self, parts: list[dict]) -> dict:
        return {**parts[0], "state_dict": {PREFIX + k: v for k, v in parts[0]["state_dict"].items()}}


class StackedRuns(torch.nn.Module):
    def __init__(self, members: list["Member"]):
        super().__init__()
        self.members = members  # a plain list: their bridges are copies for measures and saving
        params = [m.native_parameters() for m in members]
        self.names = list(params[0])
        self.stacked = torch.nn.ParameterList([
            torch.nn.Parameter(torch.stack([p[name].detach() for p in params]), requires_grad=params[0][name].requires_grad)
            for name in self.names])  # each [run, ...]
        # The bridge's parameters are the native module's: index them to give a run's parameters
        # (and trained ones) in the order its single run's model and optimizer hold them.
        index = {id(p): j for j, p in enumerate(params[0].values())}
        self.order = [index[id(p)] for p in members[0].model.parameters()]
        self.trained = [index[id(p)] for p in trainable_parameters(members[0].model)]
        self.native_buffers: dict[str, torch.Tensor] = {}
        self.loss = loss_function(members[0].config.loss, members[0].config.loss_dtype)

    def logits(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               shared: bool = False) -> torch.Tensor:
        """tokens [run, batch, pos] (or [batch, pos] if shared) -> logits [run, batch, pos, d_vocab_out]."""
        template = self.members[0].model.original_model
        params = dict(zip(self.names, self.stacked))

        def one_run(params, tokens, attention_mask):
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
            # tie_weights=False: the bridge reaches some modules by two paths, and swapping a
            # parameter in twice would leave the batched tensor behind when it is swapped back.
            return functional_call(template, (params, self.native_buffers), (tokens,), kwargs, tie_weights=False)

        data = None if shared else 0
        return vmap(one_run, in_dims=(0, data, None if attention_mask is None else data))(params, tokens, attention_mask)

    def score(self, batch: dict, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.members[0].config.task.scored_positions
        logits = self.logits(batch["tokens"], batch.get("attention_mask"), shared=shared)[:, :, positions]
        targets = batch["targets"][..., positions]
        return vmap(self.loss, in_dims=(0, None if shared else 0))(logits, targets)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.stacked[j] for j in self.trained]

    def per_run(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(tensor.shape[0], -1)

    def run_weights(self, i: int) -> list[torch.Tensor]:
        return [self.stacked[j].detach()[i] for j in self.order]

    def run_grads(self, i: int) -> list[torch.Tensor]:
        return [self.stacked[j].grad[i] for j in self.trained if self.stacked[j].grad is not None]

    def scale_grads(self, scales: torch.Tensor) -> None:
        for j in self.trained:
            grad = self.stacked[j].grad
            if grad is not None:
                grad.mul_(scales.view(-1, *[1] * (grad.dim() - 1)))

    @torch.no_grad()
    def materialise(self) -> None:
        for i, member in enumerate(self.members):
            for param, stacked in zip(member.native_parameters().values(), self.stacked):
                param.copy_(stacked[i])

    def on_device(self, device) -> None:
        for member in self.members:
            member.model.to(device, print_details=False)
        self.native_buffers = dict(self.members[0].model.original_model.named_buffers())  # the same for every run

    # --- resumable checkpoints: one file per run, in the one-run format -------------------------------
    def run_checkpoint(self, checkpoint: dict, i: int) -> dict:
        self.materialise()
        part = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states", "loops")}
        part["state_dict"] = _as_one_run(self.members[i]).state_dict()
        part["optimizer_states"] = [_map_state(s, lambda t: t[i]) for s in checkpoint["optimizer_states"]]
        if "toytasks_batches" in checkpoint:
            part["toytasks_batches"] = _one_stream(checkpoint["toytasks_batches"], i)
        if PER_RUN_STATE in checkpoint:
            part[PER_RUN_STATE] = _map_tensors(checkpoint[PER_RUN_STATE], lambda t: t[i])
        part["loops"] = _with_loader_state(checkpoint["loops"], lambda state: _one_stream(state, i))
        return part

    def stack_checkpoints(self, parts: list[dict]) -> dict:
        for member, part in zip(self.members, parts):
            _as_one_run(member).load_state_dict(part["state_dict"])
        native = [member.native_parameters() for member in self.members]
        stacked = {f"{PREFIX}stacked.{j}": torch.stack([list(p.values())[j].detach() for p in native])
                   for j in range(len(self.names))}
        checkpoint = {k: v for k, v in parts[0].items() if k not in ("state_dict", "optimizer_states", "loops")}
        checkpoint["state_dict"] = stacked
        checkpoint["optimizer_states"] = [
            _stack_states([p["optimizer_states"][k] for p in parts]) for k in range(len(parts[0]["optimizer_states"]))]
        if "toytasks_batches" in parts[0]:
            checkpoint["toytasks_batches"] = _all_streams([p["toytasks_batches"] for p in parts])
        if PER_RUN_STATE in parts[0]:
            checkpoint[PER_RUN_STATE] = _stack_tensors([p[PER_RUN_STATE] for p in parts])
        loaders = [_loader_state(p["loops"]) for p in parts]
        checkpoint["loops"] = _with_loader_state(parts[0]["loops"], lambda _: _all_streams(loaders))
        return checkpoint


def _as_one_run(member: "Member") -> torch.nn.Module:
    """A run's model under the name a one-run module holds it (so: the same state-dict keys)."""
    return torch.nn.ModuleDict({"model": member.model})


def _strip(state: dict) -> dict:
    """The module's state-dict keys as a one-run checkpoint holds them (`model.<bridge key>`)."""
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}


def _one_stream(state: Optional[dict], i: int) -> Optional[dict]:
    return None if state is None else {"streams": [state["streams"][i]]}


def _all_streams(states: list[Optional[dict]]) -> Optional[dict]:
    return None if states[0] is None else {"streams": [s for state in states for s in state["streams"]]}


def _map_state(state: dict, per_run) -> dict:
    """An optimizer state dict with `per_run` applied to every per-parameter tensor (not `step`)."""
    return {"state": {k: {n: per_run(v) if torch.is_tensor(v) and v.dim() > 0 else v for n, v in s.items()}
                      for k, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def _stack_states(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {k: {n: torch.stack([s["state"][k][n] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v
                          for n, v in first["state"][k].items()} for k in first["state"]},
            "param_groups": first["param_groups"]}


def _map_tensors(tree, fn):
    """`tree` (nested dicts and lists) with `fn` applied to every tensor in it."""
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_map_tensors(v, fn) for v in tree]
    return fn(tree) if torch.is_tensor(tree) else tree


def _stack_tensors(trees: list):
    """The inverse of slicing run by run: the runs' trees of tensors stacked into one."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack_tensors([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        return [_stack_tensors([t[k] for t in trees]) for k in range(len(first))]
    return torch.stack(trees) if torch.is_tensor(first) else first


def _loader_state(loops: dict):
    """The data iterable's state inside Lightning's loop state (saved there too since it has one)."""
    return loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [None])[0]


def _with_loader_state(loops: dict, convert) -> dict:
    loops = copy.deepcopy(loops)
    state = loops.get("fit_loop", {}).get("state_dict", {})
    if state.get("combined_loader"):
        state["combined_loader"] = [convert(state["combined_loader"][0])]
    return loops
