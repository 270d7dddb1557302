"""Real training processes stopped at the edges of a run; tests/test_faults.py runs this file.

    python tests/fault_driver.py WORK_DIR      prints one JSON object: what each case found

This process imports toytasks once and trains nothing itself: every `toytasks` command runs in a
forked child (a real process, stopped by a real signal), so a case costs a tiny run, not an
interpreter start.

- end:      every write from the last step's series file on (every file toytasks writes lands by
            an os.replace, toytasks/files.py), for a single run and a two-seed ensemble: a child
            is SIGKILLed just before the rename and, in another case, just after it; then
            `--resume` must exit 0 and leave every file as the uninterrupted run left it
- signals:  SIGTERM, and Ctrl-C (SIGINT), to a training child: exit 143 / 130 with one line on
            stderr, a resumable checkpoint at the step it stopped, and `--resume` gives the
            uninterrupted run's files
- disk:     a file size limit (RLIMIT_FSIZE: write(2) fails with EFBIG, as with ENOSPC on a full
            disk): a one-line error, exit 2, no temporary file left; then --resume finishes
- sweep:    Ctrl-C to `toytasks sweep` alone: its worker (a real `toytasks` subprocess) is told
            to stop, stops with a resumable checkpoint, and the sweep says so and exits 130

Files are compared byte for byte, except TensorBoard's event files (named and stamped by the
clock) and the clock fields of meta.json (started, finished_at, wall_seconds).
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

import toytasks.analysis.run  # noqa: F401  (imported here once, inherited by every child)
import toytasks.sweep  # noqa: F401
import toytasks.training  # noqa: F401
from toytasks.cli import main

ROOT = Path(__file__).resolve().parent.parent
GROKKING = str(ROOT / "configs" / "grokking.yaml")
TINY = ["task.p=7", "model.d_model=16", "model.d_head=4", "model.d_mlp=32", "log_every=4"]
END = [*TINY, "max_steps=12", "checkpoints.every=4", "checkpoints.resume_every=5"]  # resumes from 10
LONG = [*TINY, "max_steps=300", "checkpoints.every=50", "checkpoints.resume_every=1000"]
CLOCK = ("started", "finished_at", "wall_seconds")


def start_child(fn, log: Path) -> int:
    """fn() in a forked child with its stdout and stderr in `log`; returns its PID."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def in_child(fn, log: Path) -> int:
    """fn() in a forked child; returns its wait status."""
    return os.waitpid(start_child(fn, log), 0)[1]


def wait_for(pattern: str, root: Path, pid: int) -> None:
    """Until a file matching `pattern` exists under root (or the child has exited)."""
    deadline = time.time() + 600
    while time.time() < deadline and not next(root.glob(pattern), None):
        if os.waitpid(pid, os.WNOHANG)[0]:
            raise AssertionError(f"the child exited before {pattern} was written")
        time.sleep(0.01)


def exit_code(status: int):
    return os.waitstatus_to_exitcode(status)  # negative: killed by that signal


def files(root: Path) -> dict[str, str]:
    """Every file under root, by its path, as a hash of what a reader sees in it."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or "/tb/events.out.tfevents" in f"/{rel}":
            continue
        data = path.read_bytes()
        if path.name == "meta.json":
            meta = {k: v for k, v in json.loads(data).items() if k not in CLOCK}
            data = json.dumps(meta, sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def differences(a: dict, b: dict) -> list[str]:
    return sorted({k for k in a.keys() | b.keys() if a.get(k) != b.get(k)})


def recording_writes(argv, record: Path):
    """A child body: run the command, writing down the target of every os.replace."""
    def body():
        real, targets = os.replace, []

        def replace(source, target, **kwargs):
            targets.append(str(target))
            return real(source, target, **kwargs)

        os.replace = replace
        try:
            return main(argv)
        finally:
            record.write_text(json.dumps(targets))
    return body


def killed_at(argv, n: int, when: str):
    """A child body: run the command and SIGKILL itself at its n-th os.replace (0-based), just
    before the rename or just after it."""
    def body():
        real, count = os.replace, [0]

        def replace(source, target, **kwargs):
            count[0] += 1
            if count[0] - 1 == n and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real(source, target, **kwargs)
            if count[0] - 1 == n and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
        return main(argv)
    return body


def end_faults(work: Path, name: str, extra: list[str]) -> dict:
    out = work / name
    argv = ["train", GROKKING, *END, *extra, f"out_dir={out}", "--no-progress"]
    record = work / f"{name}-writes.json"
    assert exit_code(in_child(recording_writes(argv, record), work / f"{name}-reference.log")) == 0
    reference = files(out)
    targets = json.loads(record.read_text())
    first = next(i for i, t in enumerate(targets) if t.endswith("series/step_000012.safetensors"))
    cases, problems = [], []
    for n in range(first, len(targets)):
        for when in ("before", "after"):
            case = f"{when} {Path(targets[n]).relative_to(out)}"
            cases.append(case)
            shutil.rmtree(out)
            log = work / f"{name}-{n}-{when}.log"
            status = in_child(killed_at(argv, n, when), log)
            if exit_code(status) != -signal.SIGKILL:
                problems.append(f"{case}: not killed there (exit {exit_code(status)})")
                continue
            code = exit_code(in_child(lambda: main([*argv, "--resume"]), log.with_suffix(".resume.log")))
            found = files(out)
            if code != 0 or found != reference:
                problems.append(f"{case}: resume exit {code}, files that differ: {differences(reference, found)}")
    return {"cases": cases, "problems": problems}


def signalled(work: Path, signum: int) -> dict:
    """Stop a training child with `signum` after its step-50 checkpoint, then resume it."""
    out = work / "signal"
    argv = ["train", GROKKING, *LONG, f"out_dir={out}", "--no-progress"]
    if not (work / "signal-reference.json").exists():
        assert exit_code(in_child(lambda: main(argv), work / "signal-reference.log")) == 0
        (work / "signal-reference.json").write_text(json.dumps(files(out)))
    reference = json.loads((work / "signal-reference.json").read_text())
    shutil.rmtree(out)
    log = work / f"signal-{signum}.log"
    pid = start_child(lambda: main(argv), log)
    wait_for("*/*/series/step_000050.safetensors", out, pid)
    os.kill(pid, signum)
    code = exit_code(os.waitpid(pid, 0)[1])
    run_dir = next(out.glob("*/*"))
    stopped_at = torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"]
    stderr = [line for line in log.read_text().splitlines() if line.strip()]
    resumed = exit_code(in_child(lambda: main([*argv, "--resume"]), log.with_suffix(".resume.log")))
    return {"exit": code, "stderr": stderr, "stopped_at": stopped_at, "resume_exit": resumed, "out_dir": str(out),
            "differences": differences(reference, files(out))}


def disk_limit(work: Path) -> dict:
    out = work / "disk"
    argv = ["train", GROKKING, *END, f"out_dir={out}", "--no-progress"]

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return main(argv)

    log = work / "disk.log"
    code = exit_code(in_child(limited, log))
    stderr = [line for line in log.read_text().splitlines() if line.strip()]
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    resumed = exit_code(in_child(lambda: main([*argv, "--resume"]), work / "disk.resume.log"))
    return {"exit": code, "stderr": stderr, "temporaries": left, "resume_exit": resumed}


def sweep_interrupted(work: Path) -> dict:
    out = work / "sweep"
    sweep_file = work / "sweep.yaml"
    overrides = dict(item.split("=", 1) for item in LONG)
    fixed = ", ".join(f"{k}: {v}" for k, v in {**overrides, "max_steps": 3000, "out_dir": out}.items())
    sweep_file.write_text(f"base: {GROKKING}\noverrides: {{{fixed}}}\ngrid: {{seed: [0, 1]}}\n")
    log = work / "sweep.log"
    pid = start_child(lambda: main(["sweep", str(sweep_file)]), log)
    wait_for("*/*/series/step_000050.safetensors", out, pid)  # its worker process is training
    os.kill(pid, signal.SIGINT)  # the sweep process alone, not its worker
    code = exit_code(os.waitpid(pid, 0)[1])
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    listed = work / "sweep-list.log"
    assert exit_code(in_child(lambda: main(["sweep", str(sweep_file), "--list"]), listed)) == 0
    run_dirs = [Path(line.split("\t")[2]) for line in listed.read_text().splitlines()[1:]]
    steps = [torch.load(d / "last.ckpt", weights_only=True)["global_step"] if (d / "last.ckpt").exists() else None
             for d in run_dirs]
    return {"exit": code, "output": lines, "list": listed.read_text().splitlines(), "checkpoint_steps": steps}


if __name__ == "__main__":
    torch.set_num_threads(1)  # every child the same, so that runs split across processes agree bit for bit
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "end_single": end_faults(work, "single", []),
        "end_ensemble": end_faults(work, "ensemble", ["seeds=[0,1]"]),
        "sigterm": signalled(work, signal.SIGTERM),
        "sigint": signalled(work, signal.SIGINT),
        "disk": disk_limit(work),
        "sweep": sweep_interrupted(work),
    }
    print(json.dumps(results))
