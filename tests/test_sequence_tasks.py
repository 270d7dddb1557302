"""Previous-token and induction tasks, and the attention-head measures."""
import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.measures.heads import head_scores, icl_score, repeated_sequences, second_copy_attention
from toytasks.tasks import IGNORE
from toytasks.tasks.induction import Induction
from toytasks.tasks.previous_token import PreviousToken
from toytasks.training import train


def test_previous_token_batches():
    batch = PreviousToken(vocab=30, length=10).sample(64, torch.Generator().manual_seed(3))
    tokens, targets = batch["tokens"], batch["targets"]
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] >= 1).all() and (tokens < 30).all()
    assert (targets[:, 0] == IGNORE).all() and torch.equal(targets[:, 1:], tokens[:, :-1])
    again = PreviousToken(vocab=30, length=10).sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(again["tokens"], tokens)


def test_induction_batches():
    task = Induction(vocab=30, half=6)
    batch = task.sample(2048, torch.Generator().manual_seed(3))
    tokens, targets = batch["tokens"], batch["targets"]
    k, start, d = batch["repeat_len"], batch["repeat_start"], batch["repeat_dist"]
    assert tokens.shape == (2048, 13) and (tokens[:, 0] == 0).all() and (tokens[:, 1:] >= 1).all()
    assert torch.equal(targets[:, :-1], tokens[:, 1:]) and (targets[:, -1] == IGNORE).all()
    # the distance, the length and the place vary: no position or fixed offset to exploit
    assert set(d.tolist()) == set(range(2, 11)) and set(k.tolist()) == set(range(2, 11))
    assert set(start[d == 3].tolist()) == set(range(4, 12))  # every place that fits
    assert (start + k == 13).all()  # the copy runs to the end: every repeat is followed by the copy
    assert (k > d).any()  # a copy longer than its distance repeats with period d
    counts = torch.bincount(d)[2:].float()
    assert counts.max() / counts.min() < 3  # every distance about as common, short ones included
    groups = task.position_groups(batch)
    assert not (groups["first"] & groups["repeated"]).any()
    for row, repeated, first, length, second, dist in zip(tokens, groups["repeated"], groups["first"],
                                                          k.tolist(), start.tolist(), d.tolist()):
        assert second + length <= 13 and second - dist >= 1
        assert torch.equal(row[second:second + length], row[second - dist:second - dist + length])
        positions = repeated.nonzero().flatten()
        assert positions.tolist() == list(range(second, second + length - 1))
        assert not first[second - 1] and first.sum() == 12 - len(positions) - 1
        for p in positions.tolist():  # the answer follows an earlier occurrence of row[p], d back
            assert row[p - dist] == row[p] and row[p - dist + 1] == row[p + 1]
        # the copy is the only repeat: every other token occurs once
        copied = torch.zeros(13, dtype=torch.bool)
        copied[second:second + length] = True
        assert len(set(row[~copied].tolist())) == 13 - length


def test_induction_needs_distinct_tokens():
    Induction(vocab=13, half=6)
    with pytest.raises(ConfigError, match="vocab"):
        Induction(vocab=12, half=6)


def test_repeated_sequences_and_the_second_copy_score():
    tokens = repeated_sequences(64, 30, 6, torch.Generator().manual_seed(0))
    assert tokens.shape == (64, 13) and (tokens[:, 0] == 0).all() and torch.equal(tokens[:, 1:7], tokens[:, 7:])
    assert all(len(set(row[1:7].tolist())) == 6 for row in tokens) and (tokens[:, 1:] >= 1).all()
    # an induction head scores 1; a previous-token head 0; attention spread evenly over the 7 or more
    # earlier keys, at most 1/7
    induction = _pattern(lambda q: q - 6 + 1 if q > 6 else 0, 13)
    assert second_copy_attention(induction, 6).item() == pytest.approx(1.0)
    assert second_copy_attention(_pattern(lambda q: max(q - 1, 0), 13), 6).item() == 0
    uniform = torch.ones(13, 13).tril()
    assert second_copy_attention((uniform / uniform.sum(-1, keepdim=True))[None, None], 6).item() <= 1 / 7


def _pattern(rule, n, heads=1):
    """A hand-made attention pattern: each query attends to one key chosen by `rule(query)`."""
    pattern = torch.zeros(1, heads, n, n)
    for q in range(n):
        pattern[0, :, q, rule(q)] = 1.0
    return pattern


def test_head_scores_know_the_answers():
    half = 5
    tokens = torch.tensor([[0, 11, 12, 13, 14, 15, 11, 12, 13, 14, 15]])
    n = tokens.shape[1]
    prev = head_scores(_pattern(lambda q: max(q - 1, 0), n), tokens)
    assert prev["prev_token"].item() == pytest.approx(1.0) and prev["induction"].item() == pytest.approx(0.0)
    induction = head_scores(_pattern(lambda q: q - half + 1 if q > half else 0, n), tokens)
    assert induction["induction"].item() == pytest.approx(1.0) and induction["duplicate_token"].item() == 0
    duplicate = head_scores(_pattern(lambda q: q - half if q > half else 0, n), tokens)
    assert duplicate["duplicate_token"].item() == pytest.approx(1.0) and duplicate["induction"].item() == 0
    bos = head_scores(_pattern(lambda q: 0, n), tokens)  # only query 1's BOS is its previous token
    assert bos["prev_token"].item() == pytest.approx(1 / (n - 1))
    assert bos["induction"].item() == 0 and bos["duplicate_token"].item() == 0


def test_icl_score():
    loss = torch.tensor([[4.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 0.5]])
    assert icl_score(loss, list(range(8))).item() == pytest.approx(0.5 - 4.0)


TINY_NO_POS = ["task.vocab=30", "task.length=12", "model.d_model=16", "model.d_head=16", "model.d_mlp=32",
               "batch_size=16", "checkpoints.every=10", "checkpoints.resume_every=20", "eval_every=5",
               "log_every=10"]


def test_no_position_run_keeps_w_pos_zero_and_logs_its_measures(tmp_path):
    config = load_config(CONFIGS / "no_position.yaml", [*TINY_NO_POS, f"out_dir={tmp_path}", "max_steps=20"])
    run = load_run(train(config, progress=False))
    for step in run.steps:
        assert run.model_at(step).W_pos.abs().max() == 0
    m = run.metrics.set_index("step")
    assert (m["weights/pos_embed_norm"].dropna() == 0).all()
    assert {"pos_loss/p1", "pos_loss/p11", "attn/bos/L0", "attn/bos/L1", "heads/prev_token/L1H0", "icl/score",
            "val/loss", "train/loss"} <= set(m.columns)
    # ... and after a resume
    longer = load_config(CONFIGS / "no_position.yaml", [*TINY_NO_POS, f"out_dir={tmp_path}", "max_steps=40"])
    run.path.rename(longer.run_dir)
    (longer.run_dir / "meta.json").write_text((longer.run_dir / "meta.json").read_text()
                                              .replace('"finished": true', '"finished": false'))
    resumed = load_run(train(longer, resume=True, progress=False))
    assert resumed.steps[-1] == 40 and all(resumed.model_at(s).W_pos.abs().max() == 0 for s in resumed.steps)


def test_measures_do_not_change_the_training_batches(tmp_path):
    overrides = [*TINY_NO_POS, "max_steps=15"]
    with_heads = load_run(train(load_config(CONFIGS / "no_position.yaml", [*overrides, f"out_dir={tmp_path}/a"]),
                                progress=False))
    without = load_run(train(load_config(CONFIGS / "no_position.yaml",
                                         [*overrides, f"out_dir={tmp_path}/b", "measures.heads=null"]), progress=False))
    assert with_heads.metrics["train/loss"].dropna().tolist() == without.metrics["train/loss"].dropna().tolist()


def test_offline_head_measures_are_idempotent(tmp_path):
    from toytasks.cli import main

    config = load_config(CONFIGS / "induction_cpu.yaml", ["task.vocab=20", "task.half=4", "model.d_model=16",
                                                          "model.d_head=4", "batch_size=8", "max_steps=20",
                                                          "checkpoints.every=10", f"out_dir={tmp_path}"])
    run = load_run(train(config, progress=False))
    live = run.metrics.set_index("step")
    assert main(["measure", str(run.path), "--no-progress"]) == 0
    once = (run.path / "metrics.csv").read_bytes()
    offline = run.metrics.set_index("step")
    for step in run.steps:
        assert offline.loc[step, "heads/induction/L1H0"] == pytest.approx(live.loc[step, "heads/induction/L1H0"], rel=1e-5)
        assert offline.loc[step, "val/loss/repeated"] == pytest.approx(live.loc[step, "val/loss/repeated"], rel=1e-5)
    assert main(["measure", str(run.path), "--no-progress"]) == 0
    assert (run.path / "metrics.csv").read_bytes() == once
    assert main(["plot", str(run.path)]) == 0 and (run.path / "plots" / "head_scores.png").exists()
