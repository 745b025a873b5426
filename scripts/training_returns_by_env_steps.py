"""Meta-training returns against environment steps, read from runs' ``metrics.csv``.

For each run directory given, the returns the agent logged while meta-training — before and
after adaptation: MAML's ``pre_adapt_return`` / ``post_adapt_return`` (one inner step),
RL²'s and VariBAD's ``first_episode_return`` / ``last_episode_return`` of their trials — are
averaged over windows of iterations ending at a few env-step counts, so agents with
different iteration sizes compare at the same number of env steps. Prints a Markdown table.

Usage: python scripts/training_returns_by_env_steps.py RUN_DIR [RUN_DIR ...]
       [--at 120000 240000 360000 480000] [--window 0.1]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from metarl.runs import Run

#: agent -> (column before adaptation, column after, what they are)
COLUMNS = {
    "maml-trpo": ("pre_adapt_return", "post_adapt_return", "before → after 1 gradient step"),
    "rl2": ("first_episode_return", "last_episode_return", "episode 1 → last episode"),
    "varibad": ("first_episode_return", "last_episode_return", "episode 1 → last episode"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--at", type=int, nargs="+", default=[120_000, 240_000, 360_000, 480_000])
    parser.add_argument(
        "--window", type=float, default=0.1, help="average the iterations within this share"
    )
    args = parser.parse_args(argv)
    print("| agent | returns | " + " | ".join(f"{s:,} steps" for s in args.at) + " |")
    print("| --- | --- |" + " ---: |" * len(args.at))
    for run in map(Path, args.runs):
        agent = Run.read_record(run)["agent"]
        if agent not in COLUMNS:
            raise SystemExit(f"{run}: no training returns known for agent {agent!r}")
        before, after, what = COLUMNS[agent]
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        steps = np.cumsum([float(r["env_steps"]) for r in rows])
        cells = []
        for at in args.at:
            pick = (steps <= at) & (steps > at * (1 - args.window))
            if not pick.any():
                cells.append("—")
                continue
            b = np.mean([float(r[before]) for r, p in zip(rows, pick, strict=True) if p])
            a = np.mean([float(r[after]) for r, p in zip(rows, pick, strict=True) if p])
            cells.append(f"{b:.2f} → {a:.2f}")
        print(f"| {agent} | {what} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
