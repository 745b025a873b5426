"""The agent contract: what every meta-RL agent provides, in one place.

An agent is one module in ``metarl.agents`` plus one line in its registry. The module
provides

* ``AGENT`` — its registry name (``metarl train --agent NAME``);
* ``CONFIG`` — its :class:`metarl.runs.config.RunConfig` subclass: fields are the command's
  ``--options`` (with their help and defaults), ``presets`` hold papers' settings;
* ``CAPABILITIES`` — a :class:`Capabilities`: how its policy adapts to a task (gradient
  steps, episodes of context, or not at all), and which task families and devices it takes;
  the command line, the evaluation and ``metarl benchmark`` read these instead of guessing;
* ``train(cfg, run_dir, *, resume=False, overwrite=False, log=None) -> Run`` — usually a
  :class:`metarl.runs.training.Trainer` (one iteration of its algorithm, the state a checkpoint
  keeps) handed to :func:`metarl.runs.training.train_loop`, which owns everything else;
* ``evaluate(run_dir, settings=None, **overrides) -> (AdaptationCurve, json_path,
  png_path)`` — the one evaluation protocol (:mod:`metarl.evaluation`) on the run's last
  checkpoint, with :class:`metarl.evaluation.EvalSettings` (or its fields by name); an agent
  that does not adapt by gradient steps refuses ``lrs``.

and, optionally,

* ``trained_policy(run_dir, device="cpu")`` — the run's policy as a
  ``metarl.agents.trained.TrainedPolicy`` (adapt to a task the agent's own way, act,
  evaluate, export): what ``metarl.agents.load(run_dir)`` returns. Every agent in the registry
  provides it.

:class:`Agent` states this as a :class:`typing.Protocol`; ``tests/test_agent_contract.py``
checks every registered agent against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from metarl.evaluation import AdaptationCurve, EvalSettings
    from metarl.runs import Run

__all__ = ["ADAPTS_BY", "Agent", "Capabilities"]

#: How an agent's policy adapts to a new task: by inner gradient steps on that task's
#: episodes (MAML, Reptile, fine-tuning baselines), by taking episodes into its memory or
#: context (RL², and context-based agents), or not at all (an oracle that observes the task).
ADAPTS_BY = ("gradient steps", "episodes", "none")


@dataclass(frozen=True)
class Capabilities:
    """What an agent declares about itself.

    Attributes:
        adapts_by: one of :data:`ADAPTS_BY`; the unit of its adaptation curve.
        devices: the device kinds it trains and evaluates on.
        unsupported: ``env_id -> reason or None``: why a task family cannot be run (None:
            it can); beyond the spaces every policy needs (Box or Discrete).
    """

    adapts_by: Literal["gradient steps", "episodes", "none"]
    devices: tuple[str, ...] = ("cpu", "cuda")
    unsupported: Callable[[str], str | None] | None = None

    def __post_init__(self) -> None:
        if self.adapts_by not in ADAPTS_BY:
            raise ValueError(f"adapts_by must be one of {ADAPTS_BY}, got {self.adapts_by!r}")

    @property
    def takes_lrs(self) -> bool:
        """Whether ``evaluate`` takes inner learning rates (``--lrs``)."""
        return self.adapts_by == "gradient steps"

    def reason_against(self, env_id: str) -> str | None:
        """Why this agent cannot run ``env_id``, or None."""
        return None if self.unsupported is None else self.unsupported(env_id)


@runtime_checkable
class Agent(Protocol):
    """An agent module (see the module doc). Modules satisfy it structurally."""

    AGENT: str
    CONFIG: type[Any]
    CAPABILITIES: Capabilities

    def train(
        self,
        cfg: Any,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> Run: ...

    def evaluate(
        self, run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
    ) -> tuple[AdaptationCurve, Path, Path]: ...
