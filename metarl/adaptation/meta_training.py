"""The meta-training loop shared by the gradient-based meta-RL agents (MAML-TRPO, Reptile-RL).

Each meta-iteration draws ``meta_batch_size`` training tasks (with replacement when the family
has fewer, as Finn et al. 2017 do for HalfCheetahDir/AntDir) and a sampling seed from one
generator, hands them to the agent's ``step``, logs its statistics and checkpoints the policy
with that generator's state, so that ``--resume`` continues exactly. A non-finite quantity or
an env failure stops the run naming the iteration, before anything of that iteration is logged
or checkpointed (the last checkpoint stays the last good one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.learning.functional import load_params
from metarl.learning.policies import Policy
from metarl.runs import CheckpointError, Run
from metarl.runs.config import RunConfig
from metarl.runs.training import Generators, Trainer, train_loop
from metarl.sampling.native import BatchedSampler

__all__ = ["ExtraState", "meta_train", "policy_state"]

#: Tensors an agent meta-learns or carries beside the policy, by name (e.g. MAML-TRPO's
#: Meta-SGD rates under ``"inner_lr"``: parameter name → tensor of that parameter's shape; its
#: shared previous-task baseline's carried fit under ``"baseline"``).
ExtraState = Mapping[str, dict[str, torch.Tensor]]


def policy_state(policy: Policy, extra: ExtraState | None = None) -> dict[str, Any]:
    """What a checkpoint keeps of the policy: its parameters, on the CPU, and each ``extra``
    set of meta-learned or carried tensors beside them (under its own name)."""
    state: dict[str, Any] = {
        "params": {k: v.detach().cpu().clone() for k, v in policy.named_parameters()}
    }
    for name, tensors in (extra or {}).items():
        state[name] = {k: v.detach().cpu().clone() for k, v in tensors.items()}
    return state


def _restore_extra(extra: ExtraState, state: Mapping[str, Any], path: Any) -> None:
    """Copy a checkpoint's ``extra`` sets into the live tensors, in place."""
    for name, live in extra.items():
        saved = state.get(name)
        if not isinstance(saved, Mapping):
            raise CheckpointError(
                f"{path} holds no {name!r} beside the policy's parameters, but this run's "
                f"configuration keeps them; it was written by another configuration or "
                "an older metarl: start a new run directory"
            )
        if set(saved) != set(live) or any(saved[k].shape != live[k].shape for k in live):
            raise CheckpointError(
                f"{path}: the saved {name!r} do not match the policy's parameters (names or "
                "shapes differ); the checkpoint belongs to another configuration"
            )
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(saved[k].to(v.device, v.dtype))


class _PolicyMetaTrainer(Trainer):
    """A gradient-based meta-RL agent's training: a policy, a sampler, and a ``step``."""

    def __init__(
        self,
        cfg: Any,
        device: torch.device,
        build: Callable[[Any, torch.device], tuple[Policy, BatchedSampler]],
        step: Callable[[Policy, BatchedSampler, list[Any], int, int], dict[str, float]],
        outer_step: str,
        extra_state: Callable[[Policy], ExtraState] | None,
    ) -> None:
        self.cfg, self.step, self.outer_step = cfg, step, outer_step
        self.task_rng = np.random.default_rng(cfg.seed)
        self.policy, self.sampler = build(cfg, device)
        self.device = device
        self.learned = extra_state(self.policy) if extra_state is not None else {}
        if "params" in self.learned:
            raise ValueError("extra_state cannot be named 'params' (the policy's parameters)")
        self.train_tasks = list(self.sampler.task_distribution.split("train"))

    def iteration(self, it: int) -> dict[str, float]:
        n = self.cfg.meta_batch_size
        idx = self.task_rng.choice(len(self.train_tasks), n, replace=len(self.train_tasks) < n)
        seed = int(self.task_rng.integers(2**31 - 2000))
        return self.step(self.policy, self.sampler, [self.train_tasks[i] for i in idx], seed, it)

    def parameters(self) -> Any:
        return policy_state(self.policy, self.learned)

    def state(self) -> dict[str, Any]:
        return policy_state(self.policy, self.learned)

    def load_state(self, state: Mapping[str, Any]) -> None:
        load_params(self.policy, {k: v.to(self.device) for k, v in state["params"].items()})
        _restore_extra(self.learned, state, "the checkpoint")

    def generators(self) -> Generators:
        return {"tasks": self.task_rng}

    def progress(self, stats: Mapping[str, float]) -> str:
        return (f"return before adaptation {stats['pre_adapt_return']:.2f}, after "
                f"{stats['post_adapt_return']:.2f}")  # fmt: skip

    def close(self) -> None:
        self.sampler.close()


def meta_train(
    cfg: RunConfig,
    run_dir: str | Path,
    agent: str,
    build: Callable[[Any, torch.device], tuple[Policy, BatchedSampler]],
    step: Callable[[Policy, BatchedSampler, list[Any], int, int], dict[str, float]],
    *,
    outer_step: str,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    extra_state: Callable[[Policy], ExtraState] | None = None,
) -> Run:
    """Run (or ``resume``) the meta-training of ``agent`` in ``run_dir`` through
    :func:`metarl.runs.training.train_loop`.

    Args:
        build: ``(cfg, device) -> (policy, sampler)``.
        step: ``(policy, sampler, tasks, seed, iteration) -> statistics``; one meta-iteration,
            updating ``policy`` in place. Its statistics include ``pre_adapt_return`` and
            ``post_adapt_return``.
        outer_step: the name of the outer update in the error of non-finite parameters.
        extra_state: ``policy -> {name: {key: tensor}}``, called once after ``build``: the
            live tensors the agent meta-learns or carries beside the policy (``step``
            updates them in place). Each set is saved in every checkpoint beside the
            policy's parameters (``state[name]``), restored in place on resume (a
            checkpoint without it is refused) and checked for NaN/inf after every step, as
            the parameters are.
    """

    def make(cfg: Any, device: torch.device, resume: bool) -> Trainer:
        return _PolicyMetaTrainer(cfg, device, build, step, outer_step, extra_state)

    return train_loop(cfg, run_dir, agent, make, resume=resume, overwrite=overwrite, log=log)
