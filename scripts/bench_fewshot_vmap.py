"""MAML meta-iteration time on Omniglot 5-way 1-shot: the meta-batch vectorised -- with
``torch.func.vmap``, or with the tasks folded into the channels of grouped convolutions
(``Conv4.forward_tasks``, MAML's default for Conv4) -- vs a per-task Python loop (the
learn2learn / tutorial way), same model.

All three variants run the same meta-iterations on the same episodes (meta-batch 32, Finn et al.'s
strided Conv4, α = 0.4, 1 inner step, Adam outer step), interleaved iteration by iteration so
that a loaded machine slows both alike. Second- and first-order MAML are measured; the
peak memory of one meta-iteration is measured in a fresh subprocess per variant (CUDA: peak
allocated; CPU: peak growth of the resident set, sampled). The ratio is printed from one run and the
results are appended to ``benchmarks/fewshot_vmap.md`` with the command.

Usage: python scripts/bench_fewshot_vmap.py [--omniglot ../shared/data/omniglot]
       [--device cpu|cuda] [--iterations 10] [--num-query 1 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from metarl.evaluation.report import Provenance, describe_machine
from metarl.fewshot.data import EpisodeBatch, EpisodeSampler, omniglot
from metarl.fewshot.maml import MAML
from metarl.fewshot.models import Conv4

ROOT = Path(__file__).resolve().parent.parent
META_BATCH = 32


MODES = ("loop", "vmap", "fold")


def make_learner(device: torch.device, first_order: bool, mode: str) -> MAML:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, pool="stride").to(device)
    return MAML(
        model, 0.4, 1, first_order=first_order, vectorize=mode != "loop", fold_tasks=mode == "fold"
    )


def episodes(args: argparse.Namespace, num_query: int, n: int) -> list[EpisodeBatch]:
    data = omniglot(args.omniglot, "train")
    sampler = EpisodeSampler(data, 5, 1, num_query)
    rng = np.random.default_rng(0)
    return [sampler.sample(META_BATCH, rng).to(args.device) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory_worker(args: argparse.Namespace) -> None:
    """One meta-iteration in this fresh process; print its peak memory in MiB as JSON.

    CPU: a thread samples the resident set every 0.2 ms during the step; the parent starts
    this process with glibc's mmap threshold lowered so that freed tensors leave the resident
    set (otherwise the heap keeps them and the peak hides in reused memory).
    """
    device = torch.device(args.device)
    batch = EpisodeBatch(**torch.load(args.worker_batch)).to(device)
    learner = make_learner(device, args.worker_order == "first", args.worker_mode)
    learner.meta_train_step(batch)  # warm-up: lazy initialisation is not the step's memory
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        learner.meta_train_step(batch)
        sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base, samples, done = _rss(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(_rss())
                time.sleep(0.0002)

        thread = threading.Thread(target=sample)
        thread.start()
        learner.meta_train_step(batch)
        done.set()
        thread.join()
        peak = max(samples) - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def peak_memory(args: argparse.Namespace, order: str, mode: str, num_query: int) -> float:
    cmd = [sys.executable, __file__, "--omniglot", str(args.omniglot), "--device", args.device]
    cmd += ["--threads", str(args.threads), "--worker-order", order, "--worker-mode", mode]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.pt"
        (batch,) = episodes(args, num_query, 1)
        torch.save(vars(batch.to("cpu")), path)
        cmd += ["--worker-batch", str(path)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600, env=env)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def time_pair(args: argparse.Namespace, first_order: bool, num_query: int) -> dict[str, float]:
    device = torch.device(args.device)
    batches = episodes(args, num_query, args.iterations + 2)
    learners = {m: make_learner(device, first_order, m) for m in MODES}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i, batch in enumerate(batches):
        for mode, learner in learners.items():
            sync(device)
            start = time.perf_counter()
            learner.meta_train_step(batch)
            sync(device)
            if i >= 2:  # two warm-up iterations
                times[mode].append(time.perf_counter() - start)
    return {m: float(np.median(t)) for m, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--omniglot", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--num-query", type=int, nargs="+", default=[1, 15])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fewshot_vmap.md")
    p.add_argument("--worker-order", help=argparse.SUPPRESS)
    p.add_argument("--worker-mode", help=argparse.SUPPRESS)
    p.add_argument("--worker-batch", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker_order:
        peak_memory_worker(args)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")

    prov = Provenance(args.device, args.threads, script=__file__)
    rows = []
    for num_query in args.num_query:
        for order in ("second", "first"):
            t = time_pair(args, order == "first", num_query)
            mem = {m: peak_memory(args, order, m, num_query) for m in MODES}
            row = (
                f"| {order}-order | {num_query} | {t['loop'] * 1e3:.0f} | {t['vmap'] * 1e3:.0f} "
                f"| {t['fold'] * 1e3:.0f} | {t['loop'] / t['vmap']:.2f}× "
                f"| **{t['loop'] / t['fold']:.2f}×** | {mem['loop']:.0f} | {mem['vmap']:.0f} "
                f"| {mem['fold']:.0f} |"
            )
            print(row, flush=True)
            rows.append(row)
    prov.finish()
    header = [
        "",
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {args.device}, "
        f"{describe_machine(prov.machine)}, median of {args.iterations} iterations",
        "",
        f"1/5/15-minute {prov.describe_load()}",
        "",
        f"`{prov.command}`",
        "",
        "MAML, Omniglot 5-way 1-shot, meta-batch 32, strided Conv4 (64 filters), 1 inner step.",
        "",
        "| MAML | queries/class | loop ms/iter | vmap ms/iter | fold ms/iter | vmap speed-up "
        "| fold speed-up | loop peak MiB | vmap peak MiB | fold peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a") as f:
        if new:
            f.write("# MAML meta-batch: vmap vs a per-task Python loop\n")
            f.write("\nWritten by `scripts/bench_fewshot_vmap.py`; newest runs at the end.\n")
        f.write("\n".join(header + rows) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
