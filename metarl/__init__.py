"""metarl: meta-reinforcement learning on Gymnasium, MuJoCo and PyTorch.

Importing the package registers every task family with Gymnasium, so that
``gymnasium.make("metarl/Navigation2D-v0")`` works. ``metarl.load(run_dir)`` gives a
meta-trained policy to adapt, act with, evaluate and export (:mod:`metarl.agents.trained`).

This module is the face of ``import metarl``, at the top of the layers beside the command
line (``tests/test_layers.py``): it re-exports the core's public names, and no module of the
core, the families or the agents imports a name from it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from metarl.agents.trained import load


def __getattr__(name: str) -> Any:
    # metarl.load lives with the agents (it reads their registry): imported on first use, so
    # that `import metarl` (or any metarl.x, which runs this module first) loads no agent.
    if name == "load":
        from metarl.agents.trained import load

        return load
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")


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
    "load",
    "make",
    "make_batched",
    "make_task_env",
    "make_torch_batched",
    "register_family",
    "seed_everything",
    "task_distribution",
]
