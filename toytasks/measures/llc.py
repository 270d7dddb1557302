"""The local learning coefficient (LLC) at each checkpoint, estimated with devinterp's SGLD sampler.

    llc/mean   the estimate, averaged over the chains
    llc/std    its spread between the chains (devinterp's `llc_std`: the standard deviation, ddof 0)

The LLC (Lau et al. 2023) measures how degenerate the loss landscape is around a checkpoint w*:
roughly, how many directions the loss cares about (d/2 for a non-degenerate minimum in d
parameters, less where the model is simpler). devinterp (the Timaeus library) is the reference:
`devinterp.slt.llc.llc` samples SGLD chains from the tempered posterior localised at w*,

    p(w) ∝ exp(-n_beta L(w) - localization/2 |w - w*|^2),

each step w += -lr/2 (n_beta grad L_batch(w) + localization (w - w*)) + N(0, lr), and estimates

    LLC = n_beta (mean over every SGLD step of L_batch(w) - L(w*)),

exactly as its `compute_llc` does (every step of each chain counts, from the first). Here L is the
run's training loss (toytasks/loss.py: mean float64 cross-entropy over the scored targets) on its
training data (the stored train split; for a sampled task, `n_examples` drawn once from a seeded
generator), in batches of `batch_size`; only the trained parameters move (frozen biases stay).
The chains are seeded (chain c with `seed + c`, devinterp's `init_seed`), so the same command gives
the same numbers; the global random state is restored afterwards.

It is expensive (seconds per checkpoint), so it is off unless asked for: `toytasks measure RUN_DIR
--with llc` (settings as `llc.num_draws=400` after it), or during training every N steps with
`measures: {llc: {every: 500}}`. Offline, it skips the checkpoints already estimated with the same
settings (an interrupted run goes on where it stopped; a second run changes nothing) and keeps the
per-chain loss traces of the steps listed in `traces` (in RUN_DIR/llc/traces.csv; `toytasks plot`
draws them). The defaults were calibrated on the grokking_cpu run (README, "Developmental analysis";
scripts/llc_calibration.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError, ToytasksError
from ..loss import loss_and_accuracy
from ..schema import to_plain
from ..tasks import batch_from_split
from . import Measure, MeasureOptions, register

INSTALL = 'the llc measure needs devinterp: pip install -e ".[devinterp]"'
SETTINGS_FILE, TRACES_FILE = "settings.json", "traces.csv"  # in RUN_DIR/llc/


@dataclasses.dataclass(frozen=True)
class LLCOptions(MeasureOptions):
    lr: float = 1e-3
    """SGLD step size (devinterp's `lr`, epsilon). On grokking_cpu 3e-3 diverges and 3e-4 has not
    settled in 150 steps (README, "Developmental analysis")."""
    n_beta: float = 30.0
    """Inverse temperature n*beta (devinterp's `n_beta`)."""
    localization: float = 100.0
    """Strength gamma of the pull back towards the checkpoint's weights."""
    num_chains: int = 4
    """Independent SGLD chains per checkpoint (their spread is llc/std)."""
    num_draws: int = 100
    """SGLD steps per chain; every one counts in the estimate (the first ~20 are the chain settling)."""
    batch_size: int = 64
    """Training examples per SGLD step."""
    seed: int = 0
    """Chain c draws its noise and batches from seed + c."""
    n_examples: int = 1024
    """Sampled tasks: how many training examples to draw once (finite tasks use their train split)."""
    traces: list[int] = dataclasses.field(default_factory=list)
    """Checkpoint steps whose per-chain loss traces `toytasks measure` keeps (RUN_DIR/llc/traces.csv)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("lr", "n_beta"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.localization < 0:
            raise ConfigError("localization", f"must be non-negative, got {self.localization}")
        for name in ("num_chains", "num_draws", "batch_size", "n_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")

    def sampler_settings(self) -> dict:
        """What changes the numbers (not `every` or `traces`, which choose what is kept)."""
        return {k: v for k, v in to_plain(self).items() if k not in ("every", "traces")}


@register
class LLCMeasure(Measure):
    """The LLC of the training loss at a checkpoint (devinterp's estimator)."""

    name = "llc"
    Options = LLCOptions
    prefixes = ("llc/",)
    by_default = False  # seconds per checkpoint: computed when asked for

    def __init__(self, options: LLCOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        if dataset is not None:
            self.data = batch_from_split(dataset["train"])
        else:  # a sampled task: a fixed "training set" from a generator of its own
            self.data = self.task.sample(options.n_examples, torch.Generator().manual_seed(options.seed))
        positions = self.task.scored_positions

        def loss(model, batch):  # the training loss (replicas.OneRun.score), on the native module
            logits = model(batch["tokens"], attention_mask=batch.get("attention_mask"))
            return loss_and_accuracy(logits[:, positions], batch["targets"][:, positions])[0]

        self.loss = loss
        self.last: Optional[dict] = None  # the newest estimate, with its traces

    def __call__(self, model) -> dict[str, torch.Tensor]:
        """llc/mean and llc/std at this model (a bridge); a host sync, unlike the cheap measures."""
        self.last = estimate_llc(model.original_model, self.loss, self.data, self.options)
        device = model.W_E.device
        return {"llc/mean": torch.tensor(self.last["mean"], device=device),
                "llc/std": torch.tensor(self.last["std"], device=device)}

    def measure_series(self, model_at: Callable, steps: list[int]):
        """(step, row) for each due checkpoint, as it is estimated (so an interrupted run keeps what
        it computed); steps estimated before with the same settings are skipped, offline."""
        todo = [step for step in steps if self.due(step, frozenset(steps))]
        done, stale = self._done_steps()
        self._write_settings()
        for step in sorted(stale - set(todo)):  # values from other settings that are not redone
            yield step, {"llc/mean": math.nan, "llc/std": math.nan}
        for step in todo:
            if step in done and (step not in self.options.traces or step in self._traced_steps()):
                continue
            row = {k: v.item() for k, v in self(model_at(step)).items()}
            if step in self.options.traces:
                self._keep_traces(step, self.last)
            yield step, row

    # --- offline bookkeeping in RUN_DIR/llc/ (only when built for a saved run: self.paths) ------
    def _done_steps(self) -> tuple[set[int], set[int]]:
        """Steps with llc values in the table computed with these sampler settings, and those
        computed with others (whose traces are then dropped too)."""
        if self.paths is None or not self.paths.metrics.exists():
            return set(), set()
        from ..metrics_table import read_rows

        valued = {step for step, row in read_rows(self.paths.metrics).items()
                  if math.isfinite(row.get("llc/mean", math.nan))}
        settings = self.paths.measure_dir(self.name) / SETTINGS_FILE
        if settings.exists() and json.loads(settings.read_text()) == self.options.sampler_settings():
            return valued, set()
        (self.paths.measure_dir(self.name) / TRACES_FILE).unlink(missing_ok=True)
        return set(), valued

    def _write_settings(self) -> None:
        if self.paths is not None:
            from ..storage import write_json

            self.paths.measure_dir(self.name).mkdir(exist_ok=True)
            write_json(self.paths.measure_dir(self.name) / SETTINGS_FILE, self.options.sampler_settings())

    def _traced_steps(self) -> set[int]:
        traces = read_traces(self.paths) if self.paths is not None else None
        return set() if traces is None else set(traces["step"])

    def _keep_traces(self, step: int, result: dict) -> None:
        """Add this checkpoint's per-chain loss traces to RUN_DIR/llc/traces.csv (long format)."""
        if self.paths is None:
            return
        import pandas as pd

        from ..files import write_atomically

        trace = result["trace"]  # [chain, sgld step]
        chains, sgld_steps = np.meshgrid(np.arange(trace.shape[0]), np.arange(trace.shape[1]), indexing="ij")
        rows = pd.DataFrame({"step": step, "chain": chains.ravel(), "sgld_step": sgld_steps.ravel(),
                             "loss": trace.ravel(), "init_loss": result["init_loss"],
                             "llc": np.repeat(result["per_chain"], trace.shape[1])})
        old = read_traces(self.paths)
        table = rows if old is None else pd.concat([old[old["step"] != step], rows]).sort_values(["step", "chain", "sgld_step"])
        path = self.paths.measure_dir(self.name) / TRACES_FILE
        write_atomically(path, lambda tmp: table.to_csv(tmp, index=False))

    # --- figures ---------------------------------------------------------------------------
    @classmethod
    def figures(cls, run) -> dict:
        figures = {}
        if "llc/mean" in run.metrics.columns:
            figures["llc.png"] = llc_over_training(run)
        traces = read_traces(run.paths)
        if traces is not None:
            figures["llc_traces.png"] = llc_traces(traces)
        return figures


# --- the estimate ----------------------------------------------------------------------------------

def estimate_llc(model: torch.nn.Module, loss: Callable, data: dict[str, torch.Tensor], options: LLCOptions) -> dict:
    """devinterp's LLC estimate at `model`'s weights for `loss(model, batch) -> 0-d tensor`, a batch
    being rows of the tensors in `data` ({name: [n, ...]}). Returns {"mean", "std", "per_chain"
    [chains], "trace" [chains, steps] (each step's batch loss), "init_loss"}; the model is not changed."""
    llc = _devinterp_llc()
    from datasets import Dataset

    # devinterp reads batches of one "input_ids" column and asks a per-token loss of shape
    # [batch, columns - 1]: pack the batch's tensors side by side, unpack them in the loss, and
    # give the batch's loss at every "token" (their mean, which devinterp takes, is the loss).
    names = list(data)
    flat = {name: data[name].reshape(len(data[name]), -1).long().cpu() for name in names}
    widths = [flat[name].shape[1] for name in names]
    shapes = {name: tuple(data[name].shape[1:]) for name in names}
    packed = torch.cat([flat[name] for name in names], dim=1)
    if packed.shape[1] < 2:  # devinterp needs two "tokens" a row
        packed, widths = torch.cat([packed, torch.zeros_like(packed)], dim=1), widths + [1]
    dataset = Dataset.from_dict({"input_ids": packed.numpy()}).with_format("torch")
    batch_size = min(options.batch_size, len(dataset))
    device = next(model.parameters()).device

    def per_token_loss(sampled: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        parts = input_ids.to(device).split(widths, dim=1)
        batch = {name: part.reshape(len(part), *shapes[name]) for name, part in zip(names, parts)}
        value = loss(sampled.model, batch)
        _release_captures(reference)
        return value.expand(input_ids.shape[0], input_ids.shape[1] - 1)

    reference = _Sampled(model)  # a wrapper without `cfg`, so devinterp moves it as a plain module
    trainable = {name: None for name, p in reference.named_parameters() if p.requires_grad}
    # enable_grad: SGLD needs gradients, also where the caller turned them off (the notebooks do)
    with tempfile.TemporaryDirectory(prefix="toytasks-llc-") as tmp, _quiet(), _global_rng_kept(device), \
            torch.enable_grad():
        result = llc(
            model=reference, dataset=dataset, observables={}, loss_fn=per_token_loss, param_masks=trainable,
            lr=options.lr, n_beta=options.n_beta, localization=options.localization,
            num_chains=options.num_chains, num_draws=options.num_draws, batch_size=batch_size,
            # L(w*) over one pass of the batches the chains cycle through (devinterp replays one
            # shuffled epoch), so that the chains' mean loss and L(w*) see the same examples.
            num_init_loss_batches=max(1, len(dataset) // batch_size),
            init_seed=options.seed, device=str(device), output_path=Path(tmp) / "samples.zarr",
        )
        _release_captures(reference)  # what the last chain's copy left there
        out = {"mean": float(result["llc_mean"]), "std": float(result["llc_std"]),
               "per_chain": np.asarray(result["llc_per_chain"].values, dtype=float),
               "trace": np.asarray(result["loss_trace"].values, dtype=float),
               "init_loss": float(result["init_loss"])}
    return out


class _Sampled(torch.nn.Module):
    """What devinterp copies and moves per chain: the native module, wrapped."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


def _release_captures(module: torch.nn.Module) -> None:
    """Drop the residual that TransformerLens' attention bridge captures in a forward pass (a
    tensor in the autograd graph, `_captured_pre_ln_residual`). devinterp deep-copies the model for
    each chain, and the copy's capture hook (a closure over a weak proxy of the original's
    attention) still writes into the original, where nothing clears it; deepcopy refuses such
    tensors when the next chain copies the original."""
    for sub in module.modules():
        if getattr(sub, "_captured_pre_ln_residual", None) is not None:
            sub._captured_pre_ln_residual = None


def _devinterp_llc():
    try:
        from devinterp.slt.llc import llc
    except ImportError:
        raise ToytasksError(INSTALL) from None
    return llc


@contextlib.contextmanager
def _quiet():
    """devinterp without its progress bar per chain, its warnings about our (deliberate) choices,
    and the `gc.collect()` it runs before and after each chain to free GPU memory for large models:
    in a process that has imported transformers and datasets that takes seconds, more than a
    chain of these small models (measured on a 2-core CPU: 4 s a call). The numbers are unchanged."""
    import devinterp.slt.sampler as sampler
    from tqdm import trange

    saved = sampler.trange, sampler._gc_and_empty_cache
    sampler.trange = lambda *args, **kwargs: trange(*args, **{**kwargs, "disable": True})
    sampler._gc_and_empty_cache = lambda: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sampler.trange, sampler._gc_and_empty_cache = saved


@contextlib.contextmanager
def _global_rng_kept(device: torch.device):
    """devinterp seeds the global random generators (torch, numpy, random) for its chains: put
    them back as they were, so that measuring never changes what runs after it."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


# --- reading and drawing -----------------------------------------------------------------------------

def read_traces(paths):
    """RUN_DIR/llc/traces.csv as a DataFrame (step, chain, sgld_step, loss, init_loss, llc), or None."""
    path = paths.measure_dir(LLCMeasure.name) / TRACES_FILE
    if not path.exists():
        return None
    import pandas as pd

    return pd.read_csv(path)


def llc_over_training(run, ax=None):
    """The LLC (mean over chains, with +-1 std between chains) against the step, the train and test
    loss on a log axis behind it, and the grokking phases (when there are any)."""
    from ..plots import phase_lines, plt

    metrics = run.metrics
    rows = metrics.dropna(subset=["llc/mean"])
    fig, ax = plt.subplots(figsize=(9, 4.5)) if ax is None else (ax.figure, ax)
    loss_ax = ax.twinx()
    for column, label, color in (("train/loss", "train loss", "tab:blue"), ("val/loss", "test loss", "tab:orange")):
        if column in metrics.columns:
            losses = metrics.dropna(subset=[column])
            loss_ax.plot(losses["step"], losses[column], color=color, alpha=0.35, linewidth=1, label=label)
    loss_ax.set(yscale="log", ylabel="loss")
    ax.set_zorder(loss_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.fill_between(rows["step"], rows["llc/mean"] - rows["llc/std"], rows["llc/mean"] + rows["llc/std"],
                    color="tab:green", alpha=0.25, linewidth=0)
    ax.plot(rows["step"], rows["llc/mean"], "o-", color="tab:green", markersize=3, label="LLC (mean ± std over chains)")
    ax.set(xlabel="step", ylabel="estimated LLC", title="Local learning coefficient over training")
    phase_lines(ax, run_phases(run))
    lines = ax.get_legend_handles_labels()
    losses = loss_ax.get_legend_handles_labels()
    ax.legend(lines[0] + losses[0], lines[1] + losses[1], fontsize=8, loc="center right")
    return fig


def run_phases(run) -> dict:
    """The steps to mark: the grokking phases (toytasks.phases, as phases.json holds them) when the
    run has them, else when it memorised and generalised."""
    from ..phases import estimate_phases, milestones

    phases = estimate_phases(run.metrics)
    return phases if any(step is not None for step in phases.values()) else milestones(run.metrics)


def llc_traces(traces):
    """Each chain's batch loss along its SGLD steps, one panel per kept checkpoint, with L(w*)
    dashed: settled chains are flat after their first steps, and stay above the dashed line."""
    from ..plots import plt

    steps = sorted(traces["step"].unique())
    fig, axes = plt.subplots(1, len(steps), figsize=(min(4.5 * len(steps), 18), 3.8), squeeze=False)
    for ax, step in zip(axes[0], steps):
        kept = traces[traces["step"] == step]
        for chain, rows in kept.groupby("chain"):
            ax.plot(rows["sgld_step"], rows["loss"], linewidth=0.8, label=f"chain {chain}")
        ax.axhline(kept["init_loss"].iloc[0], color="black", linestyle="--", linewidth=1, label="L(w*)")
        per_chain = kept.groupby("chain")["llc"].first()
        ax.set(title=f"step {step}: LLC {per_chain.mean():.1f} ± {per_chain.std(ddof=0):.1f}",
               xlabel="SGLD step", ylabel="batch loss", yscale="log")
    axes[0][0].legend(fontsize=7)
    return fig
