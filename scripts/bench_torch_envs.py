"""Env-steps/s of 2D navigation with a policy in the loop: NumPy backend vs torch backend.

Both step the same number of rows (tasks × episodes) for a full horizon with the same MLP
policy (2×100 ReLU, as in MAML). The NumPy backend pays a host round-trip per step (torch →
NumPy actions, NumPy → torch observations); the torch backend keeps everything on
``--device``. The ratio is printed from one run; results are appended to
``benchmarks/torch_envs.md`` with the command.

Usage: python scripts/bench_torch_envs.py [--rows 4000] [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import metarl
from metarl.evaluation.report import Provenance, describe_machine

ENV_ID = "metarl/Navigation2D-v0"


def policy(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2)
    )
    return net.to(device)


@torch.no_grad()
def run_numpy(rows: int, tasks: list, net: nn.Module, device: torch.device) -> float:
    env = metarl.make_batched(ENV_ID, rows, backend="numpy")
    obs, _ = env.reset(tasks, seeds=0)
    steps, start = 0, time.perf_counter()
    while env.active.any():
        action = net(torch.as_tensor(obs, device=device)).cpu().numpy()
        obs, *_ = env.step(action)
        steps += rows
    return steps / (time.perf_counter() - start)


@torch.no_grad()
def run_torch(rows: int, tasks: list, net: nn.Module, device: torch.device) -> float:
    env = metarl.make_torch_batched(ENV_ID, rows, device=str(device))
    obs, _ = env.reset(tasks, seed=0)
    steps, start = 0, time.perf_counter()
    # One host sync per step to know when every row is done, as a sampler would.
    while bool(env.active.any()):
        obs, _, _, _, _ = env.step(net(obs))
        steps += rows
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/torch_envs.md")
    args = parser.parse_args()
    device = metarl.stepping.torch_batched.resolve_device(args.device)
    prov = Provenance(str(device), script=__file__)
    train = metarl.task_distribution(ENV_ID).split("train")
    tasks = [train[i % len(train)] for i in range(args.rows)]
    net = policy(device)
    # The policy never reaches the goal within 0.01, so every row runs the full horizon.
    np_rates, t_rates = [], []
    for _ in range(args.repeats):
        np_rates.append(run_numpy(args.rows, tasks, net, device))
        t_rates.append(run_torch(args.rows, tasks, net, device))
    a, b = float(np.median(np_rates)), float(np.median(t_rates))
    prov.finish()
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} — {ENV_ID}, {args.rows} rows × horizon 100, "
        f"policy in the loop, device {device}; {describe_machine(prov.machine)}, "
        f"{prov.describe_load()}",
        "",
        f"command: `{prov.command}`",
        "",
        "| backend | env-steps/s (median of repeats) |",
        "| --- | ---: |",
        f"| NumPy (host round-trip per step) | {a:,.0f} |",
        f"| torch on {device} | {b:,.0f} |",
        f"| ratio torch / NumPy | {b / a:.2f}× |",
        "",
    ]
    print("\n".join(lines))
    out = Path(args.out)  # a log: each run appends its section
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
