"""metarl: meta-reinforcement learning on Gymnasium, MuJoCo and PyTorch.

Importing the package registers every task family with Gymnasium, so that
``gymnasium.make("metarl/Navigation2D-v0")`` works. A meta-trained policy to adapt, act
with, evaluate and export comes from ``metarl.agents.load(run_dir)`` (the agents sit above
the core, which never imports them).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from metarl.runs.seeding import seed_everything
from metarl.stepping.batched import BatchedTaskEnv, GenericBatchedEnv
from metarl.stepping.registry import (
    family,
    family_ids,
    make,
    make_batched,
    make_torch_batched,
    register_family,
    task_distribution,
)
from metarl.tasks import (
    BoxTaskDistribution,
    FiniteTaskDistribution,
    TaskDistribution,
    TaskError,
)
from metarl.tasks.env import TaskEnv, make_task_env

try:
    __version__ = version("metarl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from metarl import envs  # registers the task families

__all__ = [
    "BatchedTaskEnv",
    "BoxTaskDistribution",
    "FiniteTaskDistribution",
    "GenericBatchedEnv",
    "TaskDistribution",
    "TaskEnv",
    "TaskError",
    "__version__",
    "envs",
    "family",
    "family_ids",
    "make",
    "make_batched",
    "make_task_env",
    "make_torch_batched",
    "register_family",
    "seed_everything",
    "task_distribution",
]
