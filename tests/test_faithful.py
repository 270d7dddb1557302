"""toytasks trains exactly what the seed notebook's loop trains.

The seed's loop, written out below as it stands (full-batch AdamW, float64 loss at the last
position, test loss after each update), run on the same TransformerBridge, the same split and the
same initial weights, gives the same train and test losses at every step as toytasks' fast path
(the bridge's native module, no hooks, metrics kept on the device). tests/test_init.py compares
with the seed loop run on TransformerLens 3.9's HookedTransformer itself.
"""
import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.config import load_config
from toytasks.model import build_model
from toytasks.training import train


def seed_loop(config, steps):
    p = config.task.p
    model = build_model(config.model, config.task, seed=config.model_seed)  # the seed's HookedTransformer(cfg) (model.init: hooked)
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    dataset = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = (dataset[:, 0] + dataset[:, 1]) % p
    train_indices, test_indices = config.task.split_indices()
    train_data, train_labels = dataset[train_indices], labels[train_indices]
    test_data, test_labels = dataset[test_indices], labels[test_indices]
    o = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)

    def loss_fn(logits, labels):
        if len(logits.shape) == 3:
            logits = logits[:, -1]
        logits = logits.to(torch.float64)
        log_probs = logits.log_softmax(dim=-1)
        return -log_probs.gather(dim=-1, index=labels[:, None])[:, 0].mean()

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
    return train_losses, test_losses


def test_same_losses_as_the_seed_loop(tmp_path):
    config = load_config(CONFIGS / "grokking.yaml", [f"out_dir={tmp_path}", "task.p=17", "max_steps=25",
                                                      "model.d_model=32", "model.d_head=8", "model.d_mlp=64"])
    seed_train, seed_test = seed_loop(config, 25)
    m = load_run(train(config, progress=False)).metrics.set_index("step")
    assert m.loc[0:24, "train/loss"].tolist() == pytest.approx(seed_train, rel=1e-6)
    assert m.loc[1:25, "val/loss"].tolist() == pytest.approx(seed_test, rel=1e-6)
