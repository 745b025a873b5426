"""Use a meta-trained policy: load a run, adapt it to a task, act, evaluate, export.

The same few calls for every registered agent::

    policy = metarl.agents.load("runs/nav")                 # any agent's run directory
    adapted = policy.adapt(task, steps=1)            # a task of the run's family, or its env
    action = adapted.act(obs)                        # one observation or a batch
    curve = policy.evaluate(steps=3)                 # what `metarl evaluate` computes
    adapted.export("policy.pt")                      # TorchScript (or format="onnx")

How a policy adapts is the agent's own (its ``CAPABILITIES.adapts_by``):

* **gradient steps** (MAML-TRPO, Meta-SGD, Reptile-RL, pretrained, random init):
  ``steps`` inner steps, each on ``episodes`` fresh episodes of the task collected with the
  shared batched sampler, through the very step function the agent's ``evaluate`` uses
  (learning rates: the evaluation's, or ``lr``);
* **episodes** (RL²): ``steps`` episodes of the task run with the recurrent policy, whose
  memory (GRU hidden state) then holds what it learnt; the adapted policy starts each new
  episode from that memory and carries it forward step by step, as the trial would: after
  each :meth:`AdaptedPolicy.act`, :meth:`AdaptedPolicy.observe` gives it the reward and
  the end-of-episode flag the env returned, and :meth:`AdaptedPolicy.reset` starts a new
  episode (both are no-ops for the other agents, so one loop runs every policy);
  (PEARL): ``steps`` episodes of the task, their transitions the context of a posterior
  over the latent task variable, and the adapted policy acts with a draw from it;
  VariBAD: ``steps`` episodes run as one trial, which update its belief over the task (the
  encoder's posterior); the adapted policy acts from that belief, held fixed;
* **none** (the oracle): the policy is given the task; ``adapt`` returns the task-conditioned
  policy and spends no episodes.

Each agent module provides the hook ``trained_policy(run_dir, device) ->`` a
:class:`TrainedPolicy` built from the classes here (see :mod:`metarl.agent`); :func:`load`
reads the run's record and calls its agent's hook; ``metarl.agents.load`` calls it.

Example:
    >>> import metarl.agents
    >>> policy = metarl.agents.load("runs/nav")  # doctest: +SKIP
    >>> task = policy.tasks("test")[0]  # doctest: +SKIP
    >>> adapted = policy.adapt(task, steps=1)  # doctest: +SKIP
    >>> adapted.act([0.1, -0.2]).shape  # doctest: +SKIP
    (2,)
"""

from __future__ import annotations

import copy
import functools
import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    default_episodes_per_step,
    evaluate_policy_adaptation,
)
from metarl.learning.functional import Params, load_params
from metarl.learning.policies import Policy
from metarl.runs import resolve_device
from metarl.runs.rundir import write_atomic
from metarl.sampling.native import BatchedSampler, Episodes
from metarl.stepping.registry import make

__all__ = [
    "AdaptedPolicy",
    "BeliefTrainedPolicy",
    "ContextTrainedPolicy",
    "GradientTrainedPolicy",
    "RecurrentTrainedPolicy",
    "TaskConditionedPolicy",
    "TrainedPolicy",
    "load",
]

#: ``step(params, episodes, lr, per_task_params) -> per-task params``: an agent's inner step,
#: as its evaluation uses it (:data:`metarl.evaluation.AdaptFn`).
StepFn = Callable[[Mapping[str, Tensor], Episodes, float, bool], Params]

EXPORT_FORMATS = ("torchscript", "onnx")


def load(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The trained policy of any agent's run directory (its last checkpoint).

    Raises:
        FileNotFoundError / ValueError: not a run directory, or its family is not
            registered here (the message names the ``--import`` it needs).
        TypeError: the run's agent provides no ``trained_policy`` hook.
    """
    from metarl.agents import get_agent
    from metarl.runs import Run
    from metarl.stepping import registry

    record = Run.read_record(run_dir)
    env_id = record["config"].get("env_id") if isinstance(record.get("config"), dict) else None
    if isinstance(env_id, str) and not registry.is_registered(env_id):
        hint = registry.import_hint(env_id, record.get("imports"), record.get("env_source"))
        raise ValueError(
            f"{run_dir} was trained on {env_id!r}, which no module imported here registers; "
            f"{hint} (import the module that registers it, then load the run)"
        )
    module = get_agent(record["agent"])
    hook = getattr(module, "trained_policy", None)
    if hook is None:
        raise TypeError(
            f"agent {record['agent']!r} ({module.__name__}) provides no trained_policy(run_dir, "
            "device) hook, so its runs cannot be loaded as policies; use its evaluate()"
        )
    policy: TrainedPolicy = hook(run_dir, device)
    return policy


# -- the loaded run ------------------------------------------------------------------------
class TrainedPolicy(ABC):
    """A run's trained policy, before adaptation (see the module doc).

    Attributes:
        agent: the agent's name; env_id: the task family it was trained on; config: the
            run's config; adapts_by: the agent's unit of adaptation; device: where it runs.
    """

    adapts_by: str = "gradient steps"
    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]

    def __init__(self, agent: str, config: Any, device: str | torch.device) -> None:
        self.agent, self.config = agent, config
        self.env_id: str = config.env_id
        self.device = resolve_device(device)
        env = make(self.env_id, **self._env_kwargs())
        self.task_distribution = env.unwrapped.task_distribution  # type: ignore[attr-defined]
        self.observation_space, self.action_space = env.observation_space, env.action_space
        env.close()

    def _env_kwargs(self) -> dict[str, Any]:
        kwargs = getattr(self.config, "env_kwargs", None)
        return dict(kwargs()) if callable(kwargs) else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(agent={self.agent!r}, env_id={self.env_id!r})"

    def tasks(self, split: str = "test") -> tuple[Any, ...]:
        """The family's fixed ``"test"`` (held-out) or ``"train"`` tasks."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return tuple(self.task_distribution.split(split))

    def task_of(self, task_or_env: Any) -> Any:
        """The task ``task_or_env`` names (a task, or an env of the family with its task set),
        checked to belong to the family this policy was trained on."""
        task = task_or_env
        if isinstance(task_or_env, gym.Env):
            spec = task_or_env.spec
            if spec is not None and spec.id != self.env_id:
                raise ValueError(
                    f"the env is {spec.id}, and this {self.agent} policy was trained on "
                    f"{self.env_id}: give a task or env of {self.env_id}"
                )
            task = getattr(task_or_env.unwrapped, "task", None)
        try:
            return self.task_distribution.validate(task)
        except ValueError as e:
            raise type(e)(f"this {self.agent} policy was trained on {self.env_id}: {e}") from None

    @abstractmethod
    def adapt(
        self,
        task: Any,
        *,
        steps: int | None = None,
        episodes: int | None = None,
        lr: float | Sequence[float] | None = None,
        seed: int = 0,
    ) -> AdaptedPolicy:
        """The policy adapted to ``task`` (a task of the family, or an env of it).

        Args:
            steps: adaptation units (``adapts_by``): inner gradient steps (default 1), or for
                RL² episodes of memory (default: the trained trial length minus one, at
                least 1); 0: the policy as trained.
            episodes: episodes per gradient step (default: the evaluation's, 40 for 2D
                navigation, 20 otherwise); RL²'s units are single episodes (only 1).
            lr: inner learning rate(s) of steps 1, 2, … (the last repeats); default: the
                evaluation's. Only for agents that adapt by gradient steps.
            seed: seeds the episodes' action and env noise.
        """

    def evaluate(
        self,
        tasks: Sequence[Any] | None = None,
        *,
        steps: int | None = None,
        split: str = "test",
        seeds: Sequence[int] = (0, 1, 2),
        episodes: int | None = None,
        max_tasks: int | None = None,
        lrs: Sequence[float] | None = None,
    ) -> AdaptationCurve:
        """The evaluation protocol of ``metarl evaluate`` on ``tasks`` (default: the tasks of
        ``split``, the first ``max_tasks``): the same :class:`AdaptationCurve`, the same
        numbers for the same arguments; written nowhere."""
        if max_tasks is not None and max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
        settings = EvalSettings(
            split=split, num_steps=steps, seeds=tuple(seeds), episodes_per_step=episodes,
            device=str(self.device), max_tasks=max_tasks,
            lrs=None if lrs is None else tuple(lrs),
        )  # fmt: skip
        return self._evaluate(tasks, settings)

    @abstractmethod
    def _evaluate(self, tasks: Sequence[Any] | None, settings: EvalSettings) -> AdaptationCurve:
        """:meth:`evaluate` with its arguments checked."""

    def _check_steps(self, steps: int | None, default: int) -> int:
        steps = default if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        return steps

    def _no_lr(self, lr: Any, what: str = "lr") -> None:
        if lr is not None:
            raise ValueError(
                f"{what} sets inner learning rates, and {self.agent} adapts by "
                f"{self.adapts_by}, not gradient steps; drop {what}"
            )

    def _eval_tasks(
        self, tasks: Sequence[Any] | None, split: str, max_tasks: int | None
    ) -> list[Any]:
        if max_tasks is not None and max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
        chosen = self.tasks(split) if tasks is None else [self.task_of(t) for t in tasks]
        if not chosen:
            raise ValueError("no tasks to evaluate: give at least one task")
        return list(chosen)[:max_tasks]


def _lr_at(lrs: float | Sequence[float], k: int) -> float:
    if isinstance(lrs, int | float):
        return float(lrs)
    return float(lrs[min(k, len(lrs) - 1)])


class GradientTrainedPolicy(TrainedPolicy):
    """A policy that adapts by inner gradient steps (MAML, Reptile, the fine-tuning
    baselines).

    Args:
        policy, params: the policy module and its trained parameters.
        step: the agent's inner step, the one its ``evaluate`` uses.
        lrs: the evaluation's learning rates of steps 1, 2, … (the last repeats); for a
            Meta-SGD run multipliers of its learned rates.
    """

    adapts_by = "gradient steps"

    def __init__(
        self,
        agent: str,
        config: Any,
        policy: Policy,
        params: Mapping[str, Tensor],
        step: StepFn,
        lrs: Sequence[float],
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(agent, config, device)
        self.policy, self.params, self.step, self.lrs = policy, dict(params), step, tuple(lrs)

    def _sampler(self, num_tasks: int, episodes: int) -> BatchedSampler:
        cfg = self.config
        return BatchedSampler(
            self.env_id, num_tasks, episodes, backend=cfg.backend, device=self.device,
            env_kwargs=self._env_kwargs(), num_workers=cfg.num_workers,
            worker_timeout=cfg.worker_timeout,
        )  # fmt: skip

    def adapt(
        self,
        task: Any,
        *,
        steps: int | None = None,
        episodes: int | None = None,
        lr: float | Sequence[float] | None = None,
        seed: int = 0,
    ) -> AdaptedPolicy:
        task = self.task_of(task)
        steps = self._check_steps(steps, 1)
        episodes = default_episodes_per_step(self.env_id) if episodes is None else episodes
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        rates = self.lrs if lr is None else lr
        if not isinstance(rates, int | float) and not rates:
            raise ValueError("lr needs at least one learning rate")
        current: Mapping[str, Tensor] = {k: v.detach() for k, v in self.params.items()}
        per_task, returns = False, []
        if steps:
            sampler = self._sampler(1, episodes)
            try:
                for k in range(steps):
                    eps = sampler.collect(self.policy, current, [task], seed=seed * 1000 + k,
                                          per_task_params=per_task)  # fmt: skip
                    returns.append(float(eps.task_returns()[0]))
                    out = self.step(current, eps, _lr_at(rates, k), per_task)
                    current, per_task = {n: v.detach() for n, v in out.items()}, True
            finally:
                sampler.close()
        single = {k: v[0] for k, v in current.items()} if per_task else dict(current)
        module = _MeanAction(self.policy, single, self.action_space)
        return AdaptedPolicy(self, task, steps, module, self.policy, single, returns)

    def _evaluate(self, tasks: Sequence[Any] | None, settings: EvalSettings) -> AdaptationCurve:
        cfg, s = self.config, settings
        return evaluate_policy_adaptation(
            self.policy, self.params, self.env_id, self.step, agent=self.agent, **s.protocol(),
            lrs=self.lrs if s.lrs is None else s.lrs, backend=cfg.backend,
            env_kwargs=self._env_kwargs(), num_workers=cfg.num_workers,
            worker_timeout=cfg.worker_timeout,
            tasks=None if tasks is None else self._eval_tasks(tasks, s.split, None),
        )  # fmt: skip


class _CurvePolicy(TrainedPolicy):
    """A trained policy whose evaluation is its agent's own curve function,
    ``curve(tasks, split=, num_steps=, seeds=, episodes_per_step=) -> AdaptationCurve`` (the
    agents that do not adapt by the shared gradient step)."""

    def __init__(
        self,
        agent: str,
        config: Any,
        curve: Callable[..., AdaptationCurve],
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(agent, config, device)
        self._curve = curve

    def _evaluate(self, tasks: Sequence[Any] | None, settings: EvalSettings) -> AdaptationCurve:
        s = settings
        self._no_lr(s.lrs, "lrs")
        chosen = self._eval_tasks(tasks, s.split, s.max_tasks)
        return self._curve(chosen, split=s.split, num_steps=s.num_steps, seeds=s.seeds,
                           episodes_per_step=s.episodes_per_step)  # fmt: skip


class TaskConditionedPolicy(_CurvePolicy):
    """A policy that is given the task instead of adapting to it (the oracle).

    Args:
        for_tasks: ``tasks -> (plain policy, per-task params with a leading dimension)``,
            the task folded into the policy.
        curve: ``(tasks, split, steps, seeds, episodes) -> AdaptationCurve``, the agent's
            evaluation on ``tasks``.
    """

    adapts_by = "none"

    def __init__(
        self,
        agent: str,
        config: Any,
        for_tasks: Callable[[Sequence[Any]], tuple[Policy, Params]],
        curve: Callable[..., AdaptationCurve],
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(agent, config, curve, device)
        self._for_tasks = for_tasks

    def adapt(
        self,
        task: Any,
        *,
        steps: int | None = None,
        episodes: int | None = None,
        lr: float | Sequence[float] | None = None,
        seed: int = 0,
    ) -> AdaptedPolicy:
        """The policy given ``task``: no adaptation and no episodes spent, whatever
        ``steps``/``episodes`` (the oracle's curve is flat); ``lr`` is refused."""
        task = self.task_of(task)
        self._no_lr(lr)
        self._check_steps(steps, 0)
        policy, per_task = self._for_tasks([task])
        single = {k: v[0] for k, v in per_task.items()}
        module = _MeanAction(policy, single, self.action_space)
        return AdaptedPolicy(self, task, 0, module, policy, single, [])


class EpisodeTrainedPolicy(_CurvePolicy):
    """A policy that adapts by running whole episodes of the task (RL²'s memory, VariBAD's
    belief, PEARL's context): :meth:`adapt` checks its arguments the same way for each and
    calls the subclass's :meth:`_run_episodes`.

    ``episodes_are_units``: whether ``episodes=`` may count the episodes as ``steps=`` does
    (VariBAD); otherwise each unit is one episode and ``episodes`` may only be 1.
    """

    adapts_by = "episodes"
    episodes_are_units = False

    def __init__(
        self,
        agent: str,
        config: Any,
        curve: Callable[..., AdaptationCurve],
        device: str | torch.device = "cpu",
        default_steps: int = 1,
    ) -> None:
        super().__init__(agent, config, curve, device)
        self._default = default_steps

    def adapt(
        self,
        task: Any,
        *,
        steps: int | None = None,
        episodes: int | None = None,
        lr: float | Sequence[float] | None = None,
        seed: int = 0,
    ) -> AdaptedPolicy:
        task = self.task_of(task)
        self._no_lr(lr)
        if self.episodes_are_units:
            if steps is not None and episodes is not None and steps != episodes:
                raise ValueError(
                    f"{self.agent} adapts by episodes: steps and episodes both count them; "
                    f"give one (got steps={steps!r}, episodes={episodes!r})"
                )
            steps = episodes if steps is None else steps
        elif episodes not in (None, 1):
            raise ValueError(
                f"{self.agent} adapts by whole episodes, one per unit: give their number as "
                f"steps= and drop episodes= (got episodes={episodes!r})"
            )
        n = self._check_steps(steps, self._default)
        module, returns, generator = self._run_episodes(task, n, seed)
        return AdaptedPolicy(self, task, n, module, None, None, returns, generator)

    @abstractmethod
    def _run_episodes(
        self, task: Any, n: int, seed: int
    ) -> tuple[nn.Module, list[float], torch.Generator | None]:
        """``n`` episodes of ``task`` (0: none): the module acting from what they left, their
        returns, and the generator its sampled actions continue (None: a fresh one)."""


class RecurrentTrainedPolicy(EpisodeTrainedPolicy):
    """RL²'s recurrent policy: ``adapt(task, steps=n)`` runs ``n`` episodes of the task with
    the policy (one trial, the memory starting blank; default: the trained trial length minus
    one, at least 1); the adapted policy starts from the memory they leave and carries it
    forward (see :class:`AdaptedPolicy`), its sampled actions continuing the trial's
    generator, so its next episode is the trial's next one.

    Args:
        rl2: the loaded :class:`metarl.agents.rl2.RL2` agent.
        curve: ``(agent, tasks, split=, num_steps=, seeds=, episodes_per_step=) ->
            AdaptationCurve``, RL²'s evaluation on ``tasks``.
    """

    def __init__(self, rl2: Any, curve: Callable[..., AdaptationCurve]) -> None:
        trained = max(1, rl2.config.episodes_per_trial - 1)
        super().__init__("rl2", rl2.config, functools.partial(curve, rl2), rl2.device, trained)
        self.rl2 = rl2

    def _env_kwargs(self) -> dict[str, Any]:
        steps = self.config.max_episode_steps  # RL²'s one env setting
        return {} if steps is None else {"max_episode_steps": steps}

    def _run_episodes(
        self, task: Any, n: int, seed: int
    ) -> tuple[nn.Module, list[float], torch.Generator | None]:
        policy = self.rl2.policy
        memory: dict[str, Tensor] = {}
        returns: list[float] = []
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if n:
            trials = self.rl2.collect([task], n, seed=seed, memory=memory, generator=generator)
            returns = [float(r) for r in trials.episode_returns[:, 0]]
        else:  # a new trial: blank memory
            z = torch.zeros(1, device=self.device)
            memory = {"hidden": torch.zeros(1, policy.state_size, device=self.device),
                      "prev_action": torch.zeros(1, policy.act_size, device=self.device),
                      "prev_reward": z, "done": z}  # fmt: skip
        return _RecurrentAction(policy, memory, self.action_space), returns, generator


class BeliefTrainedPolicy(EpisodeTrainedPolicy):
    """VariBAD's policy: ``adapt(task, steps=n)`` (or, the same, ``episodes=n``) runs ``n``
    episodes of the task with the policy (one trial, the belief starting at the prior), which
    update its belief over the task (the encoder's posterior); the adapted policy acts from
    the belief they leave, held fixed. 0: the prior belief.

    Args:
        agent: the loaded :class:`metarl.agents.varibad.VariBAD` agent.
        curve: ``(agent, tasks, split=, num_steps=, seeds=, episodes_per_step=) ->
            AdaptationCurve``, its evaluation on ``tasks``.
    """

    episodes_are_units = True

    def __init__(self, agent: Any, curve: Callable[..., AdaptationCurve]) -> None:
        trained = max(1, agent.config.episodes_per_trial - 1)
        super().__init__("varibad", agent.config, functools.partial(curve, agent),
                         agent.device, trained)  # fmt: skip
        self.belief_agent = agent

    def _run_episodes(
        self, task: Any, n: int, seed: int
    ) -> tuple[nn.Module, list[float], torch.Generator | None]:
        agent = self.belief_agent
        returns: list[float] = []
        if n:
            memory: dict[str, Tensor] = {}
            trials = agent.collect([task], n, seed=seed, memory=memory)
            returns = [float(r) for r in trials.episode_returns[:, 0]]
            belief = memory["belief"]
        else:
            belief = agent.prior_belief()
        policy = agent.conditioned_policy(belief)
        params = {k: v.detach() for k, v in policy.named_parameters()}
        return _MeanAction(policy, params, self.action_space), returns, None


class ContextTrainedPolicy(EpisodeTrainedPolicy):
    """A policy conditioned on a latent task variable inferred from context (PEARL):
    ``adapt(task, steps=n)`` runs ``n`` episodes of the task as context and acts with a draw
    of the latent from the posterior over their transitions (0: from the prior, no episodes).

    Args:
        adapt: ``(task, episodes, seed) -> (module, returns)``: the agent's adaptation, the
            module acting with the latent it ended with (it provides ``forward`` — the most
            likely action —, ``sample(obs, generator)`` and ``clip``), ``returns`` those of
            the episodes it ran.
        curve: ``(tasks, split=, num_steps=, seeds=, episodes_per_step=) ->
            AdaptationCurve``, the agent's evaluation on ``tasks``.
        default_steps: the episodes ``adapt`` runs when ``steps`` is not given.
    """

    def __init__(
        self,
        agent: str,
        config: Any,
        adapt: Callable[[Any, int, int], tuple[nn.Module, list[float]]],
        curve: Callable[..., AdaptationCurve],
        device: str | torch.device = "cpu",
        default_steps: int = 1,
    ) -> None:
        super().__init__(agent, config, curve, device, default_steps)
        self._adapt = adapt

    def _run_episodes(
        self, task: Any, n: int, seed: int
    ) -> tuple[nn.Module, list[float], torch.Generator | None]:
        module, returns = self._adapt(task, n, seed)
        return module, returns, None


# -- the adapted policy --------------------------------------------------------------------
class _Clip(nn.Module):
    """Clamps actions into a Box's finite bounds, as the sampler does before the env."""

    low: Tensor
    high: Tensor

    def __init__(self, space: gym.Space[Any]) -> None:
        super().__init__()
        self.on = isinstance(space, gym.spaces.Box) and bool(
            np.isfinite(space.low).all() and np.isfinite(space.high).all()
        )
        low = space.low if self.on else np.zeros(1)  # type: ignore[attr-defined]
        high = space.high if self.on else np.zeros(1)  # type: ignore[attr-defined]
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(-1))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(-1))

    def forward(self, action: Tensor) -> Tensor:
        if not self.on:
            return action
        return torch.maximum(torch.minimum(action, self.high), self.low)


class _MeanAction(nn.Module):
    """``obs (B, ...) -> the most likely action (B, ...)`` of an MLP policy with fixed
    parameters: a self-contained module, what is exported."""

    def __init__(self, policy: Policy, params: Mapping[str, Tensor], space: gym.Space[Any]):
        super().__init__()
        self.policy: Policy = copy.deepcopy(policy).eval()
        load_params(self.policy, params)
        for p in self.policy.parameters():
            p.requires_grad_(False)
        self.clip = _Clip(space)

    def forward(self, obs: Tensor) -> Tensor:
        return self.clip(self.policy.mode(self.policy(obs)))


class _RecurrentAction(nn.Module):
    """``obs (B, ...) -> the most likely action`` of RL²'s policy from the memory its
    adaptation ended with (the hidden state and previous action, reward and done flag: the
    first step of a new episode); :meth:`step` acts from any memory and returns the next."""

    hidden: Tensor
    prev_action: Tensor
    prev_reward: Tensor
    done: Tensor

    def __init__(self, policy: nn.Module, memory: Mapping[str, Tensor], space: gym.Space[Any]):
        super().__init__()
        self.policy: Any = copy.deepcopy(policy).eval()  # an RL2Policy
        for p in self.policy.parameters():
            p.requires_grad_(False)
        for name in ("hidden", "prev_action", "prev_reward", "done"):
            self.register_buffer(name, memory[name][:1].detach().clone())
        self.clip = _Clip(space)

    def start(self, batch: int) -> dict[str, Tensor]:
        """The adapted memory, for ``batch`` rows."""
        return {"hidden": self.hidden.expand(batch, -1), "prev_action":
                self.prev_action.expand(batch, -1), "prev_reward": self.prev_reward.expand(batch),
                "done": self.done.expand(batch)}  # fmt: skip

    def step(self, obs: Tensor, memory: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The policy's head (logits or means, ``(B, A)``) for ``obs`` from ``memory``, and
        the hidden state after the step."""
        x = self.policy.inputs(obs, memory["prev_action"], memory["prev_reward"], memory["done"])
        head, _, hidden = self.policy(x[None], memory["hidden"])
        return head[0], hidden

    def mode(self, head: Tensor) -> Tensor:
        """The most likely action, unclipped (what the policy's memory records)."""
        return head.argmax(-1) if self.policy.discrete else head

    def forward(self, obs: Tensor) -> Tensor:
        head, _ = self.step(obs, self.start(obs.shape[0]))
        action = self.mode(head)
        return action if self.policy.discrete else self.clip(action)


#: the memory inputs of an exported RL² step, in order
_MEMORY = ("hidden", "prev_action", "prev_reward", "done")


class _RecurrentStep(nn.Module):
    """RL²'s adapted policy for export: one step from any memory, ``(obs, hidden,
    prev_action, prev_reward, done) -> (action, hidden, prev_action)``, the two last outputs
    the next step's inputs (with the env's reward and end-of-episode flag for that action).
    The memory adaptation left is :meth:`_RecurrentAction.start`'s, written beside the
    export."""

    def __init__(self, recurrent: _RecurrentAction) -> None:
        super().__init__()
        self.recurrent = recurrent

    def forward(
        self, obs: Tensor, hidden: Tensor, prev_action: Tensor, prev_reward: Tensor, done: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        m = self.recurrent
        memory = {"hidden": hidden, "prev_action": prev_action, "prev_reward": prev_reward,
                  "done": done}  # fmt: skip
        head, hidden = m.step(obs, memory)
        action = m.mode(head)
        recorded = m.policy.encode_act(action)
        return (action if m.policy.discrete else m.clip(action)), hidden, recorded


class AdaptedPolicy:
    """A policy adapted to one task: :meth:`act` on observations, :meth:`export` to deploy.

    RL²'s adapted policy is stateful, as its trial is: each :meth:`act` steps its memory
    (GRU hidden state, last action), :meth:`observe` hands it the reward and end-of-episode
    flag the env returned for that action (its next input), and :meth:`reset` starts a new
    episode from the memory adaptation left. For the other agents ``observe`` and ``reset``
    do nothing, so one loop runs every agent's policy::

        adapted.reset()
        obs, _ = env.reset(options={"task": adapted.task})
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(adapted.act(obs))
            done = terminated or truncated
            adapted.observe(reward, done)

    Attributes:
        task: the task it adapted to; steps: adaptation units spent; returns: the mean return
            of the episodes each unit used (before that unit's update), in order.
        module: the deterministic policy as a self-contained ``nn.Module``, ``obs (B, ...) ->
            action (B, ...)``: what :meth:`export` writes.
    """

    def __init__(
        self,
        trained: TrainedPolicy,
        task: Any,
        steps: int,
        module: nn.Module,
        policy: Policy | None,
        params: Mapping[str, Tensor] | None,
        returns: list[float],
        generator: torch.Generator | None = None,
    ) -> None:
        self.agent, self.env_id, self.task, self.steps = trained.agent, trained.env_id, task, steps
        self.observation_space = trained.observation_space
        self.action_space = trained.action_space
        self.module, self.returns = module.to(trained.device), returns
        self.device = trained.device
        self._policy, self._params = policy, params
        self._generator = generator or torch.Generator(device=self.device).manual_seed(0)
        # RL²: the memory the next act starts from (None: the adapted one, any batch size),
        # and whether the last act still waits for its reward (observe).
        self._memory: dict[str, Tensor] | None = None
        self._waiting = False

    @property
    def stateful(self) -> bool:
        """Whether :meth:`act` carries a memory from step to step (RL²)."""
        return isinstance(self.module, _RecurrentAction)

    def reset(self) -> None:
        """Start a new episode: RL²'s memory goes back to the one adaptation left (the other
        policies hold no state: nothing to do)."""
        self._memory, self._waiting = None, False

    def observe(self, reward: Any, done: Any = False) -> None:
        """Give RL²'s policy what the env returned for the last :meth:`act`: ``reward`` and
        whether the episode ended (``terminated or truncated``), one each or one per row of
        the batch acted on; its next input. Other policies ignore it.

        Raises:
            ValueError: no act waits for its reward, or the shapes do not match its batch.
        """
        if not self.stateful:
            return
        if not self._waiting or self._memory is None:
            raise ValueError(
                "observe(reward, done) reports the outcome of the last act(obs); act first "
                "(and observe once per act)"
            )
        rows = self._memory["hidden"].shape[0]
        values = []
        for name, v in (("reward", reward), ("done", done)):
            t = torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device).reshape(-1)
            if t.numel() == 1:
                t = t.expand(rows)
            if t.shape != (rows,):
                raise ValueError(
                    f"{name} must be one value or one per row of the last act's batch "
                    f"({rows}), got {t.numel()}"
                )
            values.append(t.clone())
        self._memory["prev_reward"], self._memory["done"] = values
        self._waiting = False

    def __repr__(self) -> str:
        return (f"AdaptedPolicy(agent={self.agent!r}, task={self.task!r}, "
                f"steps={self.steps})")  # fmt: skip

    def _batch(self, obs: Any) -> tuple[Tensor, bool]:
        """``obs`` as a batch tensor, and whether it was a single observation."""
        space = self.observation_space
        x = obs.detach().cpu().numpy() if isinstance(obs, Tensor) else np.asarray(obs)
        if isinstance(space, gym.spaces.Discrete):
            if x.ndim > 1 or not np.issubdtype(x.dtype, np.integer):
                raise ValueError(
                    f"{self.env_id} observations are integers in [{space.start}, "
                    f"{space.start + space.n}); give one or a 1-D batch, got {x.dtype} of "
                    f"shape {x.shape}"
                )
            if ((x < space.start) | (x >= space.start + space.n)).any():
                raise ValueError(
                    f"{self.env_id} observations are integers in [{space.start}, "
                    f"{space.start + space.n}), got {x.tolist()}"
                )
            single = x.ndim == 0
            return torch.as_tensor(x.reshape(-1), dtype=torch.long, device=self.device), single
        shape = tuple(space.shape or ())
        if x.shape == shape:
            single = True
        elif x.ndim == len(shape) + 1 and x.shape[1:] == shape:
            single = False
        else:
            raise ValueError(
                f"{self.env_id} observations have shape {shape}: give one, or a batch "
                f"(B, {', '.join(map(str, shape))}); got shape {x.shape}"
            )
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        return (t[None] if single else t), single

    @torch.no_grad()
    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """The action for ``obs`` (one observation, or a batch on a leading dimension): the
        most likely one, or with ``deterministic=False`` a draw from the policy (from this
        policy's own seeded generator). Continuous actions are clipped to the action space,
        as the env gets them.

        RL²'s policy acts from its memory and steps it (see :meth:`observe`,
        :meth:`reset`).

        Raises:
            ValueError: ``obs`` is not an observation (or batch) of the family; for RL², the
                last act's reward was not observed, or the batch size changed mid-episode.
        """
        batch, single = self._batch(obs)
        if self.stateful:
            out = self._act_recurrent(batch, deterministic).cpu().numpy()
            return out[0] if single else out
        if deterministic:
            action = self.module(batch)
        else:
            action = self._sample(batch)
            if isinstance(self.action_space, gym.spaces.Box):
                action = self.module.clip(action)  # type: ignore[operator]
        out = action.cpu().numpy()
        return out[0] if single else out

    def _act_recurrent(self, batch: Tensor, deterministic: bool) -> Tensor:
        """One step of RL²'s policy from its memory, drawn as its trials draw."""
        m = self.module
        assert isinstance(m, _RecurrentAction)
        if self._waiting:
            raise ValueError(
                "rl2's policy reads the reward of its last action: call "
                "observe(reward, done) with what the env returned before the next act, or "
                "reset() to start a new episode"
            )
        b = batch.shape[0]
        memory = m.start(b) if self._memory is None else self._memory
        if memory["hidden"].shape[0] != b:
            raise ValueError(
                f"this episode acts on a batch of {memory['hidden'].shape[0]}, got {b}; "
                "keep the batch size within an episode, or reset() first"
            )
        head, hidden = m.step(batch, memory)
        if deterministic:
            action = m.mode(head)
        elif m.policy.discrete:  # as collect_trials draws, from the trial's generator
            probs = m.policy.distribution(head).probs
            action = torch.multinomial(probs, 1, generator=self._generator)[:, 0]
        else:
            noise = torch.randn(head.shape, generator=self._generator, device=self.device)
            action = head + m.policy.log_std.exp() * noise
        self._memory = {"hidden": hidden, "prev_action": m.policy.encode_act(action),
                        "prev_reward": memory["prev_reward"], "done": memory["done"]}  # fmt: skip
        self._waiting = True
        return action if m.policy.discrete else m.clip(action)

    def _sample(self, batch: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, _MeanAction):
            return m.policy.sample(m.policy(batch), self._generator)
        return m.sample(batch, self._generator)  # type: ignore[operator]  # a context policy

    def _example(self) -> Tensor:
        space = self.observation_space
        if isinstance(space, gym.spaces.Discrete):
            return torch.full((2,), int(space.start), dtype=torch.long, device=self.device)
        return torch.zeros((2, *(space.shape or ())), dtype=torch.float32, device=self.device)

    def memory(self) -> dict[str, np.ndarray]:
        """RL²'s memory at the start of an episode after adaptation (one row of each of
        ``hidden``, ``prev_action``, ``prev_reward``, ``done``): the first memory inputs of
        its export. Empty for a policy without memory."""
        if not isinstance(self.module, _RecurrentAction):
            return {}
        return {k: v.cpu().numpy() for k, v in self.module.start(1).items()}

    def export(self, path: str | Path, format: str = "torchscript") -> Path:
        """Write the deterministic policy for use outside metarl: ``"torchscript"``
        (``torch.jit.load(path)``) or ``"onnx"`` (needs the ``onnx`` package: ``pip install
        'metarl[export]'``); the batch dimension is dynamic.

        The export is :attr:`module`: observations ``obs`` in, their most likely ``action``
        out. RL²'s policy carries a memory, so its export is one step: ``(obs, hidden,
        prev_action, prev_reward, done) -> (action, next_hidden, next_prev_action)``; start
        an episode from :meth:`memory` (also written beside the export as
        ``<name>.memory.npz``), feed back the two last outputs as the next ``hidden`` and
        ``prev_action``, and give ``prev_reward`` and ``done`` from what the env returned for
        the action."""
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
        path = Path(path)
        example: tuple[Tensor, ...] = (self._example(),)
        module: nn.Module = self.module.eval()
        names, outputs = ["obs"], ["action"]
        if isinstance(module, _RecurrentAction):
            start = module.start(example[0].shape[0])
            example = (*example, *(start[k].contiguous() for k in _MEMORY))
            module, names = _RecurrentStep(module).eval(), ["obs", *_MEMORY]
            outputs = ["action", "next_hidden", "next_prev_action"]
        buf = io.BytesIO()
        if format == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                # torch marks TorchScript deprecated (for torch.export); it still runs
                # everywhere libtorch does, which is what a deployment needs.
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, example)
                torch.jit.save(traced, buf)
        else:
            try:
                import onnx  # noqa: F401  (the exporter needs it)
            except ImportError as e:
                raise ImportError(
                    "ONNX export needs the onnx package: pip install 'metarl[export]'"
                ) from e
            with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated
                warnings.simplefilter("ignore")
                # A file object is taken, though the stubs say a path.
                torch.onnx.export(
                    module, example, buf, dynamo=False, input_names=names,  # type: ignore[arg-type]
                    output_names=outputs,
                    dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]},
                )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buf.getvalue())
        if len(names) > 1:
            mem = io.BytesIO()
            np.savez(mem, **self.memory())  # type: ignore[arg-type]
            write_atomic(path.with_name(path.stem + ".memory.npz"), mem.getvalue())
        return path


# -- watching it adapt ---------------------------------------------------------------------
def render_episode(adapted: AdaptedPolicy, env_kwargs: Mapping[str, Any], seed: int = 0) -> list:
    """The frames of one episode of ``adapted`` on its task, acting deterministically."""
    from metarl.evaluation.video import headless_gl

    headless_gl()
    env = make(adapted.env_id, render_mode="rgb_array", **dict(env_kwargs))
    try:
        obs, _ = env.reset(seed=seed, options={"task": adapted.task})
        frames = [env.render()]
        done = False
        adapted.reset()
        while not done:
            obs, reward, terminated, truncated, _ = env.step(adapted.act(obs))
            frames.append(env.render())
            done = terminated or truncated
            adapted.observe(reward, done)
    finally:
        env.close()
    return [np.asarray(f, dtype=np.uint8) for f in frames if f is not None]


def record_videos(
    policy: TrainedPolicy,
    out_dir: str | Path,
    *,
    steps: int = 1,
    num_tasks: int = 3,
    episodes: int | None = None,
    seed: int = 0,
    split: str = "test",
) -> list[Path]:
    """For each of the first ``num_tasks`` tasks of ``split``: one video of an episode of the
    policy before adaptation and after 1..``steps`` units, side by side; MP4 where imageio's
    ffmpeg is installed, else GIF. Returns the files written (``task<i>.mp4`` or ``.gif``)."""
    from metarl.evaluation.video import check_renders, side_by_side, write_video

    check_renders(policy.env_id, **policy._env_kwargs())
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    steps = policy._check_steps(steps, 1)
    kw = {} if policy.adapts_by != "gradient steps" else {"episodes": episodes}
    unit = {"gradient steps": "step", "episodes": "episode"}.get(policy.adapts_by, "unit")
    env_kwargs = policy._env_kwargs()
    fps = 20
    paths = []
    for i, task in enumerate(policy.tasks(split)[:num_tasks]):
        clips, labels = [], []
        for k in range(steps + 1):
            adapted = policy.adapt(task, steps=k, seed=seed, **kw)
            clips.append(render_episode(adapted, env_kwargs, seed))
            labels.append("before" if k == 0 else f"after {k} {unit}{'s' * (k > 1)}")
        paths.append(write_video(Path(out_dir) / f"task{i}.mp4", side_by_side(clips, labels), fps))
    return paths
