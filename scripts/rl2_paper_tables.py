"""RL² and the classic baselines beside the RL² paper's Tables 1–2 (Duan et al. 2016).

For each setting — Bernoulli bandits with k ∈ {5, 10} arms and n ∈ {10, 100} pulls, random
tabular MDPs with n ∈ {10, 25} episodes — this script

1. tunes every classic baseline on training tasks and evaluates it on the 100 held-out tasks
   (``metarl.agents.bandit_baselines``, ``metarl.agents.mdp_baselines``);
2. trains RL² from its preset (resuming from ``--runs-dir`` when a checkpoint is there) and
   evaluates it on the same held-out tasks;
3. writes ``results.json`` (merged with earlier settings' results) and ``tables.md`` with our
   numbers beside the paper's, and the command that made them, under ``--out``.

Usage (what made benchmarks/rl2_tables/; one thread, one setting after another):
    python scripts/rl2_paper_tables.py --settings all
    python scripts/rl2_paper_tables.py --settings bandit-k5-n10 --iterations 50   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metarl
from metarl.agents import bandit_baselines as bb
from metarl.agents import mdp_baselines as mb
from metarl.agents import rl2

# Duan et al. 2016, Table 1 (bandits: k arms, n pulls) and Table 2 (MDPs: n episodes),
# as transcribed; columns without a counterpart here are left out.
PAPER: dict[str, dict[str, float]] = {
    "bandit-k5-n10": {
        "random": 5.0, "gittins": 6.6, "thompson": 5.7, "optimistic_thompson": 5.8,
        "ucb1": 6.7, "epsilon_greedy": 6.6, "greedy": 6.6, "rl2": 6.7,
    },
    "bandit-k10-n10": {
        "random": 5.0, "gittins": 6.6, "thompson": 5.5, "optimistic_thompson": 5.6,
        "ucb1": 6.7, "epsilon_greedy": 6.6, "greedy": 6.6, "rl2": 6.7,
    },
    "bandit-k5-n100": {
        "random": 49.9, "gittins": 78.3, "thompson": 74.7, "optimistic_thompson": 74.1,
        "ucb1": 78.0, "epsilon_greedy": 75.4, "greedy": 74.8, "rl2": 78.7,
    },
    "bandit-k10-n100": {
        "random": 49.9, "gittins": 82.8, "thompson": 76.7, "optimistic_thompson": 76.6,
        "ucb1": 82.4, "epsilon_greedy": 77.4, "greedy": 77.1, "rl2": 83.5,
    },
    "mdp-n10": {
        "random": 100.1, "psrl": 138.1, "ucrl2": 146.6, "beb": 150.2,
        "epsilon_greedy": 132.8, "greedy": 134.8, "rl2": 156.2,
    },
    "mdp-n25": {
        "random": 250.2, "psrl": 408.8, "ucrl2": 424.1, "beb": 427.8,
        "epsilon_greedy": 377.3, "greedy": 368.8, "rl2": 445.7,
    },
}  # fmt: skip
SETTINGS = list(PAPER)
# Long trials start from the short-trial run of the same family (a curriculum; see README).
CURRICULUM = {"bandit-k5-n100": "bandit-k5-n10", "bandit-k10-n100": "bandit-k10-n10",
              "mdp-n25": "mdp-n10"}  # fmt: skip


def _mean_ci(values: np.ndarray) -> dict[str, float]:
    from metarl.evaluation import mean_ci95

    mean, half = mean_ci95(np.asarray(values, dtype=np.float64))
    return {"mean": float(mean), "ci95": float(half)}


def run_baselines(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = rl2.PRESETS[setting]
    dist = metarl.task_distribution(cfg.env_id)
    train = dist.split("train")[: args.tune_tasks]
    test = dist.split("test")
    out: dict[str, Any] = {}
    for name in bb.BASELINES if setting.startswith("bandit") else mb.BASELINES:
        start = time.perf_counter()
        if setting.startswith("bandit"):
            n = int(cfg.max_episode_steps or 0)
            policy, scores = bb.tune(name, cfg.env_id, train, n, num_runs=5, seed=0)
            per_task = bb.evaluate(policy, cfg.env_id, test, n, args.eval_runs, seed=1)
        else:
            n = cfg.episodes_per_trial
            policy, scores = mb.tune(name, train, n, num_runs=3, seed=0, env_id=cfg.env_id)
            per_task = mb.evaluate(policy, test, n, args.eval_runs, seed=1, env_id=cfg.env_id)
        out[name] = {
            **_mean_ci(per_task),
            "hyperparameters": policy.hyperparameters(),
            "tuning_scores_on_train_tasks": scores,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"  {setting} {name}: {out[name]['mean']:.1f}", flush=True)
    return out


def run_rl2(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = rl2.PRESETS[setting]
    if args.iterations is not None:
        cfg = dataclasses.replace(cfg, num_iterations=args.iterations)
    base = Path(args.runs_dir) / f"{CURRICULUM.get(setting, '')}.pt"
    if setting in CURRICULUM and base.exists() and not args.no_curriculum:
        cfg = dataclasses.replace(cfg, init_from=str(base))
    agent = rl2.RL2(cfg)
    ckpt = Path(args.runs_dir) / f"{setting}.pt"
    start = time.perf_counter()

    def log(stats: dict[str, float]) -> None:
        if stats["iteration"] % 25 == 0:
            print(
                f"  {setting} rl2 it {int(stats['iteration'])}/{cfg.num_iterations} "
                f"trial return {stats['trial_return']:.2f} entropy {stats['entropy']:.3f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )

    agent.train(checkpoint=ckpt, checkpoint_every=25, log=log)
    curve = agent.evaluate(trials_per_task=args.eval_runs, seed=1)
    per_task = curve.returns.sum(-1).mean(0)  # trial return, mean over trials, per task
    train_s = sum(h["total_s"] for h in agent.history)
    return {
        **_mean_ci(per_task),
        "episode_returns_mean": curve.mean().tolist(),
        "iterations": agent.iteration,
        "meta_train_env_steps": agent.env_steps,
        "meta_train_seconds": round(train_s, 1),
        "config": dataclasses.asdict(cfg),
    }


def write_tables(results: dict[str, Any], out: Path, command: str) -> None:
    lines = [
        "# RL² and the classic baselines beside Duan et al. 2016, Tables 1–2",
        "",
        f"Made by `{command}` (CPU, one thread).",
        "",
        "Each cell: **ours** (paper). Ours is the mean trial return on the 100 held-out tasks",
        "(each over several trials), ± the 95% CI over tasks. Baselines' hyperparameters were",
        "tuned on training tasks only (`tuning_scores_on_train_tasks` in results.json).",
        "",
    ]
    for kind, title in (
        ("bandit", "Bandits (Table 1): k arms, n pulls"),
        ("mdp", "MDPs (Table 2)"),
    ):
        settings = [s for s in SETTINGS if s.startswith(kind) and s in results]
        if not settings:
            continue
        cols = list(PAPER[settings[0]])
        lines += [f"## {title}", "", "| setting | " + " | ".join(cols) + " |"]
        lines.append("|" + " --- |" * (len(cols) + 1))
        for s in settings:
            cells = []
            for c in cols:
                got = results[s].get(c)
                ours = f"**{got['mean']:.1f}** ± {got['ci95']:.1f}" if got else "—"
                cells.append(f"{ours} ({PAPER[s][c]})")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## RL² training",
        "",
        "| setting | iterations | env steps | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        r = results.get(s, {}).get("rl2")
        if r:
            lines.append(
                f"| {s} | {r['iterations']} | {r['meta_train_env_steps']:,} | "
                f"{r['meta_train_seconds']:.0f} |"
            )
    (out / "tables.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["all"], help=f"all or of {SETTINGS}")
    parser.add_argument("--out", default="benchmarks/rl2_tables")
    parser.add_argument("--runs-dir", default="runs/rl2_tables", help="RL² checkpoints")
    parser.add_argument("--iterations", type=int, default=None, help="override the presets'")
    parser.add_argument("--eval-runs", type=int, default=20, help="trials per held-out task")
    parser.add_argument("--tune-tasks", type=int, default=200, help="training tasks for tuning")
    parser.add_argument("--skip-rl2", action="store_true")
    parser.add_argument(
        "--no-curriculum",
        action="store_true",
        help=f"train every setting from scratch ({CURRICULUM})",
    )
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args(argv)
    settings = SETTINGS if args.settings == ["all"] else args.settings
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {SETTINGS}")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    command = "python scripts/rl2_paper_tables.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    for setting in settings:
        entry = results.setdefault(setting, {})
        if not args.skip_baselines:
            entry.update(run_baselines(setting, args))
        if not args.skip_rl2:
            entry["rl2"] = run_rl2(setting, args)
            print(f"  {setting} rl2: {entry['rl2']['mean']:.1f}", flush=True)
        entry.setdefault("commands", [])
        entry["commands"].append(command)
        entry["paper"] = PAPER[setting]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)
        write_tables(results, out, command)
    print((out / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
