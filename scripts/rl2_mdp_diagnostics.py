"""Why RL² plateaus on the random tabular MDPs (Duan et al. 2016, Sec. 4.2): reference values
of the task family and what trained RL² checkpoints do.

Reference values (exact expectations from the true MDP, per held-out task, from state 0 over
one 10-step episode, averaged over the 100 held-out tasks):

* ``oracle``: finite-horizon value iteration with the true MDP (Bellman 1957);
* ``myopic``: in every state the action with the largest mean reward R(s, a) (known R,
  no lookahead) — how much of the oracle needs no planning over transitions;
* ``fixed_action``: the best single action used in every state (known R) — the ceiling of a
  policy that learns *which action* is good but not *in which state*.

For each RL² run directory (``metarl train --agent rl2``, or
``scripts/rl2_paper_tables.py``'s): the training curve (mean of the last 10 iterations of each
25), the held-out return per episode of a trial, and how state-dependent its actions are late
in a trial: the share of steps of episodes
``n - 2 .. n`` on the trial's most common action, beside the same share for the oracle
(which follows the MDP's states).

Usage:
    python scripts/rl2_mdp_diagnostics.py runs/rl2_tables/mdp-n10 runs/abl_sepv/mdp-n10
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metarl
from metarl.agents import rl2
from metarl.agents.mdp_baselines import finite_horizon_q

ENV = "metarl/TabularMDP-S10A5-v0"


def _arrays(task: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(task.transitions, dtype=np.float64), np.asarray(task.rewards)


def episode_values(task: Any, horizon: int = 10) -> dict[str, float]:
    """Expected return of one episode from state 0 under the oracle, myopic and best
    fixed-action policies (all with the true R and P)."""
    p, r = _arrays(task)
    states, actions = r.shape
    v_opt = finite_horizon_q(p[None], r[None], horizon)[0, 0].max(1)
    v_myo = np.zeros(states)
    greedy = r.argmax(1)
    for _ in range(horizon):
        v_myo = r[np.arange(states), greedy] + p[np.arange(states), greedy] @ v_myo
    fixed = []
    for a in range(actions):
        v = np.zeros(states)
        for _ in range(horizon):
            v = r[:, a] + p[:, a] @ v
        fixed.append(v[0])
    return {"oracle": float(v_opt[0]), "myopic": float(v_myo[0]), "fixed_action": max(fixed)}


def oracle_modal_share(tasks: list[Any], episodes: int, trials: int, seed: int) -> float:
    """Share of the oracle's steps over ``episodes`` episodes on its most common action."""
    rng = np.random.default_rng(seed)
    shares = []
    for task in tasks:
        p, r = _arrays(task)
        plan = finite_horizon_q(p[None], r[None], 10)[0].argmax(-1)  # [h]: h steps in
        for _ in range(trials):
            acts = []
            for _ in range(episodes):
                s = 0
                for h in range(10):
                    acts.append(plan[h][s])
                    s = int(rng.choice(len(r), p=p[s, plan[h][s]]))
            shares.append(np.bincount(acts).max() / len(acts))
    return float(np.mean(shares))


def curve(run_dir: Path) -> list[str]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        hist = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    out = []
    for end in range(25, len(hist) + 1, 25):
        last = hist[end - 10 : end]
        out.append(
            f"    it {end:4d}: trial return {np.mean([h['trial_return'] for h in last]):6.1f}"
            f" entropy {np.mean([h['entropy'] for h in last]):.3f}"
        )
    return out


def behaviour(run_dir: Path, tasks: list[Any], trials: int, seed: int) -> tuple[np.ndarray, float]:
    """(held-out return per episode, share of late steps on the trial's most common action)."""
    agent = rl2.load_agent(run_dir)
    n = agent.config.episodes_per_trial
    got = agent.collect([t for _ in range(trials) for t in tasks], n, seed)
    horizon = got.actions.shape[0] // n
    late = got.actions[-3 * horizon :].numpy()  # the last three episodes
    share = np.mean([np.bincount(late[:, b]).max() / late.shape[0] for b in range(late.shape[1])])
    return got.episode_returns.mean(1).numpy(), float(share)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="RL² run directories")
    parser.add_argument("--trials", type=int, default=4, help="trials per held-out task")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not (p / "checkpoint.pt").is_file()]
    if missing:
        parser.error(f"no checkpoint in {missing}; give RL² run directories")
    torch.set_num_threads(1)
    tasks = list(metarl.task_distribution(ENV).split("test"))
    values = [episode_values(t) for t in tasks]
    print("Per 10-step episode from state 0, mean over the 100 held-out tasks (true R and P):")
    for key in ("oracle", "myopic", "fixed_action"):
        print(f"  {key:12s} {np.mean([v[key] for v in values]):6.2f}")
    share = oracle_modal_share(tasks, 3, args.trials, args.seed)
    print(f"  oracle: share of 3 episodes' steps on its most common action {share:.2f}")
    for path in args.runs:
        returns, share = behaviour(path, tasks, args.trials, args.seed)
        print(f"{path}:")
        print("  held-out return per episode " + " ".join(f"{x:.2f}" for x in returns))
        print(f"  last 3 episodes: share of steps on the trial's most common action {share:.2f}")
        print("\n".join(curve(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
