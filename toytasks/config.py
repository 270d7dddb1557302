"""Typed, validated experiment configs: one YAML file per experiment plus `key=value` overrides.

A config is a tree of frozen dataclasses. `__post_init__` only validates: values that depend on
other values (the model seed when it is left empty, the vocabulary size) are resolved where they
are used, so an override can never leave a stale derived value behind.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .errors import ConfigError, ToytasksError, first_line, short
from .schema import build, to_plain
from .tasks import Task, task_from_config

NORMALIZATIONS = (None, "LN", "LNPre", "RMS", "RMSPre")
ATTENTION = ("causal", "bidirectional")
LOSSES = ("softmax", "stablemax")
LOSS_DTYPES = ("float64", "float32")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "solu")
MAX_NAME = 100  # characters of an experiment name (a directory name; most file systems allow 255)
MAX_YAML_NODES = 100_000  # values a YAML text may stand for once its aliases are expanded


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 1
    """Transformer blocks."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer."""
    d_head: int = 32
    """Width of each head."""
    d_mlp: int = 512
    """MLP hidden width (unused when attn_only)."""
    act_fn: str = "relu"
    """MLP activation: relu, gelu, gelu_new, silu or solu."""
    normalization: Optional[str] = None
    """null (none), LN, LNPre, RMS or RMSPre."""
    attention: str = "causal"
    """causal, or bidirectional (every position sees every other)."""
    attn_only: bool = False
    """No MLP layers."""
    freeze_biases: bool = False
    """Keep every bias at its initial value, zero (the grokking seed does this)."""
    zero_pos_embed: bool = False
    """Positional embeddings set to zero and frozen (the no-position experiment)."""
    seed: Optional[int] = None
    """Seed of the weight initialisation; null means the run's top-level seed."""
    init: str = "hooked"
    """Initial weights: `hooked`, exactly those TransformerLens 3's `HookedTransformer(cfg)` draws for
    the same architecture and seed (the seed notebooks' models: every W_* from N(0, 0.8/sqrt(d_model))
    in its order); `native`, TransformerLens 4's `boot_native` (which also scales W_O and W_out by
    1/sqrt(2 n_layers)). Biases start at zero and LayerNorm weights at one with both."""
    init_scale: float = 1.0
    """Multiply every initial parameter by this factor, after `init` (Omnigrok, Liu et al. 2023:
    a large initial weight norm makes a model grok late; a small one generalises early)."""

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if not 0 < self.init_scale < float("inf"):
            raise ConfigError("init_scale", f"must be positive and finite, got {self.init_scale}")
        _check_choice("init", self.init, ("hooked", "native"))
        _check_choice("act_fn", self.act_fn, ACTIVATIONS)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("attention", self.attention, ATTENTION)


@dataclasses.dataclass(frozen=True)
class GrokfastConfig:
    """Grokfast (Lee et al. 2024): before each optimizer step, every gradient g becomes
    g + lamb * (a low-pass filter of the gradients so far), as in its `gradfilter_ema` /
    `gradfilter_ma` (toytasks/interventions/grokfast.py)."""

    filter: str
    """`ema`: an exponential moving average, started at the first gradient; `ma`: the mean of the
    last `window` gradients, applied once `window` gradients have been seen."""
    lamb: float
    """The amplification (the paper's lambda; its values: 2.0 with ema, 5.0 with ma)."""
    alpha: float = 0.98
    """ema: the weight of the past, ema <- alpha * ema + (1 - alpha) * g."""
    window: int = 100
    """ma: how many of the latest gradients are averaged."""

    def __post_init__(self):
        _check_choice("filter", self.filter, ("ema", "ma"))
        if not 0 <= self.lamb < float("inf"):
            raise ConfigError("lamb", f"must be non-negative and finite, got {self.lamb}")
        if not 0 <= self.alpha < 1:
            raise ConfigError("alpha", f"must be in [0, 1), got {self.alpha}")
        if self.window < 1:
            raise ConfigError("window", f"must be at least 1, got {self.window}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1.0
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW's betas."""
    warmup_steps: int = 0
    """Linear warmup: lr * min(step / warmup_steps, 1); 0 for none."""
    schedule: str = "constant"
    """After the warmup: `constant`, or `cosine` decay to zero at max_steps."""
    grad_clip: Optional[float] = None
    """Clip the gradient norm to this value; null for no clipping."""
    grokfast: Optional[GrokfastConfig] = None
    """Amplify the slow part of the gradients: `{filter: ema, alpha: 0.98, lamb: 2.0}` or
    `{filter: ma, window: 100, lamb: 5.0}` (Lee et al. 2024); null for off."""
    orthograd: bool = False
    """⊥Grad (Prieto et al. 2025): remove from each parameter's gradient its component along the
    parameter, then rescale it to the gradient's norm (after Grokfast, before clipping)."""
    fixed_weight_norm: bool = False
    """After every optimizer step, rescale the trained weights to their initial total norm
    (Omnigrok, Liu et al. 2023), each run of an ensemble to its own."""

    def __post_init__(self):
        if not self.lr > 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be non-negative, got {self.weight_decay}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ConfigError(f"betas[{i}]", f"must be in [0, 1), got {beta}")
        _check_choice("schedule", self.schedule, ("constant", "cosine"))
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be non-negative, got {self.warmup_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError("grad_clip", f"must be positive or null, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    """Save the weights every this many steps (step 0 and the last step are always saved)."""
    log_spaced: bool = False
    """Also save at steps 1, 2, 4, 8, ... below `every` (for the fast early dynamics)."""
    steps: list[int] = dataclasses.field(default_factory=list)
    """Extra steps to save at."""
    resume_every: int = 1000
    """Write the resumable checkpoint (weights + optimizer) every this many steps and at the end."""

    def __post_init__(self):
        if self.every < 1:
            raise ConfigError("every", f"must be at least 1, got {self.every}")
        if self.resume_every < 1:
            raise ConfigError("resume_every", f"must be at least 1, got {self.resume_every}")
        for i, step in enumerate(self.steps):
            if step < 0:
                raise ConfigError(f"steps[{i}]", f"must be non-negative, got {step}")

    def schedule(self, max_steps: int) -> list[int]:
        """The sorted steps of the series: 0, every `every`, the log-spaced ones, the extras, the last."""
        steps = set(range(0, max_steps + 1, self.every)) | {0, max_steps} | set(self.steps)
        if self.log_spaced:
            power = 1
            while power < min(self.every, max_steps):
                steps.add(power)
                power *= 2
        return sorted(steps)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How Lightning runs a single run: which accelerator, how many devices and machines."""

    accelerator: str = "auto"
    """auto (a GPU when there is one, else the CPU), cpu, gpu, cuda or mps."""
    devices: int = 1
    """Devices per machine. With more than one, Lightning's DDP trains one process per device;
    each draws its own batches (batch_size is per device), and a full batch is computed on every
    device alike, so extra devices help sampled and mini-batch runs only."""
    num_nodes: int = 1
    """Machines (a SLURM allocation started with `srun`), each running `devices` processes."""
    strategy: str = "auto"
    """auto (Lightning's choice: DDP for several devices) or ddp."""
    capture: Any = "auto"
    """Record the training step once as CUDA graphs and replay it (toytasks/training/captured.py):
    `auto` does so on a CUDA device when the task's batches have one shape (every task's do) and
    the run is on one device with on_nonfinite: stop; `on` (YAML reads it as true) insists, with
    an error where it cannot; `off` (false) runs the eager step, the reference. The two agree to
    float rounding, not bit for bit."""

    def __post_init__(self):
        _check_choice("accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
        if not (isinstance(self.capture, bool) or self.capture in ("auto", "on", "off")):
            raise ConfigError("capture", f"must be auto, on (true) or off (false), got {self.capture!r}")
        _check_choice("strategy", self.strategy, ("auto", "ddp"))
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")

    @property
    def capture_mode(self) -> str:
        """auto, on or off (YAML reads `on` and `off` as true and false)."""
        if isinstance(self.capture, bool):
            return "on" if self.capture else "off"
        return self.capture

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


@dataclasses.dataclass(frozen=True)
class Config:
    task: Task
    """The task and its hyperparameters: `{name: modular_addition, p: 113, ...}`."""
    max_steps: int
    """Optimizer steps to train for."""
    seed: int = 0
    """The run's seed: data sampling, and the model's initialisation unless model.seed is set."""
    seeds: Optional[list[int]] = None
    """Train these seeds at once, as an ensemble in one process (toytasks/ensemble/): one run
    directory per seed, each the same as a run of this config with `seed: s`. `seed` is unused."""
    out_dir: str = "checkpoints"
    """Root of the run directories: OUT_DIR/<experiment>/<run_id>/."""
    experiment: str = "default"
    """Name of the experiment (the YAML file's name unless given)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    checkpoints: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    measures: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Progress measures computed during training, by name, each with its options:
    `{fourier: {}, heads: {every: 50}}`. Each is one file in toytasks/measures/, which documents
    its options and checks that it applies to the task and model; one left out (or null) is off."""
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    batch_size: Optional[int] = None
    """Examples per step; null trains on the whole train split every step (full batch)."""
    eval_every: int = 1
    """Compute the test loss and accuracy every this many steps (the seed does it every step)."""
    log_every: int = 100
    """Copy the metrics from the device and write them out every this many steps."""
    matmul_precision: str = "highest"
    """float32 matmuls: `highest` (strict float32, the default), or `high` / `medium` to allow
    TF32 / bf16 internally on GPUs that have them (faster; reported to move the grokking step)."""
    on_nonfinite: str = "stop"
    """A NaN or infinite training loss: `stop` (exit 3, the last good checkpoint kept) or `skip`
    the step (costs a host sync per step)."""
    loss: str = "softmax"
    """The training loss: `softmax` cross-entropy, or `stablemax` cross-entropy (Prieto et al.
    2025): s(x) = x + 1 for x >= 0 and 1 / (1 - x) below, probabilities s(x_i) / sum_j s(x_j)."""
    loss_dtype: str = "float64"
    """The precision of the loss's (stable)softmax: float64 as in the grokking seed, or float32 (where
    a memorised example's loss rounds to exactly zero: softmax collapse, Prieto et al. 2025)."""

    def __post_init__(self):
        if self.max_steps < 1:
            raise ConfigError("max_steps", f"must be at least 1, got {self.max_steps}")
        for name in ("eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1 or null, got {self.batch_size}")
        _check_choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _check_choice("matmul_precision", self.matmul_precision, ("highest", "high", "medium"))
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("loss_dtype", self.loss_dtype, LOSS_DTYPES)
        late = [s for s in self.checkpoints.steps if s > self.max_steps]
        if late:
            raise ConfigError("checkpoints.steps", f"step {late[0]} is past max_steps={self.max_steps}")
        for name, options in self.measures.items():
            if not isinstance(options, dict):
                raise ConfigError(f"measures.{name}", f"expected a mapping of options (or null for off), got {short(options)}")
        _check_name("experiment", self.experiment)
        if self.trainer.world_size > 1 and self.on_nonfinite == "skip":
            raise ConfigError("on_nonfinite", "`skip` needs one device (a skipped step would stall DDP)")
        if self.trainer.capture_mode == "on" and (self.on_nonfinite != "stop" or self.trainer.world_size > 1):
            raise ConfigError("trainer.capture", "`on` needs one device and on_nonfinite: stop")
        if self.seeds is not None:
            self._check_ensemble()

    def _check_ensemble(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds", "must list at least one seed, or be null for a single run")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must be distinct, got {self.seeds}")
        # One optimizer step updates every seed, so a step cannot be skipped for one seed alone.
        if self.on_nonfinite != "stop":
            raise ConfigError("on_nonfinite", "an ensemble (seeds) supports only `stop`")
        if self.trainer.world_size != 1:
            raise ConfigError("trainer.devices", "an ensemble (seeds) trains on one device")

    @property
    def members(self) -> list["Config"]:
        """The single runs this config stands for: itself, or one per seed of an ensemble."""
        if self.seeds is None:
            return [self]
        return [dataclasses.replace(self, seed=seed, seeds=None) for seed in self.seeds]

    @property
    def model_seed(self) -> int:
        return self.seed if self.model.seed is None else self.model.seed

    def to_dict(self) -> dict[str, Any]:
        data = to_plain(self)
        data["task"] = {"name": self.task.name, **data["task"]}
        if self.seeds is None:  # a single run's config.yaml names its seed only
            del data["seeds"]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_id(self) -> str:
        """A short hash of everything that changes the result, plus the seed; never the clock."""
        identity = {k: v for k, v in self.to_dict().items() if k != "out_dir"}
        # The accelerator and the captured step are where and how a run trains, not what it
        # computes; the other trainer fields count only when they differ from the defaults, so
        # runs keep the ids they had before the trainer section existed.
        defaults = to_plain(TrainerConfig())
        trainer = {k: v for k, v in identity.pop("trainer").items()
                   if k not in ("accelerator", "capture") and v != defaults[k]}
        if trainer:
            identity["trainer"] = trainer
        for key in COUNTED_WHEN_SET:  # off by default: earlier runs keep their ids
            *sections, name = key.split(".")
            section = functools.reduce(dict.get, sections, identity)
            if section[name] == field_default(key):
                del section[name]
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return f"{digest}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.experiment / self.run_id


# Fields added after runs had been trained: a run's id counts them only when they are not at their
# default, so a run trained before they existed keeps its id (and `--resume` finds it).
COUNTED_WHEN_SET = ("loss", "loss_dtype", "model.init_scale", "optim.grokfast", "optim.orthograd",
                    "optim.fixed_weight_norm")


@functools.cache
def field_default(key: str) -> Any:
    """The default of a dotted Config field (`optim.orthograd` -> False, `optim.grokfast.alpha` ->
    0.98), as plain data; dataclasses.MISSING for a field without one (`task.p`, `optim.grokfast.lamb`)."""
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        hint = typing.get_type_hints(cls).get(section) if dataclasses.is_dataclass(cls) else None
        cls = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # Optional[X] -> X
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if name not in fields:
        return dataclasses.MISSING
    field = fields[name]
    if field.default is not dataclasses.MISSING:
        return to_plain(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return to_plain(field.default_factory())
    return dataclasses.MISSING


def config_from_dict(data: Any) -> Config:
    """Validate plain data (a parsed YAML file) into a Config."""
    if not isinstance(data, dict):
        raise ConfigError("", f"a config must be a mapping of fields, got {type(data).__name__}")
    task = task_from_config(data.get("task"))
    measures = data.get("measures") or {}
    if not isinstance(measures, dict):
        raise ConfigError("measures", f"expected a mapping of measure names to options, got {short(measures)}")
    measures = {str(name): options for name, options in measures.items() if options is not None}  # null: off
    return build(Config, {**data, "task": task, "measures": measures})


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides (dotted keys, YAML values), validate.

    A run directory's own config.yaml stands for that directory wherever it is (moved, copied,
    or named from another working directory): `toytasks train RUN_DIR/config.yaml --resume`
    resumes RUN_DIR, whatever `out_dir` the file holds."""
    path = Path(path)
    if not path.is_file():
        raise ToytasksError(f"{path}: config file not found")
    data = read_yaml(path)
    data.setdefault("experiment", path.stem)
    config = config_from_dict(apply_overrides(data, overrides))
    run_dir = path.parent
    if (path.name == "config.yaml" and run_dir.resolve().name == config.run_id
            and run_dir.resolve().parent.name == config.experiment and not _same_dir(config.run_dir, run_dir)):
        config = dataclasses.replace(config, out_dir=os.path.abspath(run_dir.parent.parent))
    return config


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as a number the way YAML 1.2 does (PyYAML: a string)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    """YAML text as plain data, refusing an alias bomb: a few hundred characters whose aliases
    stand for millions of values (they would be expanded when the config is hashed or printed)."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ToytasksError(f"its aliases expand to more than {MAX_YAML_NODES:,} values")
        return loader.construct_document(node)
    except RecursionError:
        raise ToytasksError("nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict) -> int:
    """How many values `node` stands for with every alias expanded (each shared node counted once
    per use, computed once: the cost is that of the text, not of the expansion)."""
    if id(node) not in sizes:
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node met again while being sized is a cycle
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1
        for child in children:
            total += _expanded_size(child, sizes)
            if total > MAX_YAML_NODES:
                break
        sizes[id(node)] = total
    return sizes[id(node)]


def read_yaml(path: Path) -> dict:
    """A YAML file holding a mapping, as plain data."""
    try:
        data = parse_yaml(path.read_text())
    except (yaml.YAMLError, ValueError, ToytasksError) as error:  # ValueError: not text, or a 5,000-digit number
        raise ToytasksError(f"{path}: not valid YAML ({first_line(error)})") from None
    except OSError as error:
        raise ToytasksError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise ToytasksError(f"{path}: expected a mapping of config fields at the top level")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set `a.b=value` items in a copy of nested data; each value is read as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ToytasksError(f"override {short(item)}: expected key=value, e.g. optim.lr=3e-3")
        try:
            value = parse_yaml(text) if text.strip() else None
        except (yaml.YAMLError, ValueError, ToytasksError) as error:
            raise ToytasksError(f"override {short(item)}: value is not valid YAML ({first_line(error)})") from None
        set_dotted(data, key.strip(), value, f"override {short(item)}")
    return data


def set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    """`data[a][b] = value` for the key `a.b`, creating sections on the way (in place)."""
    *sections, name = key.split(".")
    node = data
    for depth, section in enumerate(sections):
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ToytasksError(f"{where}: {'.'.join(sections[:depth + 1])} is not a section")
    node[name] = value


def _check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(field, f"must be one of {shown}, got {short(value)}")


def _check_name(field: str, name: str) -> None:
    """A name that becomes one directory: no path separator, not `.`/`..`/hidden, not too long."""
    if (not name or name.startswith(".") or len(name) > MAX_NAME or not name.isprintable()
            or any(c in name for c in "/\\")):
        raise ConfigError(field, f"must be a name of 1 to {MAX_NAME} printable characters, without '/' or "
                                 f"'\\' and not starting with '.', got {short(name)}")
