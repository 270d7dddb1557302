"""The sequence-task CPU configs show their phenomena (each trains its config once)."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIGS
from toytasks import load_run
from toytasks.config import load_config
from toytasks.measures.heads import repeated_sequences, second_copy_attention
from toytasks.training import train

pytestmark = pytest.mark.slow

# The bar for a clear induction head (issue 15): the best head's attention on its one target, and
# the loss on the repeated tokens, of the final model.
THRESHOLDS = {"score": 0.9, "loss": 0.1}


def trained(name, tmp_path_factory):
    config = load_config(CONFIGS / f"{name}.yaml", [f"out_dir={tmp_path_factory.mktemp(name)}"])
    return load_run(train(config, progress=False))


def final_row(run):
    return run.metrics.set_index("step").loc[run.steps[-1]]


def test_no_position_learns_without_positions(tmp_path_factory):
    run = trained("no_position_cpu", tmp_path_factory)
    m = run.metrics
    assert m["val/loss"].dropna().iloc[0] > 5.0  # about log(299) at the start
    assert final_row(run)["val/loss"] < 0.5
    assert all(run.model_at(step).W_pos.abs().max() == 0 for step in run.steps)
    print(f"no-position: test loss {final_row(run)['val/loss']:.3f}")


def second_copy_check(run, n=512):
    """The final model on fresh sequences (BOS, `half` random tokens, the same again): the best
    head's mean attention from each token of the second copy to the token after its first
    occurrence, and the loss on the second to last token of the second copy."""
    model, half = run.model_at(run.steps[-1]), run.task.half
    tokens = repeated_sequences(n, run.task.vocab, half, torch.Generator().manual_seed(2024))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    best = max(second_copy_attention(cache["pattern", layer], half).max().item() for layer in range(model.cfg.n_layers))
    loss = F.cross_entropy(logits[:, half + 1:-1].transpose(1, 2), tokens[:, half + 2:]).item()
    return best, loss


def test_two_layers_form_an_induction_head(tmp_path_factory):
    run = trained("induction_cpu", tmp_path_factory)
    last = final_row(run)
    best, loss = second_copy_check(run)
    print(f"induction: best head {last['heads/induction_max']:.3f} (second copies: {best:.3f}), repeated "
          f"{last['val/loss/repeated']:.3f} (second copies: {loss:.3f}), first {last['val/loss/first']:.3f}")
    assert last["heads/induction_max"] >= THRESHOLDS["score"] and best >= THRESHOLDS["score"]
    assert last["val/loss/repeated"] <= THRESHOLDS["loss"] and loss <= THRESHOLDS["loss"]
    assert last["val/loss/first"] > 3.0  # first occurrences stay unpredictable
    onset = json.loads((run.path / "heads.json").read_text())["induction_onset_step"]
    assert onset is not None and 0 < onset <= run.steps[-1]


def test_one_layer_control_has_no_induction_head(tmp_path_factory):
    run = trained("induction_1layer_cpu", tmp_path_factory)
    m = run.metrics
    last = final_row(run)
    best, loss = second_copy_check(run)
    print(f"1-layer control: best head {m['heads/induction_max'].max():.3f} (second copies: {best:.3f}), "
          f"repeated {last['val/loss/repeated']:.3f}, first {last['val/loss/first']:.3f}")
    assert m["heads/induction_max"].max() <= 0.3 and best <= 0.3
    assert last["val/loss/repeated"] > 1.0
