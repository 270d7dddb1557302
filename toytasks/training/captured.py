"""A captured training step (`trainer.capture`): the step recorded once as CUDA graphs and replayed.

A model of a few hundred thousand parameters trained full-batch leaves a GPU almost idle: a step
is a few hundred small kernels, and what costs time is launching them from Python. Recorded as a
CUDA graph, a step is one launch. Three graphs, each recorded at its first use (after a resumed
run's state is loaded) and replayed from then on:

    train      forward, backward, the non-finite check, and the loss and accuracy written
               into a preallocated device buffer (MetricRing)
    update     RunsAdamW's update (optim.py), reading its step's learning rates and bias
               corrections from a table on the device, so nothing the host computes is frozen
               into the graph; then the device step counter moves on
    evaluate   the test loss and accuracy and the weight norm, into another buffer

Lightning drives them as it drives the eager step: `training_step` replays `train` and returns
None (so Lightning runs no backward pass of its own), and the optimizer's `step` replays
`update`; the learning-rate schedule, callbacks and checkpoints run as before. `train` and
`update` are two graphs rather than one so that what runs between backward and update
(Lightning's `on_before_optimizer_step`: gradient clipping, and whatever else a run does to its
gradients) runs there eagerly, in the eager step's order, on the gradients the graph wrote.
Clipping is left out of `train` for that reason: anything that changes the gradients before
clipping (Grokfast's filter, say) would otherwise see them clipped, unlike the eager step. The buffers are copied to the
host every `log_every` steps, with the eager path's other metrics: no step waits for the host.

The eager path stays the reference: `trainer.capture: off`. On a device without CUDA graphs
(the CPU, in the tests) the same functions run without being recorded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch

from ..config import Config
from ..errors import ConfigError, ToytasksError
from ..optim import RunsAdamW

if TYPE_CHECKING:
    from .module import ToyTaskModule

CAPTURE_DEVICES = ("cuda",)  # device types that get the captured step (tests add "cpu")
RECORD = True  # record CUDA graphs there; False runs the same step unrecorded (tests compare the two)


def why_not_capture(config: Config, device: torch.device) -> Optional[str]:
    """None if this run's step can be captured on `device`, else the reason."""
    if device.type not in CAPTURE_DEVICES:
        return f"needs a CUDA device, and this run trains on {device.type}"
    if not config.task.fixed_shape:
        return f"needs batches of one shape, and {config.task.name} varies them"
    if config.on_nonfinite != "stop":
        return "needs on_nonfinite: stop (skipping a step is decided on the host)"
    if config.trainer.world_size > 1:
        return "needs one device"
    return None


def recorded_on(device: torch.device) -> bool:
    """Does a captured step on `device` record CUDA graphs (rather than run its functions unrecorded)?"""
    return RECORD and device.type == "cuda"


def use_capture(config: Config, device: torch.device) -> bool:
    """`auto`: capture where it can be done; `on`: capture, or a one-line error saying why not."""
    mode = config.trainer.capture_mode
    if mode == "off":
        return False
    reason = why_not_capture(config, device)
    if reason is not None and mode == "on":
        raise ConfigError("trainer.capture", f"`on` {reason}; use auto or off")
    return reason is None


class Recorded:
    """`fn()`, recorded once as a CUDA graph and replayed by calling this; without recording (on
    the CPU) it is simply called. The warm-up run before recording (lazy initialisation, such as
    cuBLAS workspaces, must not happen inside a capture) changes the tensors in `mutated`: they are
    put back, so that recording takes no step of training. `before` runs just before the capture."""

    def __init__(self, fn: Callable[[], None], mutated: Sequence[torch.Tensor], record: bool,
                 before: Callable[[], None] = lambda: None):
        self.fn, self.graph = fn, None
        if not record:
            return
        saved = [t.detach().clone() for t in mutated]
        stream = torch.cuda.Stream()  # warm-up and capture on one stream: handles are cached per stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.no_grad():
            for tensor, value in zip(mutated, saved):
                tensor.copy_(value)
        before()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            fn()

    def __call__(self) -> None:
        if self.graph is None:
            self.fn()
        else:
            self.graph.replay()


class MetricRing:
    """Named [runs] metrics written on the device, one row per replay, copied out in one go.

    The row to write is a device counter the recorded function advances, so the graph writes
    each step's values to a new row; the host keeps the step number of every row."""

    def __init__(self, names: Sequence[str], runs: int, capacity: int, device: torch.device):
        self.names = list(names)
        self.values = torch.zeros(capacity, len(self.names), runs, dtype=torch.float64, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.steps: list[int] = []  # the step of each row written since the last drain
        self.spilled: dict[int, dict[str, list[float]]] = {}

    def write(self, values: dict[str, torch.Tensor]) -> None:
        """Inside the recorded function: the next row."""
        row = torch.stack([values[name].detach().to(torch.float64).reshape(-1) for name in self.names])
        self.values.index_copy_(0, self.slot, row[None])
        self.slot.add_(1)

    def written(self, step: int) -> None:
        """On the host, after a replay: that row was step `step`'s."""
        self.steps.append(step)
        if len(self.steps) == len(self.values):  # full before the module's next flush: copy out now
            rows = self.drain()  # (the earlier spilled rows included)
            self.spilled = rows

    def drain(self) -> dict[int, dict[str, list[float]]]:
        """{step: {name: [one value per run]}} of every row written, with one device-to-host copy."""
        rows = self.values[:len(self.steps)].tolist() if self.steps else []
        out = {**self.spilled, **{step: dict(zip(self.names, row)) for step, row in zip(self.steps, rows)}}
        self.steps, self.spilled = [], {}
        self.slot.zero_()
        return out


class CapturedStep:
    """The module's training step and evaluation, recorded (module.py calls it when capturing)."""

    def __init__(self, module: "ToyTaskModule"):
        self.module, self.runs = module, module.runs
        self.record = recorded_on(module.device)
        runs, capacity, device = len(module.members), module.config.log_every + 2, module.device
        self.step = torch.zeros((), dtype=torch.long, device=device)  # updates applied, on the device
        self.train_metrics = MetricRing(("train/loss", "train/acc"), runs, capacity, device)
        self.eval_metrics = MetricRing(("val/loss", "val/acc", "weights/sq_norm"), runs, capacity, device)
        self.batch: Optional[dict[str, torch.Tensor]] = None  # the static input of `train`
        self.train: Optional[Recorded] = None
        self.evaluation: Optional[Recorded] = None

    # --- training ----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> None:
        if self.train is None:
            self._record_training(batch, step)
        elif batch is not self.batch:
            for key, value in batch.items():
                if value.shape != self.batch[key].shape:
                    raise ToytasksError(f"trainer.capture: the batch's {key} changed shape from "
                                        f"{tuple(self.batch[key].shape)} to {tuple(value.shape)}; set trainer.capture=off")
                self.batch[key].copy_(value)
        self.train()
        self.train_metrics.written(step)

    def _record_training(self, batch: dict[str, torch.Tensor], step: int) -> None:
        module, optimizer = self.module, self.module.trainer.optimizers[0]
        if not isinstance(optimizer, RunsAdamW):
            raise RuntimeError("a captured step needs RunsAdamW")
        # A full batch is the same tensor every step; other batches are copied into a static one.
        self.batch = batch if module.shared_data else {k: v.clone() for k, v in batch.items()}
        self.step.fill_(step)
        params = self.runs.trainable()
        self.train = Recorded(self._forward_backward, [self.train_metrics.slot, module.first_nonfinite], self.record,
                              before=self._drop_grads)
        states = [optimizer.state[p][key] for p in params for key in ("exp_avg", "exp_avg_sq")]
        optimizer.recorded_update = Recorded(lambda: self._update(optimizer), [*params, *states, self.step],
                                             self.record)

    def _forward_backward(self) -> None:
        module = self.module
        self._drop_grads()
        loss, accuracy = self.runs.score(self.batch, shared=module.shared_data)  # [runs] each
        loss.sum().backward()  # clipping follows in the module's on_before_optimizer_step
        module.note_nonfinite(loss, self.step)
        self.train_metrics.write({"train/loss": loss, "train/acc": accuracy})

    def _drop_grads(self) -> None:
        """Fresh gradients, not added to the last step's: recorded, backward then allocates them
        from the graph's own memory, and each replay writes them in place."""
        for p in self.runs.trainable():
            p.grad = None

    def _update(self, optimizer: RunsAdamW) -> None:
        with torch.no_grad():
            optimizer.update(optimizer.table.index_select(0, self.step.view(1))[0])
            self.step.add_(1)

    # --- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int) -> None:
        if self.evaluation is None:
            self.evaluation = Recorded(lambda: self.eval_metrics.write(self.module.evaluation()),
                                       [self.eval_metrics.slot], self.record)
        self.evaluation()
        self.eval_metrics.written(step)

    def drain(self) -> dict[int, dict[str, list[float]]]:
        """Every pending row of both buffers, {step: {name: [one value per run]}}."""
        rows = self.train_metrics.drain()
        for step, row in self.eval_metrics.drain().items():
            rows.setdefault(step, {}).update(row)
        return rows
