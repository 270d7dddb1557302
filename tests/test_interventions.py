"""The grokking interventions: each switch's known answer, its effect inside a real training step,
single runs and seed ensembles alike, resuming, and the default path left as it was."""
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import CONFIGS
from test_ensemble import assert_same_run
from test_train import _stop_at
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.config import GrokfastConfig
from toytasks.interventions.fixed_norm import FixedWeightNorm, squared_norm
from toytasks.interventions.grokfast import Grokfast
from toytasks.interventions.orthograd import orthogonalise
from toytasks.loss import log_stablemax, loss_and_accuracy, stablemax_s
from toytasks.measures.softmax_collapse import collapsed_fraction
from toytasks.model import build_model
from toytasks.tasks import IGNORE
from toytasks.training import train, train_runs

GROKKING = CONFIGS / "grokking_cpu.yaml"
TINY = ["task.p=7", "model.d_model=16", "model.d_head=4", "model.d_mlp=32", "checkpoints.every=5",
        "checkpoints.resume_every=10", "log_every=5", "measures={}"]


def one_run(t):  # the one-run view: the whole tensor is one row
    return t.view(1, -1)


def stacked(t):  # the ensemble view: a row per run along the first dimension
    return t.view(t.shape[0], -1)


# --- Grokfast ----------------------------------------------------------------------------------

def test_ema_filter_of_a_constant_gradient_is_1_plus_lamb_times_it():
    g = torch.randn(5, 3)
    grokfast = Grokfast(GrokfastConfig(filter="ema", lamb=2.0, alpha=0.98))
    for _ in range(200):
        grad = g.clone()
        grokfast([grad])
    torch.testing.assert_close(grad, 3.0 * g)


def test_ema_filter_follows_its_recursion():
    """h starts at the first gradient (the reference's), then h <- alpha h + (1 - alpha) g."""
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    grokfast = Grokfast(GrokfastConfig(filter="ema", lamb=2.0, alpha=0.9))
    first, second = g1.clone(), g2.clone()
    grokfast([first])
    grokfast([second])
    torch.testing.assert_close(first, g1 + 2.0 * g1)
    torch.testing.assert_close(second, g2 + 2.0 * (0.9 * g1 + 0.1 * g2))


def test_ma_filter_waits_for_a_full_window_then_adds_lamb_times_its_mean():
    grokfast = Grokfast(GrokfastConfig(filter="ma", lamb=5.0, window=3))
    gradients = [torch.tensor([float(i), -float(i)]) for i in range(1, 8)]
    for i, g in enumerate(gradients):
        grad = g.clone()
        grokfast([grad])
        if i < 2:
            assert torch.equal(grad, g)  # warming up: left as it is
        else:
            window = torch.stack(gradients[i - 2:i + 1]).mean(0)  # the raw gradients, this one included
            torch.testing.assert_close(grad, g + 5.0 * window)


@pytest.mark.parametrize("cfg", [GrokfastConfig(filter="ema", lamb=2.0), GrokfastConfig(filter="ma", lamb=5.0, window=4)])
def test_grokfast_state_round_trips(cfg):
    """A filter restored from its state (part of last.ckpt) goes on exactly as the original, also
    after the moving average's ring has wrapped around."""
    torch.manual_seed(0)
    gradients = [torch.randn(3, 2) for _ in range(13)]
    original = Grokfast(cfg)
    for g in gradients[:6]:
        original([g.clone()])
    restored = Grokfast(cfg)
    restored.load_state_dict(original.state_dict())
    for g in gradients[6:]:
        a, b = g.clone(), g.clone()
        original([a])
        restored([b])
        assert torch.equal(a, b)


# --- ⊥Grad ---------------------------------------------------------------------------------------

def test_orthograd_output_is_orthogonal_to_the_weights_with_the_input_norm():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(6, 4))
    grad = torch.randn(6, 4) + 0.5 * param.detach()  # with a large radial component
    param.grad = grad.clone()
    orthogonalise([param], one_run)
    out = param.grad
    assert abs(torch.dot(out.flatten(), param.detach().flatten())) < 1e-5 * out.norm() * param.norm()
    torch.testing.assert_close(out.norm(), grad.norm())
    # What is left is the tangential part of the input, rescaled: the same direction.
    w = param.detach().flatten()
    tangential = grad.flatten() - torch.dot(w, grad.flatten()) / torch.dot(w, w) * w
    torch.testing.assert_close(out.flatten(), tangential * grad.norm() / tangential.norm())


def test_orthograd_projects_each_run_of_a_stack_against_its_own_weights():
    torch.manual_seed(1)
    weights, grads = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    stack = torch.nn.Parameter(weights.clone())
    stack.grad = grads.clone()
    orthogonalise([stack], stacked)
    for i in range(3):
        single = torch.nn.Parameter(weights[i].clone())
        single.grad = grads[i].clone()
        orthogonalise([single], one_run)
        torch.testing.assert_close(stack.grad[i], single.grad)


def test_orthograd_leaves_a_zero_parameters_gradient_as_it_is():
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    orthogonalise([param], one_run)
    torch.testing.assert_close(param.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


# --- StableMax and the loss's precision --------------------------------------------------------

def test_stablemax_equals_its_formula_and_its_probabilities_sum_to_1():
    x = torch.tensor([[-3.0, -0.5, 0.0, 2.0, 10.0]], dtype=torch.float64)
    s = torch.tensor([[1 / 4, 1 / 1.5, 1.0, 3.0, 11.0]], dtype=torch.float64)
    torch.testing.assert_close(stablemax_s(x), s, rtol=1e-15, atol=0)
    probs = log_stablemax(x).exp()
    torch.testing.assert_close(probs, s / s.sum(), rtol=1e-15, atol=0)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    targets = torch.tensor([[3]])
    loss, accuracy = loss_and_accuracy(x[:, None], targets, loss="stablemax")
    torch.testing.assert_close(loss, -torch.log(s[0, 3] / s.sum()))
    assert accuracy == 0  # the largest logit is class 4


def test_stablemax_probabilities_stay_below_1_where_the_softmax_rounds_to_1():
    logits = torch.tensor([[0.0, 40.0, 0.0]])
    assert torch.softmax(logits.double(), -1)[0, 1] == 1.0
    assert log_stablemax(logits.double()).exp()[0, 1] < 1.0  # 41 / 43
    assert loss_and_accuracy(logits[:, None], torch.tensor([[1]]), loss="stablemax")[0] > 0


def test_default_loss_is_the_seeds_float64_cross_entropy_bit_for_bit():
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 3, 7) * 20, torch.randint(7, (10, 3))
    targets[:, :2] = IGNORE
    loss, _ = loss_and_accuracy(logits, targets)
    assert loss.dtype == torch.float64
    assert torch.equal(loss, F.cross_entropy(logits.flatten(0, 1).double(), targets.flatten(), ignore_index=IGNORE))
    loss32, _ = loss_and_accuracy(logits, targets, dtype="float32")
    assert loss32.dtype == torch.float32
    assert torch.equal(loss32, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE))


# --- softmax collapse --------------------------------------------------------------------------

def test_softmax_collapse_on_hand_made_logits():
    logits = torch.tensor([
        [0.0, 20.0, 0.0],   # correct and 20 ahead: exp(-20) = 2e-9 is lost beside 1 in float32
        [0.0, 15.0, 0.0],   # 15 ahead: exp(-15) = 3e-7 is not, p = 1 - 6e-7
        [30.0, 0.0, 0.0],   # confidently wrong: its gradient does not vanish
        [0.0, 50.0, 0.0],   # not scored
    ])
    targets = torch.tensor([1, 1, 1, IGNORE])
    assert collapsed_fraction(logits, targets).item() == pytest.approx(1 / 3)
    assert torch.softmax(logits[0].double(), -1)[1] < 1  # in float64 the first has not collapsed
    assert F.cross_entropy(logits[:1], targets[:1]) == 0  # ... and its float32 loss is exactly 0


# --- initial scale and fixed norm ---------------------------------------------------------------

def test_init_scale_multiplies_every_initial_weight():
    base = load_config(GROKKING, TINY)
    scaled = load_config(GROKKING, [*TINY, "model.init_scale=2.0"])
    a = dict(build_model(base.model, base.task, seed=0).named_parameters())
    b = dict(build_model(scaled.model, scaled.task, seed=0).named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(b[name], 2.0 * a[name]), name  # exact: doubling is exact in floats


def test_fixed_norm_rescales_each_run_to_its_initial_norm():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 2)), torch.nn.Parameter(torch.randn(3, 5))]  # 3 stacked runs
    fixed = FixedWeightNorm(params, stacked)
    initial = squared_norm(params, stacked)
    with torch.no_grad():
        params[0].mul_(torch.tensor([2.0, 0.5, 1.0])[:, None, None])
        params[1].add_(1.0)
    direction = [p.detach().clone() for p in params]
    fixed(params, stacked)
    torch.testing.assert_close(squared_norm(params, stacked), initial)
    for p, d in zip(params, direction):  # a rescaling: the direction is kept
        cosine = F.cosine_similarity(stacked(p.detach()), stacked(d), dim=-1)
        torch.testing.assert_close(cosine, torch.ones(3))


# --- inside training: the gradients the optimizer saw -------------------------------------------

def _first_step(tmp_path, name, overrides, seeds=None):
    """Train one step; the gradient AdamW stepped with (its first moment / (1 - beta1)), per
    parameter of each run, and the initial weights."""
    extra = [f"seeds={seeds}"] if seeds else []
    config = load_config(GROKKING, [*TINY, *overrides, *extra, "max_steps=1", f"out_dir={tmp_path / name}"])
    runs = train_runs(config, progress=False)
    used, initial = [], []
    for run_dir in runs:
        checkpoint = torch.load(run_dir / "last.ckpt", weights_only=True)
        state = checkpoint["optimizer_states"][0]["state"]
        used.append([state[k]["exp_avg"] / (1 - config.optim.betas[0]) for k in sorted(state)])
        initial.append(load_file(str(run_dir / "series" / "step_000000.safetensors")))
    return used, initial, runs


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_the_optimizer_steps_with_the_filtered_and_projected_gradients(tmp_path, seeds):
    """Grokfast's first step is (1 + lamb) times the plain gradient, ⊥Grad's step is orthogonal
    to every weight, in a single run and in each seed of an ensemble."""
    plain, _, _ = _first_step(tmp_path, "plain", [], seeds)
    ema, _, _ = _first_step(tmp_path, "ema", ["optim.grokfast={filter: ema, lamb: 2.0}"], seeds)
    for run_plain, run_ema in zip(plain, ema):
        for g, filtered in zip(run_plain, run_ema):
            torch.testing.assert_close(filtered, 3.0 * g)
    ortho, initial, runs = _first_step(tmp_path, "ortho", ["optim.orthograd=true"], seeds)
    for run_dir, run_plain, run_ortho, weights in zip(runs, plain, ortho, initial):
        model = load_run(run_dir).model_at(0)
        trained = [p for p in model.parameters() if p.requires_grad]  # the optimizer's order
        assert len(trained) == len(run_ortho)
        for w, g, projected in zip(trained, run_plain, run_ortho):
            w = w.detach().flatten()
            assert abs(torch.dot(w, projected.flatten())) <= 1e-4 * w.norm() * projected.norm()
            torch.testing.assert_close(projected.norm(), g.norm())


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_a_fixed_norm_run_keeps_its_initial_norm(tmp_path, seeds):
    extra = [f"seeds={seeds}"] if seeds else []
    config = load_config(GROKKING, [*TINY, *extra, "model.init_scale=0.5", "optim.weight_decay=0",
                                    "optim.fixed_weight_norm=true", "max_steps=15", f"out_dir={tmp_path}"])
    for run_dir in train_runs(config, progress=False):
        norms = load_run(run_dir).metrics["weights/sq_norm"].dropna()
        assert len(norms) == 16
        torch.testing.assert_close(torch.tensor(norms.to_numpy()), torch.full((16,), norms.iloc[0], dtype=torch.float64),
                                   rtol=1e-5, atol=0)
    free = load_config(GROKKING, [*TINY, "model.init_scale=0.5", "optim.weight_decay=0", "max_steps=15",
                                  f"out_dir={tmp_path}/free"])
    norms = load_run(train(free, progress=False)).metrics["weights/sq_norm"].dropna()
    assert abs(norms.iloc[-1] / norms.iloc[0] - 1) > 0.01  # without it, the norm moves


def test_loss_switches_set_the_logged_training_loss(tmp_path):
    """train/loss at step 0 is StableMax's (float64) or the float32 softmax's cross-entropy of the
    initial model on the training split."""
    for overrides, loss, dtype in ((["loss=stablemax"], "stablemax", "float64"), (["loss_dtype=float32"], "softmax", "float32")):
        config = load_config(GROKKING, [*TINY, *overrides, "max_steps=2", f"out_dir={tmp_path}/{loss}{dtype}"])
        run = load_run(train(config, progress=False))
        train_split = run.batch("train")
        logits = run.model_at(0)(train_split["tokens"])[:, -1:]
        expected, _ = loss_and_accuracy(logits, train_split["targets"][:, -1:], loss=loss, dtype=dtype)
        assert run.metrics["train/loss"].iloc[0] == pytest.approx(expected.item(), rel=1e-6)


# --- ensembles and resuming ---------------------------------------------------------------------

SWITCHES = {  # every switch, in two combinations (each a seconds-long run)
    "a": ["optim.grokfast={filter: ema, alpha: 0.9, lamb: 2.0}", "optim.orthograd=true", "model.init_scale=0.7",
          "optim.fixed_weight_norm=true", "optim.weight_decay=0"],
    "b": ["optim.grokfast={filter: ma, window: 4, lamb: 5.0}", "loss=stablemax", "loss_dtype=float32",
          "measures={softmax_collapse: {}}"],
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_ensemble_with_the_switches_matches_its_single_runs(tmp_path, name):
    singles = [train(load_config(GROKKING, [*TINY, *SWITCHES[name], "max_steps=20", f"seed={s}",
                                            f"out_dir={tmp_path}/single"]), progress=False) for s in (0, 1)]
    ensemble = train_runs(load_config(GROKKING, [*TINY, *SWITCHES[name], "max_steps=20", "seeds=[0, 1]",
                                                 f"out_dir={tmp_path}/ensemble"]), progress=False)
    for run_dir, single in zip(ensemble, singles):
        assert_same_run(run_dir, single)


def test_a_resumed_grokfast_run_filters_as_if_never_stopped(tmp_path):
    """The moving average's window (4 gradients, wrapped around by step 10) is in last.ckpt."""
    args = [*TINY, *SWITCHES["b"], "max_steps=20"]
    whole = train(load_config(GROKKING, [*args, f"out_dir={tmp_path}/a"]), progress=False)
    stopped = load_config(GROKKING, [*args, f"out_dir={tmp_path}/b"])
    _stop_at(stopped, 10)
    resumed = train(stopped, resume=True, progress=False)
    assert_same_run(resumed, whole, exact=True)


# --- config -----------------------------------------------------------------------------------

def test_run_ids_of_runs_without_the_switches_are_unchanged():
    """The new fields count in a run's id only when set: every earlier run keeps its directory."""
    config = load_config(GROKKING)
    identity = {k: v for k, v in config.to_dict().items() if k not in ("out_dir", "trainer", "loss", "loss_dtype")}
    del identity["model"]["init_scale"]
    for name in ("grokfast", "orthograd", "fixed_weight_norm"):
        del identity["optim"][name]
    assert config.run_id == hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8] + "-s999"
    ids = {load_config(GROKKING, [o]).run_id for o in [
        "loss=stablemax", "loss_dtype=float32", "model.init_scale=2", "optim.orthograd=true",
        "optim.fixed_weight_norm=true", "optim.grokfast={filter: ema, lamb: 2.0}"]}
    assert len(ids) == 6 and config.run_id not in ids


@pytest.mark.parametrize("override, message", [
    ("optim.grokfast={filter: fir, lamb: 1}", "optim.grokfast.filter: must be one of ema, ma, got 'fir'"),
    ("optim.grokfast={filter: ema}", "optim.grokfast.lamb: is required"),
    ("optim.grokfast={filter: ema, lamb: 2, alpha: 1.0}", "optim.grokfast.alpha: must be in [0, 1), got 1.0"),
    ("optim.grokfast={filter: ma, lamb: 5, window: 0}", "optim.grokfast.window: must be at least 1, got 0"),
    ("optim.grokfast={filter: ema, lamb: -1}", "optim.grokfast.lamb: must be non-negative and finite, got -1.0"),
    ("optim.grokfast={filter: ema, lamb: .nan}", "optim.grokfast.lamb: must be a finite number, got nan"),
    ("optim.orthograd=yes please", "optim.orthograd: expected true or false"),
    ("model.init_scale=0", "model.init_scale: must be positive and finite, got 0.0"),
    ("model.init_scale=.inf", "model.init_scale: must be a finite number, got inf"),
    ("loss=mse", "loss: must be one of softmax, stablemax, got 'mse'"),
    ("loss_dtype=float16", "loss_dtype: must be one of float64, float32, got 'float16'"),
])
def test_bad_switches_are_one_line_config_errors(override, message, capsys):
    assert main(["train", str(GROKKING), override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}")
