"""Env steps per second of RL² training, split into collection and the PPO update.

For each task family — Bernoulli bandits (k = 5, n = 100 pulls: the ``bandit-k5-n100``
preset), random tabular MDPs (n = 10 episodes of 10 steps: ``mdp-n10``) and 2D navigation
(``nav2d``: 4 episodes of 100 steps per trial, continuous actions) — and for each env
backend RL² supports (``torch``: the family's on-device batched env, no host round trip;
``numpy``: the vectorised NumPy env with one transfer per step), this builds the agent of
``agents/rl2.py`` and times, over ``--iterations`` training iterations
(:meth:`RL2.iteration`) after one warm-up, with the seconds each iteration reports:

* **collection** — the trials (:func:`metarl.agents.rl2.collect_trials`: the GRU stepped
  once per env step for all trials, the env stepped with it);
* **PPO update** — the update on those trials (trial-level GAE, ``update_epochs`` ×
  ``num_minibatches`` passes of the GRU over whole trials, backward, Adam);
* **iteration** — the whole iteration (both, plus bookkeeping).

Env steps/s = env steps collected ÷ seconds (for the update: the steps of the batch it
learns from). The median over the iterations is reported. Results go to
``benchmarks/rl2_throughput.{json,md}`` with the command and the machine's load.

Usage: python scripts/bench_rl2_throughput.py [--iterations 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents import rl2
from metarl.evaluation.report import Provenance, describe_machine, write_report

OUT = Path(__file__).resolve().parent.parent / "benchmarks"

FAMILIES: dict[str, rl2.RL2Config] = {
    "bandit k=5, n=100": rl2.PRESETS["bandit-k5-n100"],
    "MDP n=10": rl2.PRESETS["mdp-n10"],
    "2D navigation, 4 episodes": rl2.PRESETS["nav2d"],
}


def measure(cfg: rl2.RL2Config, iterations: int) -> dict[str, Any]:
    """Median env steps/s of collection, PPO update and a whole iteration."""
    agent = rl2.RL2(cfg)
    rows: dict[str, list[float]] = {"collect": [], "update": [], "iteration": []}
    steps_per_iteration = 0
    try:
        for it in range(iterations + 1):  # the first is a warm-up
            stats = agent.iteration(it)
            steps = stats["env_steps"]
            if it:
                rows["collect"].append(steps / stats["sample_s"])
                rows["update"].append(steps / stats["update_s"])
                rows["iteration"].append(steps / stats["iteration_s"])
                steps_per_iteration = int(steps)
    finally:
        agent.close()
    return {
        "steps_per_iteration": steps_per_iteration,
        **{f"{k}_steps_per_s": float(np.median(v)) for k, v in rows.items()},
        **{f"{k}_steps_per_s_all": [round(x, 1) for x in v] for k, v in rows.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", default=str(OUT), help="folder for rl2_throughput.{json,md}")
    parser.add_argument(
        "--num-trials",
        type=int,
        default=None,
        help="trials per iteration for every family "
        "(default: each preset's, 256/256/64); small values for a smoke test",
    )
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.threads < 1:
        parser.error("--iterations and --threads must be >= 1")
    if args.num_trials is not None and (args.num_trials < 2 or args.num_trials % 2):
        parser.error("--num-trials must be an even number >= 2 (two minibatches of trials)")
    torch.set_num_threads(args.threads)
    prov = Provenance(
        args.device, args.threads, argv=sys.argv[1:] if argv is None else argv, script=__file__
    )
    results: list[dict[str, Any]] = []
    for family, base in FAMILIES.items():
        for backend in ("torch", "numpy"):
            cfg = dataclasses.replace(base, backend=backend, device=args.device, seed=0)
            if args.num_trials is not None:  # as many of the preset's minibatches as divide it
                minibatches = math.gcd(args.num_trials, cfg.num_minibatches)
                cfg = dataclasses.replace(cfg, num_trials=args.num_trials,
                                          num_minibatches=minibatches)  # fmt: skip
            row = {"family": family, "backend": backend, **measure(cfg, args.iterations)}
            row["config"] = {
                k: getattr(cfg, k)
                for k in ("env_id", "episodes_per_trial", "max_episode_steps", "num_trials",
                          "hidden_size", "update_epochs", "num_minibatches")
            }  # fmt: skip
            results.append(row)
            print(
                f"{family:28s} {backend:6s} collect {row['collect_steps_per_s']:>10,.0f}  "
                f"update {row['update_steps_per_s']:>10,.0f}  "
                f"iteration {row['iteration_steps_per_s']:>10,.0f} steps/s",
                flush=True,
            )
    prov.finish()
    out = Path(args.out)
    lines = [
        "# RL² training throughput",
        "",
        f"Made by `{prov.command}`: {args.iterations} timed iterations per row after one warm-up, "
        "median shown (every value in rl2_throughput.json).",
        "",
        f"Machine: {describe_machine(prov.machine)}, device `{args.device}`, "
        f"{prov.describe_load()}. Absolute numbers move with the load; the ratios within one run "
        "are the comparison.",
        "",
        "| family | backend | trials | env steps per iteration | collection (steps/s) | "
        "PPO update (steps/s) | whole iteration (steps/s) | iteration: torch ÷ numpy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_key = {(r["family"], r["backend"]): r for r in results}
    for r in results:
        c = r["config"]
        ratio = ""
        if r["backend"] == "torch" and (r["family"], "numpy") in by_key:
            other = by_key[(r["family"], "numpy")]["iteration_steps_per_s"]
            ratio = f"{r['iteration_steps_per_s'] / other:.2f}"
        lines.append(
            f"| {r['family']} | {r['backend']} | {c['num_trials']} | "
            f"{r['steps_per_iteration']:,} | "
            f"{r['collect_steps_per_s']:,.0f} | {r['update_steps_per_s']:,.0f} | "
            f"{r['iteration_steps_per_s']:,.0f} | {ratio} |"
        )
    lines += [
        "",
        "Collection steps the GRU once per env step for every trial of the batch; the PPO",
        "update runs the GRU over whole trials (`update_epochs` × `num_minibatches` passes) and",
        "back. `torch` is the family's on-device batched env (pure torch, no host round trip),",
        "`numpy` its vectorised NumPy env with one host transfer per step; on a CPU both live in",
        "host memory, so their gap is the per-step conversion and checking. 2D-navigation",
        "episodes end early at the goal, so its steps per iteration vary. GPU numbers are not",
        "here: not measured on a GPU yet (`--device cuda` measures them, where the",
        "torch backend saves a host round trip per step).",
    ]
    write_report("rl2_throughput", {"results": results}, lines, out, prov)
    print(f"wrote {out / 'rl2_throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
