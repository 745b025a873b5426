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

from metarl.batched import EnvError
from metarl.config import RunConfig
from metarl.functional import load_params
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.policies import Policy
from metarl.registry import family_ids, task_distribution
from metarl.runs import CheckpointError, Run, progress, resolve_device
from metarl.sampler import BatchedSampler
from metarl.seeding import seed_everything

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
    """Run (or ``resume``) the meta-training of ``agent`` in ``run_dir``.

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
    c: Any = cfg  # a RunConfig with meta_batch_size
    device = resolve_device(c.device)
    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    run_dir = Path(run_dir)
    if c.env_id not in family_ids():
        task_distribution(c.env_id)  # raises the registry's clear error
    seed_everything(c.seed)
    task_rng = np.random.default_rng(c.seed)
    policy, sampler = build(cfg, device)
    learned = extra_state(policy) if extra_state is not None else {}
    if "params" in learned:
        raise ValueError("extra_state cannot be named 'params' (the policy's parameters)")
    train_tasks = list(sampler.task_distribution.split("train"))
    start = 0
    if resume:
        run = Run.resume(run_dir, agent, cfg)
        ckpt = run.load_checkpoint({"tasks": task_rng})
        load_params(policy, {k: v.to(device) for k, v in ckpt["state"]["params"].items()})
        _restore_extra(learned, ckpt["state"], run.checkpoint_path)
        start = int(ckpt["iteration"])
    else:
        run = Run.create(run_dir, agent, cfg, overwrite=overwrite)
    if log:
        log(f"{agent} on {c.env_id}: iterations {start}..{c.num_iterations}, run dir {run_dir}")
    bar = progress(range(start, c.num_iterations), total=c.num_iterations, initial=start,
                   desc=agent)  # fmt: skip
    try:
        for it in bar:
            replace = len(train_tasks) < c.meta_batch_size
            idx = task_rng.choice(len(train_tasks), c.meta_batch_size, replace=replace)
            seed = int(task_rng.integers(2**31 - 2000))
            kept = str(run.checkpoint_path) if run.checkpoint_path.exists() else ""
            try:
                stats = step(policy, sampler, [train_tasks[i] for i in idx], seed, it)
                check_finite(f"parameters after the {outer_step}", policy_state(policy, learned))
            except NonFiniteError as e:  # stop before logging or checkpointing this iteration
                raise NonFiniteError(at_iteration(e, it, kept), e.quantity, it) from e
            except EnvError as e:  # an env raised, died or hung: name the iteration too
                raise e.at_iteration(it, kept) from e
            run.log(it, stats)
            pre, post = stats["pre_adapt_return"], stats["post_adapt_return"]
            if hasattr(bar, "set_postfix"):
                extra = (
                    {"sps": f"{stats['env_steps_per_s']:.0f}"} if "env_steps_per_s" in stats else {}
                )
                bar.set_postfix(pre=f"{pre:.1f}", post=f"{post:.1f}", **extra)
            elif log and (it % 10 == 0 or it + 1 == c.num_iterations):
                took = f", {stats['iteration_s']:.2f} s" if "iteration_s" in stats else ""
                log(f"iteration {it}: return before adaptation {pre:.2f}, after {post:.2f}{took}")
            done = it + 1
            if done % c.checkpoint_every == 0 or done == c.num_iterations:
                run.save_checkpoint(
                    done, policy_state(policy, learned), generators={"tasks": task_rng}
                )
    finally:
        sampler.close()
        run.close()
    return run
