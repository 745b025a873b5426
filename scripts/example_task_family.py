"""From "my Gymnasium env has a parameter" to "my task family is registered and meta-trainable".

The env here is Gymnasium's classic-control Pendulum, whose pole mass ``m`` and length ``l``
are plain attributes; a task family over them takes four steps:

1. a frozen dataclass for the task;
2. a distribution over it (fixed, disjoint train/test splits come with it);
3. ``metarl.make_task_env``: the env class plus a function that writes a task into the env;
4. ``metarl.register_family``: a Gymnasium id with its horizon.

Then ``metarl check-env scripts/example_task_family.py:PendulumDynamics`` checks it (Gymnasium
and SB3 checkers, determinism, task sensitivity, splits, batched vs single), and
``metarl.make_batched`` steps a meta-batch of its tasks × episodes — what a meta-RL sampler
consumes.

Usage: python scripts/example_task_family.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

import metarl
from metarl.stepping.checks import check_env, format_report


# 1. The task: the parameters that vary, as a frozen dataclass.
@dataclass(frozen=True)
class PendulumTask:
    mass: float
    length: float


# 2. The distribution: each field log-uniform between its bounds (×/÷ 2 around Gymnasium's 1.0).
distribution = metarl.BoxTaskDistribution(
    "PendulumDynamics",
    PendulumTask,
    low={"mass": 0.5, "length": 0.5},
    high={"mass": 2.0, "length": 2.0},
    log_scale=["mass", "length"],
    num_train=200,
    num_test=40,
    description="pole mass and length, log-uniform in [0.5, 2]",
)


# 3. The task env: how a task reaches the simulation.
def apply_task(env: PendulumEnv, task: PendulumTask) -> None:
    env.m = task.mass
    env.l = task.length


PendulumDynamics = metarl.make_task_env(PendulumEnv, distribution, apply_task)

# 4. The registration: a Gymnasium id, its horizon; the generic batched backend comes free.
ENV_ID = "examples/PendulumDynamics-v0"
if ENV_ID not in metarl.family_ids():
    metarl.register_family(ENV_ID, PendulumDynamics, max_episode_steps=200)


def main() -> int:
    results = check_env(ENV_ID)
    print(format_report(ENV_ID, results))
    if any(r.ok is False for r in results):
        return 1
    # A meta-batch: 8 training tasks × 4 episodes, stepped together, (B, ...) arrays.
    tasks = distribution.split("train")[:8]
    batch = metarl.make_batched(ENV_ID, 8 * 4)
    batch.reset([t for t in tasks for _ in range(4)], seeds=0)
    rng = np.random.default_rng(0)
    returns = np.zeros(batch.num_envs)
    while batch.active.any():
        actions = rng.uniform(-2, 2, (batch.num_envs, 1)).astype(np.float32)
        _, reward, *_ = batch.step(actions)
        returns += reward
    per_task = returns.reshape(8, 4).mean(axis=1)
    print("random-policy return per training task:", np.round(per_task, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
