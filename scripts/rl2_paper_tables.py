"""RL² and the classic baselines beside the RL² paper's Tables 1–2 (Duan et al. 2016).

For each setting — Bernoulli bandits with k ∈ {5, 10} arms and n ∈ {10, 100} pulls, random
tabular MDPs with n ∈ {10, 25} episodes — this script

1. tunes every classic baseline on training tasks and evaluates it on the 100 held-out tasks
   (``metarl.agents.bandit_baselines``, ``metarl.agents.mdp_baselines``);
2. trains RL² from its preset in a run directory under ``--runs-dir`` (resuming it when it
   holds a checkpoint) and
   evaluates it on the same held-out tasks;
3. writes ``results.json`` (merged with earlier settings' results) and ``tables.md`` with our
   numbers beside the paper's, and the command that made them, under ``--out``.

Usage (what made benchmarks/rl2_tables/; one thread, one setting after another):
    python scripts/rl2_paper_tables.py --settings all
    python scripts/rl2_paper_tables.py --settings bandit-k5-n10 --iterations 50   # quick look
"""

from __future__ import annotations

import argparse
import csv
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
from metarl.evaluation import mean_ci95
from metarl.evaluation.report import load_average
from metarl.runs import load_checkpoint_file

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


def _mean_ci(values: np.ndarray) -> dict[str, Any]:
    """Mean, 95% CI half-width over tasks, and the per-task values (for paired comparisons:
    every method runs on the same held-out tasks, in the same order)."""
    values = np.asarray(values, dtype=np.float64)
    mean, half = mean_ci95(values)
    return {"mean": float(mean), "ci95": float(half), "per_task": values.round(4).tolist()}


def _loadavg() -> str:
    """The load averages now, as the tables print them."""
    load = load_average()
    return "unknown" if load is None else " ".join(f"{x:.2f}" for x in load)


def paired(results: dict[str, Any], a: str, b: str) -> tuple[float, float] | None:
    """Mean and 95% CI of ``a − b`` over the held-out tasks (paired by task), or None when
    either lacks per-task values."""
    x, y = results.get(a, {}).get("per_task"), results.get(b, {}).get("per_task")
    if not x or not y or len(x) != len(y):
        return None
    mean, half = mean_ci95(np.asarray(x) - np.asarray(y))
    return float(mean), float(half)


def _overrides(pairs: list[str], cfg: rl2.RL2Config) -> dict[str, Any]:
    """``["lr=3e-3", "gae_lambda=0.9"]`` as RL2Config fields of the right types; ValueError
    naming the pair and what is allowed otherwise."""
    allowed = sorted({f.name for f in dataclasses.fields(cfg)} - {"env_id", "episodes_per_trial"})
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in allowed:
            raise ValueError(
                f"--set {pair!r}: give KEY=VALUE with KEY an RL2Config field other than env_id "
                f"and episodes_per_trial (one of {allowed})"
            )
        current = getattr(cfg, key)
        try:
            out[key] = type(current)(text) if current is not None else text
        except ValueError as e:
            raise ValueError(f"--set {pair!r}: {e}") from e
    dataclasses.replace(cfg, **out).validate()  # out of range: the config's own message
    return out


def run_baselines(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = rl2.PRESETS[setting]
    dist = metarl.task_distribution(cfg.env_id)
    train = dist.split("train")[: args.tune_tasks]
    test = dist.split("test")
    out: dict[str, Any] = {}
    names = bb.BASELINES if setting.startswith("bandit") else mb.BASELINES
    for name in names:
        if args.baselines and name not in args.baselines:
            continue
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


def run_rl2(setting: str, args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any]:
    cfg = rl2.PRESETS[setting]
    if args.iterations is not None:
        cfg = dataclasses.replace(cfg, num_iterations=args.iterations)
    if args.set:
        cfg = dataclasses.replace(cfg, **_overrides(args.set, cfg))  # checked in main
    runs = Path(args.runs_dir)
    base = runs / CURRICULUM.get(setting, "")
    if setting in CURRICULUM and (base / "checkpoint.pt").exists() and not args.no_curriculum:
        cfg = dataclasses.replace(cfg, init_from=str(base))
    run_dir = runs / setting
    before = _iterations_done(run_dir)
    load_before = _loadavg()
    # A run directory with a checkpoint continues; one without (stopped before its first
    # checkpoint) starts again.
    rl2.train(cfg, run_dir, resume=before > 0, overwrite=before == 0,
              log=lambda line: print(f"  {setting} rl2 {line}", flush=True))  # fmt: skip
    trained = _iterations_done(run_dir) > before
    # The load while it trained; a run finished earlier (only evaluated now) keeps its own.
    load = [load_before, _loadavg()] if trained else previous.get("loadavg_before_after")
    agent = rl2.load_agent(run_dir)
    curve = agent.evaluate(trials_per_task=args.eval_runs, seed=1)
    per_task = curve.returns.sum(-1).mean(0)  # trial return, mean over trials, per task
    with (run_dir / "metrics.csv").open(newline="") as f:
        train_s = sum(float(row["iteration_s"]) for row in csv.DictReader(f))
    return {
        **_mean_ci(per_task),
        "episode_returns_mean": curve.mean().tolist(),
        "iterations": agent.iterations,
        "meta_train_env_steps": agent.env_steps,
        "meta_train_seconds": round(train_s, 1),
        "loadavg_before_after": load or ["not recorded", "not recorded"],
        "config": dataclasses.asdict(cfg),
    }


def _iterations_done(run_dir: Path) -> int:
    """Iterations of the run's last checkpoint (0 without one)."""
    path = run_dir / "checkpoint.pt"
    return int(load_checkpoint_file(path, agent=rl2.AGENT)["iteration"]) if path.exists() else 0


def _preset_diff(setting: str, config: dict[str, Any]) -> str:
    """The RL2Config fields of a run that differ from its preset (iterations aside)."""
    preset = dataclasses.asdict(rl2.PRESETS[setting])
    skip = ("num_iterations", "init_from")
    diff = [f"{k}={v}" for k, v in config.items() if k not in skip and preset.get(k) != v]
    return ", ".join(diff) or "preset"


def write_tables(results: dict[str, Any], out: Path, command: str) -> None:
    commands: list[str] = []
    for s in SETTINGS:
        for c in results.get(s, {}).get("commands", []):
            if c not in commands:
                commands.append(c)
    lines = [
        "# RL² and the classic baselines beside Duan et al. 2016, Tables 1–2",
        "",
        "Made by these commands, in this order (CPU, one thread, on a 2-core machine **shared",
        "**; the load of each RL² run is in the last table):",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Each cell: **ours** ± 95% CI over tasks (paper). Ours is the mean trial return on the",
        "100 held-out tasks, each task over `--eval-runs` trials. The CIs over tasks are wide",
        "because tasks differ (a bandit whose best arm pays 0.6 against one at 0.99); every",
        "method runs on the same tasks, so the paired differences below are the sharper",
        "comparison. Baselines' hyperparameters were tuned on training tasks only",
        "(`tuning_scores_on_train_tasks` in results.json).",
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
    trained = [s for s in SETTINGS if results.get(s, {}).get("rl2")]
    if trained:
        lines += [
            "## RL² against the paper's RL² and our best baselines",
            "",
            "Gap to the paper: (ours − paper's RL²) / paper's RL². Paired: RL² minus the",
            "baseline on the same held-out tasks, mean ± 95% CI over tasks.",
            "",
            "| setting | RL² ours | RL² paper | gap to paper | paired vs | RL² − it |",
            "| --- | ---: | ---: | ---: | --- | ---: |",
        ]
        for s in trained:
            r = results[s]
            ours = r["rl2"]["mean"]
            gap = 100.0 * (ours - PAPER[s]["rl2"]) / PAPER[s]["rl2"]
            names = [k for k in ("gittins", "ucb1") if k in r and s.startswith("bandit")]
            baselines = [k for k in PAPER[s] if k not in ("rl2", "random") and k in r]
            if baselines:  # and the best of ours, whatever it is
                best = max(baselines, key=lambda k: r[k]["mean"])
                if best not in names:
                    names.append(best)
            for i, name in enumerate(names):
                d = paired(r, "rl2", name)
                diff = f"{d[0]:+.2f} ± {d[1]:.2f}" if d else "—"
                head = (
                    f"| {s} | {ours:.2f} | {PAPER[s]['rl2']} | {gap:+.1f}% "
                    if i == 0
                    else ("| | | | ")
                )
                lines.append(f"{head}| {name} ({r[name]['mean']:.2f}) | {diff} |")
        lines += [
            "",
            "## RL² training (shortened CPU schedules)",
            "",
            "| setting | iterations | trials per iteration | env steps | wall-clock (s) | "
            "load before, after | settings vs preset | started from |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for s in trained:
            r = results[s]["rl2"]
            cfg = r["config"]
            load = " / ".join(r.get("loadavg_before_after", ["?", "?"]))
            init = Path(cfg["init_from"]).stem if cfg.get("init_from") else "scratch"
            lines.append(
                f"| {s} | {r['iterations']} | {cfg['num_trials']} | "
                f"{r['meta_train_env_steps']:,} | {r['meta_train_seconds']:.0f} | {load} | "
                f"{_preset_diff(s, cfg)} | {init} |"
            )
        lines.append("")
    (out / "tables.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["all"], help=f"all or of {SETTINGS}")
    parser.add_argument("--out", default="benchmarks/rl2_tables")
    parser.add_argument(
        "--runs-dir", default="runs/rl2_tables", help="RL² run directories, one per setting"
    )
    parser.add_argument("--iterations", type=int, default=None, help="override the presets'")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override RL2Config fields of the presets, e.g. --set lr=3e-3 ent_coef=0.02",
    )
    parser.add_argument("--eval-runs", type=int, default=20, help="trials per held-out task")
    parser.add_argument("--tune-tasks", type=int, default=200, help="training tasks for tuning")
    parser.add_argument("--skip-rl2", action="store_true")
    parser.add_argument(
        "--no-curriculum",
        action="store_true",
        help=f"train every setting from scratch ({CURRICULUM})",
    )
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these baselines (default: all of the setting's; others keep their "
        "earlier results)",
    )
    args = parser.parse_args(argv)
    settings = SETTINGS if args.settings == ["all"] else args.settings
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {SETTINGS}")
    for setting in settings:
        try:
            _overrides(args.set, rl2.PRESETS[setting])
        except ValueError as e:
            parser.error(str(e))
    known = set(bb.BASELINES) | set(mb.BASELINES)
    if args.baselines and not set(args.baselines) <= known:
        parser.error(
            f"unknown baselines {sorted(set(args.baselines) - known)}; choose from {sorted(known)}"
        )
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    command = "python scripts/rl2_paper_tables.py " + " ".join(
        map(shlex.quote, sys.argv[1:] if argv is None else argv)
    )
    for setting in settings:
        entry = results.setdefault(setting, {})
        if not args.skip_baselines:
            entry.update(run_baselines(setting, args))
        if not args.skip_rl2:
            entry["rl2"] = run_rl2(setting, args, entry.get("rl2") or {})
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
