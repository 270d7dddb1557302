"""The README's developmental-analysis figures from a run whose LLC was computed
(`toytasks measure RUN_DIR --with llc`): the LLC over training with the phases, and the
essential-dynamics trajectory; prints the LLC at the phase boundaries and the trajectory's sharpest turns.

    .venv/bin/python scripts/developmental_figures.py RUN_DIR docs/
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from toytasks import load_run  # noqa: E402
from toytasks.analysis.essential_dynamics import plot_trajectory, turning_angles  # noqa: E402
from toytasks.measures.llc import llc_over_training, run_phases  # noqa: E402
from toytasks.plots import plt  # noqa: E402


def main(run_dir: str, out: str) -> None:
    run, out = load_run(run_dir), Path(out)
    phases = run_phases(run)
    llc = run.metrics.dropna(subset=["llc/mean"])[["step", "llc/mean", "llc/std"]]
    print("phases:", phases)
    print(llc.to_string(index=False))

    started = time.perf_counter()
    dynamics = run.essential_dynamics(n_components=3)
    print(f"essential dynamics: {time.perf_counter() - started:.1f} s for {len(dynamics)} checkpoints; "
          f"explained variance {[round(v, 3) for v in dynamics.attrs['explained_variance']]}")
    turns = dynamics.assign(turn_degrees=turning_angles(dynamics))
    print("sharpest turns:\n" + turns.nlargest(6, "turn_degrees").to_string(index=False))

    for name, figure, size in (("llc_grokking_cpu.png", llc_over_training(run), (7.5, 3.6)),
                               ("essential_dynamics_grokking_cpu.png", plot_trajectory(dynamics, phases), (10, 4.2))):
        figure.set_size_inches(*size)
        figure.savefig(out / name, dpi=72, bbox_inches="tight")
        plt.close(figure)
        print("wrote", out / name, f"{(out / name).stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main(*sys.argv[1:])
