"""Meta-RL agents (MAML-RL, Reptile-RL, RL², VariBAD, baselines), one readable file each.

The registry maps an agent's name (``metarl train --agent NAME``) to its module, imported
on first use. Every agent keeps one contract, :class:`metarl.agent.Agent`:

* ``AGENT`` — its name; ``CONFIG`` — its :class:`metarl.runs.config.RunConfig` subclass (fields
  → ``--options``, ``presets``);
* ``CAPABILITIES`` — a :class:`metarl.agent.Capabilities`: how it adapts (gradient steps,
  episodes, none), which families and devices it takes; read by the command line, the
  evaluation and ``metarl benchmark``, never guessed;
* ``train(cfg, run_dir, *, resume=False, overwrite=False, log=None) -> metarl.runs.Run`` —
  a :class:`metarl.runs.training.Trainer` (one iteration of the algorithm and the state a
  checkpoint keeps) run by :func:`metarl.runs.training.train_loop`, which owns the rest;
* ``evaluate(run_dir, settings=None, **overrides)`` with
  :class:`metarl.evaluation.EvalSettings` (split, K, seeds, episodes, device, max tasks,
  inner rates) returning ``(AdaptationCurve, json_path, png_path)``: the one evaluation
  protocol of :mod:`metarl.evaluation`;
* ``trained_policy(run_dir, device="cpu")`` — what ``metarl.agents.load(run_dir)`` returns: one of
  the kinds in :mod:`metarl.agents.trained` (``GradientTrainedPolicy`` for gradient steps,
  ``EpisodeTrainedPolicy``'s subclasses for memory, belief or context, the task-conditioned
  oracle), so every agent's policy adapts, acts, evaluates and exports the same way.

Adding an agent is one file here plus one line in ``_AGENTS`` (or :func:`register_agent`);
``tests/test_agent_contract.py`` checks every registered agent against the contract.

Example:
    >>> from metarl.agents import agent_names, get_agent
    >>> "maml-trpo" in agent_names()
    True
    >>> get_agent("maml-trpo").CONFIG.__name__
    'MAMLTRPOConfig'
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from metarl.agent import Agent

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = ["agent_names", "describe_agents", "get_agent", "load", "register_agent"]

#: name -> (module path, one-line description)
_AGENTS: dict[str, tuple[str, str]] = {
    "maml-trpo": (
        "metarl.agents.maml_trpo",
        "MAML with a TRPO outer step (Finn et al. 2017); second- or first-order",
    ),
    "reptile-rl": (
        "metarl.agents.reptile_rl",
        "Reptile (Nichol et al. 2018) with policy-gradient inner steps",
    ),
    "rl2": (
        "metarl.agents.rl2",
        "RL² (Duan et al. 2016): a GRU policy that adapts within a trial of episodes; PPO",
    ),
    "pearl": (
        "metarl.agents.pearl",
        "PEARL (Rakelly et al. 2019): SAC with a probabilistic context encoder; off-policy",
    ),
    "varibad": (
        "metarl.agents.varibad",
        "VariBAD (Zintgraf et al. 2020): a VAE belief over the task fed to a PPO policy",
    ),
    "pretrained": (
        "metarl.agents.pretrained",
        "baseline: PPO (SB3) on all training tasks, fine-tuned with MAML's inner step",
    ),
    "random-init": (
        "metarl.agents.random_init",
        "baseline: MAML's inner step from a randomly initialised policy",
    ),
    "oracle": (
        "metarl.agents.oracle",
        "baseline: PPO (SB3) with the task parameters in the observation; no adaptation",
    ),
}


def load(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """Any agent's run directory as a policy to adapt, act with, evaluate and export
    (:func:`metarl.agents.trained.load`, imported on first use so that importing the
    registry loads no agent)."""
    from metarl.agents.trained import load as load_trained

    return load_trained(run_dir, device)


def register_agent(name: str, module: str, description: str = "") -> None:
    """Make ``metarl train --agent name`` use ``module`` (imported on first use)."""
    _AGENTS[name] = (module, description)


def agent_names() -> list[str]:
    """Every registered agent's name, sorted."""
    return sorted(_AGENTS)


def describe_agents() -> dict[str, str]:
    """name -> one-line description."""
    return {name: desc for name, (_, desc) in sorted(_AGENTS.items())}


def get_agent(name: str) -> ModuleType:
    """The module of agent ``name``; a clear error naming the registered ones otherwise."""
    if name not in _AGENTS:
        close = difflib.get_close_matches(name, list(_AGENTS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no agent named {name!r}.{hint} Agents: {', '.join(agent_names())}")
    module = importlib.import_module(_AGENTS[name][0])
    if not isinstance(module, Agent):  # the contract of metarl.agent
        missing = [a for a in ("AGENT", "CONFIG", "CAPABILITIES", "train", "evaluate")
                   if not hasattr(module, a)]  # fmt: skip
        raise TypeError(
            f"agent module {module.__name__} does not keep the agent contract "
            f"(metarl.agent.Agent): it defines no {', '.join(missing)}"
        )
    return module
