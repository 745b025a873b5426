"""Random initialisation + fine-tune: the "random" baseline of Finn et al. 2017 (Sec. 5.3).

No meta-training and no pretraining: ``train`` draws the policy's initial weights from its
seed (Xavier-uniform weights, zero biases, ``σ = init_std``: what every agent here starts
from) and records them as the run's checkpoint, so the evaluation of every seed is
reproducible. ``evaluate`` fine-tunes them on each held-out task with MAML's inner step for
0..K steps, exactly as :mod:`metarl.agents.pretrained` and MAML's evaluation do.

Example:
    >>> from metarl.agents.random_init import RandomInitConfig, train
    >>> cfg = RandomInitConfig.from_preset("quick")
    >>> run = train(cfg, "/tmp/ri-doctest", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from metarl.agent import Capabilities
from metarl.agents.sb3_baselines import FineTuneConfig, evaluate_finetuning, finetuned_policy
from metarl.evaluation import AdaptationCurve, EvalSettings
from metarl.learning.functional import Params, named_params
from metarl.learning.policies import Policy, make_policy
from metarl.runs import Run, load_run_policy
from metarl.runs.config import option
from metarl.runs.training import Trainer, train_loop
from metarl.stepping.registry import make

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CONFIG",
    "RandomInitConfig",
    "evaluate",
    "load_policy",
    "train",
    "trained_policy",
]

AGENT = "random-init"


@dataclass
class RandomInitConfig(FineTuneConfig):
    """A randomly initialised policy, fine-tuned at evaluation with MAML's inner step."""

    num_iterations: int = option(
        1, "unused: random-init does no training; its run records the initial policy as its one "
        "iteration", low=1,
        may_change_on_resume=True,
    )  # fmt: skip

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "nav2d": {"env_id": "metarl/Navigation2D-v0"},
        "halfcheetah-vel": {"env_id": "metarl/HalfCheetahVel-v0", "horizon": 200},
        # The architecture of the pretrained and oracle quick presets.
        "quick": {
            "env_id": "metarl/Navigation2D-v0",
            "hidden_sizes": (64, 64),
            "nonlinearity": "tanh",
        },
    }


CONFIG = RandomInitConfig
CAPABILITIES = Capabilities(adapts_by="gradient steps")


def _policy(cfg: RandomInitConfig, device: torch.device) -> Policy:
    env = make(cfg.env_id, **cfg.env_kwargs())
    policy = make_policy(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std
    ).to(device)
    env.close()
    return policy


class _InitTrainer(Trainer):
    """Random init's one "iteration": draw the initial policy and record it."""

    def __init__(self, cfg: RandomInitConfig) -> None:
        policy = _policy(cfg, torch.device("cpu"))
        self.cfg = cfg
        self.params = {k: v.detach().clone() for k, v in named_params(policy).items()}

    def header(self, start: int, total: int) -> str:
        return f"the initial policy of seed {self.cfg.seed}"

    def iteration(self, it: int) -> dict[str, float]:
        norm = torch.sqrt(sum((v**2).sum() for v in self.params.values()))  # type: ignore[arg-type]
        return {"num_params": float(sum(v.numel() for v in self.params.values())),
                "param_norm": float(norm), "init_std": self.cfg.init_std}  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"params": self.params}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.params = dict(state["params"])


def train(
    cfg: RandomInitConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Draw the initial policy from ``cfg.seed`` and record it (no training): one iteration
    of :func:`metarl.runs.training.train_loop`. A resumed run already holds its initialisation
    and is left as it is."""
    return train_loop(cfg.replace(num_iterations=1), run_dir, AGENT,
                      lambda cfg, device, resume: _InitTrainer(cfg), resume=resume,
                      overwrite=overwrite, log=log)  # fmt: skip


def load_policy(
    run_dir: str | Path, device: str = "cpu", loaded: dict[str, Any] | None = None
) -> tuple[Policy, Params, RandomInitConfig]:
    """The run's initial policy and config."""
    return load_run_policy(run_dir, AGENT, RandomInitConfig, device, loaded=loaded)


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Fine-tune the random initialisation on each task of the split for 0..K steps (MAML's
    protocol; :class:`metarl.evaluation.EvalSettings`: ``settings`` and/or its fields by
    name); writes ``eval_<split>.json`` and ``eval_<split>.png`` into the run directory."""
    note = "fine-tuning from a random initialisation (no training)"
    return evaluate_finetuning(AGENT, run_dir, load_policy, EvalSettings.of(settings, **overrides),
                               note)  # fmt: skip


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: fine-tuned by :func:`evaluate`'s step
    (MAML's inner step) and rates."""
    return finetuned_policy(AGENT, load_policy(run_dir, device), device)
