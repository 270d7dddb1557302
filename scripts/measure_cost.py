"""Cost of one Fourier progress-measure evaluation beside the training it rides on.

    .venv/bin/python scripts/measure_cost.py [configs/grokking.yaml] [--reps 5]

Builds the config's model and data on the available device, times a full-batch training step
(forward, float64 loss, backward, AdamW) and one evaluation of the Fourier measures (live key
frequencies, and the final-frequency losses), and prints the measures' share of the training
time when they run at every checkpoint. Medians over --reps repetitions.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toytasks.config import load_config  # noqa: E402
from toytasks.loss import loss_and_accuracy  # noqa: E402
from toytasks.measures import build_measures  # noqa: E402
from toytasks.model import build_model, trainable_parameters  # noqa: E402
from toytasks.tasks import batch_from_split  # noqa: E402


def timed(fn, reps, device):
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/grokking.yaml")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    config = load_config(args.config, ["measures.fourier={}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = batch_from_split(config.task.make_dataset()["train"], device)
    model = build_model(config.model, config.task, config.model_seed, device=device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    positions = config.task.scored_positions

    def step():  # what training does: the native module, the float64 loss, AdamW
        logits = model.original_model(train["tokens"])
        loss, _ = loss_and_accuracy(logits[:, positions], train["targets"][:, positions])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    measures = build_measures(config, names=["fourier"])[0]
    mask = torch.zeros(config.task.p // 2, dtype=torch.bool, device=device)
    mask[:4] = True

    def evaluate():
        values = measures(model.eval())
        model.train()
        torch.stack([v.double() for v in values.values()]).cpu()  # the one copy to the host

    step(), evaluate()  # warm-up
    step_s = timed(step, args.reps * 4, device)
    eval_s = timed(evaluate, args.reps, device)
    final_s = timed(lambda: measures(model, final_mask=mask, live=False), args.reps, device)
    every = config.checkpoints.every
    print(f"device={device} p={config.task.p} train_examples={len(train['tokens'])}")
    print(f"train step: {step_s * 1e3:.1f} ms   measures (live): {eval_s * 1e3:.1f} ms   "
          f"final-freq losses: {final_s * 1e3:.1f} ms")
    print(f"measures every {every} steps (live, plus final-freq after training): "
          f"{(eval_s + final_s) / (every * step_s):.1%} of the training time")


if __name__ == "__main__":
    main()
