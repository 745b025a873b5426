"""Fingerprints of short, seeded training runs: proof that a refactor changed no number.

Trains every agent (and a few-shot learner) for a few iterations on a fixed seed through the
``metarl`` command, one thread on the CPU, evaluates each run briefly, and prints one SHA-256
per run over what must not change: ``metrics.csv`` without its wall-clock columns, the final
checkpoint's tensors, and the evaluation's returns. Run it before and after a change and
compare the two JSON files::

    python scripts/fingerprint.py --out /tmp/before.json      # on the old commit
    python scripts/fingerprint.py --out /tmp/after.json       # on the new one
    python scripts/fingerprint.py --compare /tmp/before.json /tmp/after.json

A run that fails is recorded with its error (so a refactor that breaks one agent shows as a
changed fingerprint, not as a crash of the script).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: name -> (train arguments after `metarl train`, evaluate arguments after the run dir)
_EVAL = "--steps 1 --seeds 0 --max-tasks 3"
RUNS: dict[str, tuple[str, str]] = {
    "maml-trpo": ("--agent maml-trpo --preset quick --num-iterations 3", _EVAL),
    "maml-trpo-first-order": (
        "--agent maml-trpo --preset quick --num-iterations 2 --first-order",
        "--steps 2 --seeds 0 --max-tasks 3",
    ),
    "maml-trpo-metasgd-prev-cg": (
        "--agent maml-trpo --preset quick --num-iterations 2 --learn-inner-lr "
        "--inner-baseline previous-task --cg-subsample 0.5",
        _EVAL,
    ),
    "reptile-rl": ("--agent reptile-rl --preset quick --num-iterations 3", _EVAL),
    "rl2": ("--agent rl2 --preset quick --num-iterations 3", "--steps 2 --seeds 0 --max-tasks 3"),
    "pretrained": ("--agent pretrained --preset quick --num-iterations 2", _EVAL),
    "random-init": ("--agent random-init --preset quick", _EVAL),
    "oracle": ("--agent oracle --preset quick --num-iterations 2", _EVAL),
}

#: few-shot runs: `metarl fewshot train` arguments
FEWSHOT: dict[str, str] = {
    "fewshot-maml-sinusoid": "--preset maml-sinusoid --num-iterations 5 --meta-batch-size 4 "
    "--num-eval-episodes 8 --no-tensorboard",
    "fewshot-baseline-sinusoid": "--preset baseline-sinusoid --num-iterations 5 "
    "--num-eval-episodes 8 --no-tensorboard",
}

_TIMING = ("_s", "per_s", "seconds", "time", "wall")


def _metrics_digest(path: Path, h: Any) -> None:
    if not path.exists():
        h.update(b"no metrics.csv")
        return
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith(_TIMING)]
    for row in rows:
        h.update(",".join(row[i] for i in keep if i < len(row)).encode() + b"\n")


def _tensor_digest(obj: Any, h: Any, prefix: str = "") -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        h.update(prefix.encode())
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _tensor_digest(obj[k], h, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensor_digest(v, h, f"{prefix}/{i}")


def _checkpoint_digest(run_dir: Path, h: Any) -> None:
    from metarl.runs import load_checkpoint_file

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        h.update(b"no checkpoint")
        return
    ckpt = load_checkpoint_file(path)
    _tensor_digest(ckpt.get("state"), h)


def _eval_digest(path: Path, h: Any) -> None:
    if not path.exists():
        h.update(b"no eval json")
        return
    data = json.loads(path.read_text())
    for key in ("returns", "mean", "success", "metric", "accuracy"):
        if key in data:
            h.update(json.dumps(data[key], sort_keys=True).encode())


def _run(cmd: list[str]) -> str:
    env_cmd = [sys.executable, "-m", "metarl.cli", *cmd]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
    return ""


def fingerprint(only: list[str] | None = None) -> dict[str, str]:
    result: dict[str, str] = {}
    common = ["--seed", "3", "--device", "cpu", "--num-threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (train_args, eval_args) in RUNS.items():
            if only and name not in only:
                continue
            run_dir = Path(tmp) / name
            h = hashlib.sha256()
            err = _run(["train", *train_args.split(), *common, "--run-dir", str(run_dir)])
            if not err:
                err = _run(["evaluate", str(run_dir), *eval_args.split(), "--device", "cpu"])
            h.update(err.encode())
            _metrics_digest(run_dir / "metrics.csv", h)
            _checkpoint_digest(run_dir, h)
            _eval_digest(run_dir / "eval_test.json", h)
            result[name] = h.hexdigest()[:16] + (f" ({err})" if err else "")
            print(f"{name:34s} {result[name]}", flush=True)
        for name, args in FEWSHOT.items():
            if only and name not in only:
                continue
            run_dir = Path(tmp) / name
            h = hashlib.sha256()
            cmd = ["fewshot", "train", *args.split(), "--seed", "3", "--device", "cpu"]
            err = _run([*cmd, "--run-dir", str(run_dir)])
            h.update(err.encode())
            _metrics_digest(run_dir / "metrics.csv", h)
            _checkpoint_digest(run_dir, h)
            _eval_digest(run_dir / "eval.json", h)
            result[name] = h.hexdigest()[:16] + (f" ({err})" if err else "")
            print(f"{name:34s} {result[name]}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints as JSON here")
    parser.add_argument("--only", nargs="*", help="only these runs")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        same = True
        for name in sorted(set(a) | set(b)):
            ok = a.get(name) == b.get(name)
            same &= ok
            print(f"{'same' if ok else 'DIFFERENT':9s} {name}: {a.get(name)} -> {b.get(name)}")
        return 0 if same else 1
    result = fingerprint(args.only)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
