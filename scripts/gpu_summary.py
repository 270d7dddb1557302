"""The figures of issue 20 from scripts/gpu_check.sh's JSON files, in a few lines (its last output).

    python3 scripts/gpu_summary.py OUT_DIR
"""
import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    def load(name):
        path = out / name
        return json.loads(path.read_text()) if path.exists() else None

    full, paths, seed, grid = load("full.json"), load("paths.json"), load("seed.json"), load("grid.json")
    for extra in (load("full_tf32.json"), load("full_no_measures.json")):  # the `precision` part's runs
        if extra:
            full = full or {**extra, "settings": {}}
            full["settings"].update(extra["settings"])
    for title, data in (("the full run", full), ("captured against eager", paths)):
        if data:
            steps = {r["steps"] for r in data["settings"].values()}
            print(f"{title} ({', '.join(map(str, sorted(steps)))} steps) on {data['device']}:")
            for name, r in data["settings"].items():
                print(f"  {name:>8}: {r['training_seconds']:.1f} s of training with measures, {r['steps_per_s']:.0f} "
                      f"steps/s, captured {r['captured_step']}, phases {r['phases']}, final test acc "
                      f"{r['final_test_acc']:.4f}")
    if seed:
        s = seed["median_steps_per_s"]
        print(f"seed loop {s['seed_loop']:.0f} steps/s, toytasks {s['toytasks']:.0f} steps/s: "
              f"{seed['median_ratio']:.2f}x on {seed['device']} ({seed['steps']} steps, {len(seed['reps'])} reps); "
              f"whole process (start-up included): {seed.get('median_process_ratio', float('nan')):.2f}x")
    if grid:
        g = grid["median_seed_steps_per_s"]
        print(f"{grid['seeds']}-run grid as one stacked run {g['ensemble']:.0f} run-steps/s, in sequence "
              f"{g['singles']:.0f}: {grid['median_ratio']:.2f}x on {grid['device']} ({grid['steps']} steps)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
