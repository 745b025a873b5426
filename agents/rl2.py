"""RL²: a recurrent policy that learns to adapt within a trial (Duan et al. 2016; Wang et al. 2016).

A *trial* is ``n`` episodes on one task. The policy is a GRU whose input at every step is
``(observation, previous action, previous reward, done flag)`` — the done flag is 1 on the
first step of episodes 2..n, where the previous action and reward are those that ended the
previous episode, and everything but the observation is 0 on a trial's first step. The
hidden state runs through all episodes of a trial (that is where the adaptation lives) and
is reset to zero between trials. The meta-objective is the return of the whole trial, so the
policy learns to spend early episodes exploring when that pays later. It is trained with PPO
(Schulman et al. 2017: clipped objective, GAE over the whole trial) on many training tasks at
once: ``B`` trials, one task each, stepped together through the family's on-device (torch)
batched env where there is one, else its NumPy batched env.

Evaluation follows the one protocol (:class:`metarl.evaluation.AdaptationCurve`): the unit is
the episode, and the curve holds the return of episodes 1, 2, ..., n of trials on held-out
tasks. For the bandits a trial is one episode of ``n`` pulls (the paper's "n episodes" of
one pull each), so the curve has one point: the trial's return.

Deviations from the paper: PPO instead of TRPO; Adam; hyperparameters in :data:`PRESETS`.
As in the paper's rllab code, the advantages are GAE(λ) over the trial and the value (here a
head on the GRU) regresses on the trial's discounted Monte-Carlo returns-to-go
(``value_target="returns"``; ``"gae"`` gives PPO's usual bootstrapped target).

Example:
    >>> from metarl.agents import rl2
    >>> cfg = rl2.RL2Config(env_id="metarl/BernoulliBandit-K5-v0", max_episode_steps=10,
    ...                     num_trials=8, hidden_size=16, num_iterations=1)
    >>> agent = rl2.RL2(cfg)
    >>> stats = agent.train()
    >>> curve = agent.evaluate(num_tasks=4, trials_per_task=2)
    >>> curve.returns.shape
    (2, 4, 1)

References:
    Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel 2016, "RL²: Fast Reinforcement Learning
    via Slow Reinforcement Learning".
    Wang et al. 2016, "Learning to Reinforcement Learn".
    Schulman, Wolski, Dhariwal, Radford, Klimov 2017, "Proximal Policy Optimization
    Algorithms"; Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation".
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

import metarl
from metarl.batched import EnvError
from metarl.config import (
    ConfigError,
    RunConfig,
    _check_device,
    num_workers_option,
    option,
    worker_timeout_option,
)
from metarl.evaluation import AdaptationCurve, save_run_curve
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.runs import Run, load_checkpoint_file, progress, save_checkpoint_file
from metarl.seeding import seed_everything
from metarl.torch_batched import resolve_device

__all__ = [
    "AGENT",
    "CONFIG",
    "PRESETS",
    "RL2",
    "RL2Config",
    "RL2Policy",
    "Trials",
    "collect_trials",
    "evaluate",
    "load_agent",
    "train",
    "trial_gae",
]

#: The name written into (and required of) RL² checkpoints.
AGENT = "rl2"


class _UnknownFamily(ConfigError, KeyError):
    """An unknown ``env_id``: a :class:`ConfigError` that is also the registry's KeyError."""


@dataclass
class RL2Config(RunConfig):
    """Settings of an RL² run; :attr:`presets` holds the paper's settings and ``quick``."""

    env_id: str = option(
        "metarl/BernoulliBandit-K5-v0",
        "the task family to meta-train on (`metarl envs` lists them)",
        aliases=("--env",),
    )
    device: str = option(
        "cpu",
        "where the learner and (for families with one) the torch envs run: auto, cpu, cuda, cuda:N",
        check=_check_device,
        may_change_on_resume=True,
    )
    num_iterations: int = option(500, "PPO iterations", low=1, may_change_on_resume=True)
    episodes_per_trial: int = option(
        1, "n: episodes per trial on one task (for bandits: 1 episode of n pulls)", low=1
    )
    max_episode_steps: int | None = option(
        None, "steps per episode; None: the family's registered horizon", low=1
    )
    num_trials: int = option(256, "trials (tasks) per PPO iteration, stepped together", low=1)
    hidden_size: int = option(128, "GRU hidden units", low=1)
    value_network: str = option(
        "shared",
        "where the value head reads from: shared (the policy's GRU) or separate (a GRU of "
        "its own, as the rllab baseline Duan et al. 2016 trained; the value loss then "
        "does not shape the policy's memory)",
        choices=("shared", "separate"),
    )
    lr: float = option(1e-3, "Adam learning rate", low=0.0, low_open=True)
    gamma: float = option(0.99, "discount over the whole trial", low=0.0, high=1.0, low_open=True)
    gae_lambda: float = option(0.3, "GAE lambda over the whole trial", low=0.0, high=1.0)
    value_target: str = option(
        "returns",
        "what the value head regresses on: returns (the trial's discounted Monte-Carlo "
        "returns-to-go, as the rllab baselines Duan et al. 2016 trained with) or gae (the "
        "GAE(lambda) returns, PPO's usual target; with a small lambda they bootstrap on the "
        "value itself, which then learns slowly over a trial of hundreds of steps)",
        choices=("returns", "gae"),
    )
    clip_coef: float = option(0.2, "PPO's clipping epsilon", low=0.0, low_open=True)
    update_epochs: int = option(4, "PPO epochs over each batch of trials", low=1)
    num_minibatches: int = option(4, "minibatches of whole trials per epoch", low=1)
    ent_coef: float = option(0.01, "entropy bonus coefficient", low=0.0)
    vf_coef: float = option(0.5, "value loss coefficient", low=0.0)
    max_grad_norm: float = option(0.5, "gradient norm clipping", low=0.0, low_open=True)
    backend: str = option(
        "auto",
        "batched env: auto (torch env when the family has one), torch, numpy, or subprocess "
        "(envs in worker processes with a timeout: an env that crashes or hangs becomes an "
        "error naming the env, task and step)",
        choices=("auto", "torch", "numpy", "subprocess"),
    )
    num_workers: int = num_workers_option()
    worker_timeout: float = worker_timeout_option()
    init_from: str | None = option(
        None,
        "a checkpoint (file or run directory) whose policy weights start this run (a "
        "curriculum: n=100 bandits from the n=10 run); the network's sizes must match",
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below

    def validate(self) -> RL2Config:  # type: ignore[override]
        """Raise :class:`ConfigError` (a ValueError) naming the setting for any value of the
        wrong type or range; returns the config."""
        super().validate()
        for name in ("lr", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef",
                     "max_grad_norm"):  # fmt: skip
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.num_trials % self.num_minibatches:
            raise ConfigError(
                f"num_trials ({self.num_trials}) must be a multiple of num_minibatches "
                f"({self.num_minibatches})"
            )
        try:
            metarl.family(self.env_id)
        except KeyError as e:
            msg = e.args[0] if e.args else str(e)
            raise _UnknownFamily(f"RL2Config.env_id (--env-id): {msg}") from None
        if self.init_from is not None:
            _checkpoint_in(self.init_from)
        return self


def _checkpoint_in(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself or a run directory's."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(
            f"init_from: no checkpoint at {path}; give an RL² checkpoint file or run directory"
        )
    return path


def _bandit(k: int, n: int, iterations: int, **kwargs: Any) -> dict[str, Any]:
    return {
        "env_id": f"metarl/BernoulliBandit-K{k}-v0",
        "episodes_per_trial": 1,
        "max_episode_steps": n,
        "num_iterations": iterations,
        **kwargs,
    }


# Long trials: fewer passes over each batch (the GRU's backward pass dominates on a CPU).
_LONG: dict[str, Any] = {"update_epochs": 2, "num_minibatches": 2}
# MDP trials and n = 100 bandits: 4 Adam steps per iteration (_LONG) barely move the policy
# (clip fraction ~0). On one fixed MDP they left RL² at 10.5 per episode after 60 iterations
# (random 8.9, optimum 17.6); 4 epochs × 8 minibatches (32 steps) reach 17.4 in 30
# (tests/test_rl2.py, slow). On the k = 10, n = 100 bandits, 300 iterations from the same
# n = 10 checkpoint gave 71.8 on the held-out tasks with _LONG (training flat at ~70, clip
# fraction <= 0.02) and 76.7 with these (benchmarks/rl2_tables; the paper's RL² 83.5).
# Minibatches cost little more than one pass; the epochs are the GRU's backward passes.
_MANY_STEPS: dict[str, Any] = {"update_epochs": 4, "num_minibatches": 8}

# 2D navigation (Finn et al. 2017's family): a trial of 4 episodes of 100 steps on one goal,
# so the curve has episodes 1..4 beside MAML's 0..3 gradient steps. Continuous actions.
_NAV2D: dict[str, Any] = {
    "env_id": "metarl/Navigation2D-v0",
    "episodes_per_trial": 4,
    "num_trials": 64,
    "hidden_size": 64,
    "lr": 3e-3,
    "gae_lambda": 0.95,
    "ent_coef": 0.0,
    **_LONG,
}

#: The paper's settings (Duan et al. 2016, Sec. 4.1–4.2): bandits with k arms and n pulls,
#: random MDPs with n episodes of 10 steps; 2D navigation (``nav2d``, and ``quick``: about a
#: minute on a CPU). Iteration counts fit a CPU budget of minutes per setting (the paper
#: trained far longer); raise ``num_iterations`` for better agents.
RL2Config.presets = {
    "bandit-k5-n10": _bandit(5, 10, 300),
    "bandit-k10-n10": _bandit(10, 10, 300),
    "bandit-k5-n100": _bandit(5, 100, 300, **_MANY_STEPS),
    "bandit-k10-n100": _bandit(10, 100, 400, **_MANY_STEPS),
    "mdp-n10": {
        "env_id": "metarl/TabularMDP-S10A5-v0",
        "episodes_per_trial": 10,
        "num_iterations": 500,
        **_MANY_STEPS,
    },
    "mdp-n25": {
        "env_id": "metarl/TabularMDP-S10A5-v0",
        "episodes_per_trial": 25,
        "num_trials": 128,
        "num_iterations": 200,
        **_MANY_STEPS,
    },
    "nav2d": {**_NAV2D, "num_iterations": 500, "checkpoint_every": 25},
    "quick": {
        **_NAV2D,
        "num_iterations": 30,
        "num_trials": 32,
        "hidden_size": 32,
        "checkpoint_every": 10,
    },
}

#: The presets as configs (``PRESETS["bandit-k5-n10"]``), for Python use.
PRESETS: dict[str, RL2Config] = {name: RL2Config.from_preset(name) for name in RL2Config.presets}

#: The agent registry's config class (``metarl train --agent rl2``).
CONFIG = RL2Config


# -- the environment edge: everything past here is tensors on the device -------------------
class _Env:
    """The batched env of a family as tensors on ``device`` (torch backend when there is
    one, else the NumPy backend with one transfer per step)."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        horizon: int | None,
        device: torch.device,
        backend: str,
        num_workers: int = 2,
        worker_timeout: float = 60.0,
    ) -> None:
        kwargs: dict[str, Any] = {} if horizon is None else {"max_episode_steps": horizon}
        fam = metarl.family(env_id)
        self.device = device
        use_torch = backend == "torch" or (backend == "auto" and fam.torch is not None)
        spec_env = gym.make(env_id)
        self.observation_space = spec_env.observation_space
        self.action_space = spec_env.action_space
        spec_env.close()
        if use_torch:
            self.torch_env: Any = metarl.make_torch_batched(
                env_id, num_envs, device=str(device), **kwargs
            )
            self.numpy_env: Any = None
            self.horizon = int(self.torch_env.horizon)
        else:
            self.torch_env = None
            if backend == "subprocess":  # rows in worker processes (metarl.workers): no hang
                kwargs.update(num_workers=num_workers, timeout=worker_timeout)
            else:
                backend = "auto"
            self.numpy_env = metarl.make_batched(env_id, num_envs, backend=backend, **kwargs)
            self.horizon = int(self.numpy_env.horizon)

    def close(self) -> None:
        """Release the envs (worker processes with the subprocess backend)."""
        for env in (self.torch_env, self.numpy_env):
            if env is not None and hasattr(env, "close"):
                env.close()

    def reset(self, tasks: Sequence[Any], seed: int | None) -> Tensor:
        if self.torch_env is not None:
            return self.torch_env.reset(tasks, seed=seed)[0]
        return torch.as_tensor(self.numpy_env.reset(tasks, seeds=seed)[0], device=self.device)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """(obs, reward, done, stepped, success) after one step; ``success`` is the env's
        ``info["is_success"]`` where the family defines it, else None."""
        if self.torch_env is not None:
            obs, reward, term, trunc, info = self.torch_env.step(actions)
            return obs, reward.float(), term | trunc, info["active"], info.get("is_success")
        obs, reward, term, trunc, info = self.numpy_env.step(actions.cpu().numpy())
        # Checked here, before the policy sees them (a NaN input fails deep inside torch).
        check_finite("observations or rewards", obs, reward,
                     hint=f"the env {self.numpy_env.env_id} returned them")  # fmt: skip
        dev = self.device
        success = info.get("is_success")
        return (
            torch.as_tensor(obs, device=dev),
            torch.as_tensor(reward, device=dev).float(),
            torch.as_tensor(term | trunc, device=dev),
            torch.as_tensor(info["active"], device=dev),
            None if success is None else torch.as_tensor(success, device=dev),
        )


def _encoder(space: gym.Space[Any]) -> tuple[int, Callable[[Tensor], Tensor]]:
    """(size, function) turning a batch of elements of ``space`` into float vectors."""
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        return n, lambda x: nn.functional.one_hot(x.long() - int(space.start), n).float()
    if isinstance(space, gym.spaces.Box):
        size = int(np.prod(space.shape))
        return size, lambda x: x.float().reshape(x.shape[0], size)
    raise TypeError(f"RL² supports Discrete and Box spaces, got {space}")


def _run_gru(gru: nn.GRU, x: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``gru`` over ``x`` ``(T, B, in)`` from ``h`` ``(B, hidden)``: (outputs ``(T, B,
    hidden)``, final hidden); where ``mask`` is 0 a row's hidden state is carried unchanged
    and its output is 0."""
    if mask is None or bool(mask.all()):
        out, h_last = gru(x, h[None])
        return out, h_last[0]
    outs = []
    for t in range(x.shape[0]):
        o, h_new = gru(x[t : t + 1], h[None])
        keep = mask[t, :, None].bool()
        h = torch.where(keep, h_new[0], h)
        outs.append(torch.where(keep, o[0], 0.0))
    return torch.stack(outs), h


class RL2Policy(nn.Module):
    """A GRU over ``(obs, prev action, prev reward, done)`` with a policy and a value head.

    ``forward(x, h)`` takes inputs ``(T, B, input_size)`` and the initial hidden state
    ``(B, state_size)``, with an optional ``mask`` ``(T, B)``: where 0, a row's hidden state
    is carried through unchanged (the row is waiting for the others to end their episode).
    Returns (logits or means ``(T, B, A)``, values ``(T, B)``, final hidden
    ``(B, state_size)``).

    With ``separate_value`` the value head reads from a second GRU of the same size over the
    same inputs (``state_size`` = 2 × ``hidden``: the policy's memory, then the value's), so
    the value loss does not shape the policy's memory; otherwise both heads share one GRU
    (``state_size`` = ``hidden``).
    """

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        hidden: int,
        separate_value: bool = False,
    ):
        super().__init__()
        self.obs_size, self.encode_obs = _encoder(observation_space)
        self.act_size, self.encode_act = _encoder(action_space)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.input_size = self.obs_size + self.act_size + 2
        self.hidden_size = hidden
        self.separate_value = separate_value
        self.state_size = 2 * hidden if separate_value else hidden
        self.gru = nn.GRU(self.input_size, hidden)
        self.v_gru = nn.GRU(self.input_size, hidden) if separate_value else None
        self.pi = nn.Linear(hidden, self.act_size)
        self.v = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.pi.weight, 0.01)
        nn.init.zeros_(self.pi.bias)
        self.log_std = nn.Parameter(
            torch.full((self.act_size,), -0.5), requires_grad=not self.discrete
        )

    def inputs(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, done: Tensor) -> Tensor:
        """One step's input ``(B, input_size)``; ``prev_action`` is already encoded."""
        return torch.cat(
            [self.encode_obs(obs), prev_action, prev_reward[:, None], done[:, None]], -1
        )

    def forward(
        self, x: Tensor, h: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.v_gru is None:
            out, h_last = _run_gru(self.gru, x, h, mask)
            return self.pi(out), self.v(out).squeeze(-1), h_last
        n = self.hidden_size
        out, h_pi = _run_gru(self.gru, x, h[:, :n], mask)
        v_out, h_v = _run_gru(self.v_gru, x, h[:, n:], mask)
        return self.pi(out), self.v(v_out).squeeze(-1), torch.cat([h_pi, h_v], -1)

    def distribution(self, head: Tensor) -> torch.distributions.Distribution:
        if self.discrete:
            return torch.distributions.Categorical(logits=head)
        return torch.distributions.Independent(
            torch.distributions.Normal(head, self.log_std.exp()), 1
        )


class Trials(NamedTuple):
    """``B`` trials of ``T = n × horizon`` steps, time-major.

    ``inputs`` ``(T, B, input_size)``; ``actions`` ``(T, B[, A])``; ``log_probs``,
    ``values``, ``rewards``, ``mask`` ``(T, B)``; ``heads`` ``(T, B, A)`` the policy's
    logits (means) at collection; ``episode_returns`` ``(n, B)``; ``episode_success``
    ``(n, B)``, 1 where the env reported ``info["is_success"]`` at some step of the episode,
    or None when the family defines no success.
    """

    inputs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    mask: Tensor
    heads: Tensor
    episode_returns: Tensor
    episode_success: Tensor | None = None


@torch.no_grad()
def collect_trials(
    policy: RL2Policy,
    env: _Env,
    tasks: Sequence[Any],
    episodes_per_trial: int,
    seed: int | None,
    generator: torch.Generator | None = None,
) -> Trials:
    """Run one trial per task (``len(tasks)`` = the env's rows), the hidden state kept across
    the trial's episodes and starting from zero; returns the :class:`Trials`."""
    device = env.device
    batch = len(tasks)
    h = torch.zeros(batch, policy.state_size, device=device)  # a new trial: zero memory
    prev_action = torch.zeros(batch, policy.act_size, device=device)
    prev_reward = torch.zeros(batch, device=device)
    done_flag = torch.zeros(batch, device=device)
    per_episode = ("episode_returns", "episode_success")
    buf: dict[str, list[Tensor]] = {k: [] for k in Trials._fields if k not in per_episode}
    episode_returns, episode_success = [], []
    for episode in range(episodes_per_trial):
        obs = env.reset(tasks, seed=None if seed is None or episode else seed)
        ep_return = torch.zeros(batch, device=device)
        ep_success: Tensor | None = None
        for _ in range(env.horizon):
            x = policy.inputs(obs, prev_action, prev_reward, done_flag)
            head, value, h_new = policy(x[None], h)
            dist = policy.distribution(head[0])
            if policy.discrete:
                probs = dist.probs  # type: ignore[attr-defined]
                action = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                noise = torch.randn(head[0].shape, generator=generator, device=device)
                action = head[0] + policy.log_std.exp() * noise
            obs, reward, done, stepped, success = env.step(action)
            m = stepped.float()
            if success is not None:
                hit = success.bool() & stepped
                ep_success = hit if ep_success is None else ep_success | hit
            for key, val in (
                ("inputs", x),
                ("actions", action),
                ("log_probs", dist.log_prob(action)),
                ("values", value[0]),
                ("rewards", reward * m),
                ("mask", m),
                ("heads", head[0]),
            ):
                buf[key].append(val)
            keep = stepped[:, None]
            h = torch.where(keep, h_new, h)
            prev_action = torch.where(keep, policy.encode_act(action), prev_action)
            prev_reward = torch.where(stepped, reward, prev_reward)
            done_flag = torch.where(stepped, done.float(), done_flag)
            ep_return += reward * m
            if not bool((stepped & ~done).any()):
                break
        episode_returns.append(ep_return)
        if ep_success is not None:
            episode_success.append(ep_success.float())
    return Trials(
        **{k: torch.stack(v) for k, v in buf.items()},
        episode_returns=torch.stack(episode_returns),
        episode_success=torch.stack(episode_success) if episode_success else None,
    )


def trial_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE (Schulman et al. 2016, Eq. 16) over a whole trial, skipping masked steps.

    The trial is one long episode: the value after an episode's last step is the value of
    the next episode's first step, and 0 after the trial's last step. Steps with mask 0 (a
    row waiting while others finish their episode) are skipped, not treated as ends.
    All tensors ``(T, B)``; returns advantages ``(T, B)``, 0 where masked.
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        live = mask[t] > 0
        delta = rewards[t] + gamma * next_value - values[t]
        a = delta + gamma * lam * running
        adv[t] = torch.where(live, a, 0.0)
        running = torch.where(live, a, running)
        next_value = torch.where(live, values[t], next_value)
    return adv


class RL2:
    """An RL² agent: :meth:`train`, :meth:`evaluate`, :meth:`save`, :meth:`load`.

    Args:
        config: an :class:`RL2Config` (or a preset from :data:`PRESETS`).
    """

    def __init__(self, config: RL2Config) -> None:
        self.config = config.validate()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.dist = metarl.task_distribution(config.env_id)
        self.train_tasks = self.dist.split("train")
        self.env = _Env(
            config.env_id, config.num_trials, config.max_episode_steps, self.device,
            config.backend, config.num_workers, config.worker_timeout,
        )  # fmt: skip
        self.policy = RL2Policy(
            self.env.observation_space,
            self.env.action_space,
            config.hidden_size,
            separate_value=config.value_network == "separate",
        ).to(self.device)
        if config.init_from is not None:
            self._init_policy(config.init_from)
        # Gradient norms are clipped per network: with a separate value GRU, a large value
        # gradient must not shrink the policy's step (one joint norm would).
        params = list(self.policy.parameters())
        self._clip_groups = [params]
        if self.policy.v_gru is not None:
            value = {id(p) for m in (self.policy.v_gru, self.policy.v) for p in m.parameters()}
            self._clip_groups = [
                [p for p in params if id(p) not in value],
                [p for p in params if id(p) in value],
            ]
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=1e-5)
        self.rng = np.random.default_rng([config.seed, 0x412])
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.iteration = 0
        self.env_steps = 0
        self.history: list[dict[str, float]] = []
        self.value_scale = 1.0

    def _init_policy(self, path: str) -> None:
        state = load_checkpoint_file(_checkpoint_in(path), agent=AGENT, map_location=self.device)
        if "policy" not in state and "state" in state:  # a run directory's checkpoint
            state = state["state"]
        try:
            self.policy.load_state_dict(state["policy"])
        except RuntimeError as e:
            raise ValueError(
                f"init_from {path}: its policy does not fit this config (another env's spaces "
                f"or hidden_size or value_network?): {e}"
            ) from e

    # -- training ------------------------------------------------------------------------
    def _ppo_update(self, trials: Trials) -> dict[str, float]:
        cfg = self.config
        # The value head predicts returns in units of ``value_scale``, a running estimate of
        # the returns' spread: trial returns reach hundreds, which a raw head learns slowly
        # and whose loss would swamp the policy's gradient under the norm clipping.
        values = trials.values * self.value_scale
        adv = trial_gae(trials.rewards, values, trials.mask, cfg.gamma, cfg.gae_lambda)
        if cfg.value_target == "returns":  # discounted returns-to-go of the whole trial
            zero = torch.zeros_like(values)
            returns = trial_gae(trials.rewards, zero, trials.mask, cfg.gamma, 1.0)
        else:
            returns = adv + values
        live = trials.mask > 0
        # The spread of what the head must predict. (Measured on GAE(λ) returns with a small
        # λ, it is the spread of one step's reward while the value is still near 0, a scale
        # 10-20× too small on a 100-step MDP trial, and the head then learns slower still.)
        spread = float(returns[live].std()) if int(live.sum()) > 1 else 1.0
        if self.iteration == 0:
            self.value_scale = max(spread, 1e-3)
        else:
            self.value_scale = max(0.95 * self.value_scale + 0.05 * spread, 1e-3)
        targets = returns / self.value_scale
        batch = trials.rewards.shape[1]
        h0 = torch.zeros(batch, self.policy.state_size, device=self.device)
        stats: dict[str, list[float]] = {
            "policy_loss": [],
            "value_loss": [],
            "entropy": [],
            "clip_frac": [],
        }
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(batch, generator=self.generator, device=self.device)
            for mb in perm.view(cfg.num_minibatches, -1):
                m = trials.mask[:, mb]
                head, values, _ = self.policy(trials.inputs[:, mb], h0[mb], m)
                dist = self.policy.distribution(head)
                logp = dist.log_prob(trials.actions[:, mb])
                n = m.sum().clamp_min(1.0)
                mb_adv = adv[:, mb]
                mean = (mb_adv * m).sum() / n
                std = (((mb_adv - mean) * m) ** 2).sum().div(n).sqrt()
                mb_adv = (mb_adv - mean) / (std + 1e-8)
                ratio = (logp - trials.log_probs[:, mb]).exp()
                # Clipped surrogate (Schulman et al. 2017, Eq. 7).
                surrogate = torch.min(
                    ratio * mb_adv, ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * mb_adv
                )
                policy_loss = -(surrogate * m).sum() / n
                value_loss = 0.5 * (((values - targets[:, mb]) ** 2) * m).sum() / n
                entropy = (dist.entropy() * m).sum() / n
                loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                check_finite("PPO loss", loss, hint="lower --lr or check the env's rewards")
                check_finite("gradients", [p.grad for p in self.policy.parameters()
                                           if p.grad is not None])  # fmt: skip
                for group in self._clip_groups:
                    nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
                self.optimizer.step()
                stats["policy_loss"].append(policy_loss.item())
                stats["value_loss"].append(value_loss.item())
                stats["entropy"].append(entropy.item())
                clipped = ((ratio - 1).abs() > cfg.clip_coef).float()
                stats["clip_frac"].append(((clipped * m).sum() / n).item())
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def train_iteration(self) -> dict[str, float]:
        """One PPO iteration on ``num_trials`` fresh training tasks."""
        cfg = self.config
        start = time.perf_counter()
        idx = self.rng.integers(0, len(self.train_tasks), size=cfg.num_trials)
        tasks = [self.train_tasks[i] for i in idx]
        seed = int(self.rng.integers(2**31))
        trials = collect_trials(
            self.policy, self.env, tasks, cfg.episodes_per_trial, seed, self.generator
        )
        sample_time = time.perf_counter() - start
        # inputs hold (observation, previous action, previous reward, done) of every step.
        check_finite("observations or rewards", trials.inputs, trials.rewards,
                     hint=f"the env {cfg.env_id} returned them")  # fmt: skip
        stats = self._ppo_update(trials)
        steps = int(trials.mask.sum())
        self.env_steps += steps
        self.iteration += 1
        episode_means = trials.episode_returns.mean(1)
        stats.update(
            iteration=self.iteration,
            env_steps=self.env_steps,
            trial_return=float(trials.episode_returns.sum(0).mean()),
            first_episode_return=float(episode_means[0]),
            last_episode_return=float(episode_means[-1]),
            sample_s=sample_time,
            total_s=time.perf_counter() - start,
            steps=steps,
        )
        self.history.append(stats)
        return stats

    def train(
        self,
        num_iterations: int | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 50,
        log: Callable[[dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train up to ``num_iterations`` (default: the config's) iterations in total.

        With ``checkpoint``, resumes from it when it exists and saves to it (atomically)
        every ``checkpoint_every`` iterations and at the end.
        """
        total = self.config.num_iterations if num_iterations is None else num_iterations
        if checkpoint is not None and Path(checkpoint).exists():
            self.load(checkpoint)
        while self.iteration < total:
            try:
                stats = self.train_iteration()
            except NonFiniteError as e:  # stop before anything is saved; name the iteration
                where = str(checkpoint) if checkpoint is not None else ""
                raise NonFiniteError(at_iteration(e, self.iteration, where), e.quantity,
                                     self.iteration) from e  # fmt: skip
            except EnvError as e:  # an env raised, died or hung: name the iteration too
                kept = checkpoint is not None and Path(checkpoint).exists()
                raise e.at_iteration(self.iteration, str(checkpoint) if kept else "") from e
            if log is not None:
                log(stats)
            if checkpoint is not None and self.iteration % checkpoint_every == 0:
                self.save(checkpoint)
        if checkpoint is not None:
            self.save(checkpoint)
        return self.history

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(
        self,
        tasks: Sequence[Any] | None = None,
        num_tasks: int | None = None,
        trials_per_task: int = 10,
        seed: int = 1,
        split: str = "test",
        episodes_per_trial: int | None = None,
    ) -> AdaptationCurve:
        """Returns of episodes 1..n of trials on held-out tasks (default: the test split).

        ``episodes_per_trial`` (default: the config's ``n``) sets the trials' length.

        Returns:
            An :class:`AdaptationCurve` with ``returns`` ``(trials_per_task, num_tasks, n)``:
            entry ``k`` is the return of episode ``k + 1`` (after ``k`` episodes of
            adaptation).
        """
        if tasks is None:
            tasks = self.dist.split("test" if split == "test" else "train")
        tasks = list(tasks)[:num_tasks]
        rows = [t for _ in range(trials_per_task) for t in tasks]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        n = self.config.episodes_per_trial if episodes_per_trial is None else episodes_per_trial
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"episodes_per_trial must be an integer >= 1, got {n!r}")
        env = _Env(
            self.config.env_id, len(rows), self.config.max_episode_steps, self.device,
            self.config.backend, self.config.num_workers, self.config.worker_timeout,
        )  # fmt: skip
        start = time.perf_counter()
        try:
            trials = collect_trials(self.policy, env, rows, n, seed, gen)
        finally:
            env.close()
        elapsed = time.perf_counter() - start
        returns = trials.episode_returns.T.reshape(trials_per_task, len(tasks), n)
        success: np.ndarray | None = None
        if trials.episode_success is not None:
            per_episode = trials.episode_success.T.reshape(trials_per_task, len(tasks), n)
            success = per_episode.cpu().numpy()
        steps_per_episode = int(trials.mask.sum()) / max(len(rows) * n, 1)
        return AdaptationCurve(
            agent="rl2",
            env_id=self.config.env_id,
            unit="episodes",
            returns=returns.cpu().numpy(),
            success=success,
            env_steps=[round(steps_per_episode * k) for k in range(n)],
            wall_clock_s=[elapsed * k / n for k in range(n)],
            split=split,
            meta={
                "config": dataclasses.asdict(self.config),
                "iterations": self.iteration,
                "meta_train_env_steps": self.env_steps,
                "trials_per_task": trials_per_task,
            },
        )

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (a temporary file renamed over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "history": self.history,
            "value_scale": self.value_scale,
            "rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        # Plain data, fsynced and renamed into place; refused (old file kept) on NaN/inf.
        return save_checkpoint_file(
            path,
            state,
            agent=AGENT,
            task_family=self.config.env_id,
            check_finite=("policy", "optimizer"),
        )

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save`; training resumes exactly."""
        state = load_checkpoint_file(
            path, agent=AGENT, task_family=self.config.env_id, map_location=self.device
        )
        free = {f.name for f in dataclasses.fields(self.config)
                if f.metadata.get("may_change_on_resume")}  # fmt: skip
        saved = {k: v for k, v in state["config"].items() if k not in free}
        mine = {k: v for k, v in dataclasses.asdict(self.config).items() if k in saved}
        if saved != mine:
            diff = sorted(k for k in saved if saved[k] != mine[k])
            raise ValueError(
                f"checkpoint {path} was written with a different config (differs in {diff}); "
                "use the same settings or another checkpoint path"
            )
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
        self.history = list(state["history"])
        self.value_scale = float(state["value_scale"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> RL2:
        state = load_checkpoint_file(path, agent=AGENT)
        config = RL2Config(**{**state["config"], "device": device})
        agent = cls(config)
        agent.load(path)
        return agent


# -- the agent registry's interface: run directories (metarl train / evaluate / benchmark) --
def _run_state(agent: RL2) -> dict[str, Any]:
    return {
        "policy": agent.policy.state_dict(),
        "optimizer": agent.optimizer.state_dict(),
        "env_steps": agent.env_steps,
        "value_scale": agent.value_scale,
    }


def _generators(agent: RL2) -> dict[str, np.random.Generator | torch.Generator]:
    return {"tasks": agent.rng, "torch": agent.generator}


def train(
    cfg: RL2Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Meta-train RL² in a run directory: config.json, metrics.csv (one row per PPO
    iteration: trial return, returns of the trial's first and last episodes, losses, env
    steps, seconds) and checkpoint.pt through :class:`metarl.runs.Run`'s safe envelope.

    Args:
        resume: continue ``run_dir`` from its last checkpoint (exactly, on the CPU).
        overwrite: delete ``run_dir`` first if it exists.
        log: where one-line progress messages go (e.g. ``print``); None: silent.
    """
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = Path(run_dir)
    # Python's and NumPy's global generators too (RL² draws from its own), so that the RNG
    # states a checkpoint saves are a function of the seed: a resumed run equals a fresh one.
    seed_everything(cfg.seed)
    if resume:
        run = Run.resume(run_dir, AGENT, cfg)
        # Weights come from the run's own checkpoint, not from init_from (which may be gone).
        agent = RL2(cfg.replace(init_from=None))
        ckpt = run.load_checkpoint(_generators(agent))
        state = ckpt["state"]
        agent.policy.load_state_dict(state["policy"])
        agent.optimizer.load_state_dict(state["optimizer"])
        agent.env_steps = int(state["env_steps"])
        agent.value_scale = float(state["value_scale"])
        agent.iteration = int(ckpt["iteration"])
    else:
        agent = RL2(cfg)
        run = Run.create(run_dir, AGENT, cfg, overwrite=overwrite)
    start = agent.iteration
    if log:
        log(f"{AGENT} on {cfg.env_id}: iterations {start}..{cfg.num_iterations}, "
            f"{cfg.episodes_per_trial} episode(s) per trial, run dir {run_dir}")  # fmt: skip
    bar = progress(range(start, cfg.num_iterations), total=cfg.num_iterations, initial=start,
                   desc=AGENT)  # fmt: skip
    try:
        for it in bar:
            try:
                stats = agent.train_iteration()
            except NonFiniteError as e:  # stop before logging or checkpointing this iteration
                kept = str(run.checkpoint_path) if run.checkpoint_path.exists() else ""
                raise NonFiniteError(at_iteration(e, it, kept), e.quantity, it) from e
            except EnvError as e:  # an env raised, died or hung: name the iteration too
                kept = str(run.checkpoint_path) if run.checkpoint_path.exists() else ""
                raise e.at_iteration(it, kept) from e
            total_s = stats["total_s"]
            run.log(
                it,
                {
                    "trial_return": stats["trial_return"],
                    "first_episode_return": stats["first_episode_return"],
                    "last_episode_return": stats["last_episode_return"],
                    "policy_loss": stats["policy_loss"],
                    "value_loss": stats["value_loss"],
                    "entropy": stats["entropy"],
                    "clip_frac": stats["clip_frac"],
                    "env_steps": stats["steps"],
                    "env_steps_total": stats["env_steps"],
                    "env_steps_per_s": stats["steps"] / max(total_s, 1e-9),
                    "sample_s": stats["sample_s"],
                    "update_s": total_s - stats["sample_s"],
                    "iteration_s": total_s,
                },
            )
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(first=f"{stats['first_episode_return']:.1f}",
                                last=f"{stats['last_episode_return']:.1f}")  # fmt: skip
            elif log and (it % 10 == 0 or it + 1 == cfg.num_iterations):
                log(
                    f"iteration {it}: trial return {stats['trial_return']:.2f} (episode 1: "
                    f"{stats['first_episode_return']:.2f}, episode {cfg.episodes_per_trial}: "
                    f"{stats['last_episode_return']:.2f})"
                )
            done = it + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.num_iterations:
                run.save_checkpoint(done, _run_state(agent), generators=_generators(agent))
    finally:
        run.close()
        agent.env.close()
    return run


def load_agent(run_dir: str | Path, device: str = "cpu") -> RL2:
    """The RL² agent of a run directory (its last checkpoint), ready to :meth:`RL2.evaluate`."""
    record = Run.read_record(run_dir)
    if record["agent"] != AGENT:
        raise ValueError(f"{run_dir} is a {record['agent']} run, not {AGENT}")
    cfg = RL2Config.from_dict({**record["config"], "device": device, "init_from": None})
    payload = load_checkpoint_file(
        Path(run_dir) / "checkpoint.pt", agent=AGENT, task_family=cfg.env_id,
        map_location=resolve_device(device),
    )  # fmt: skip
    agent = RL2(cfg)
    state = payload["state"]
    agent.policy.load_state_dict(state["policy"])
    agent.env_steps = int(state["env_steps"])
    agent.value_scale = float(state["value_scale"])
    agent.iteration = int(payload["iteration"])
    return agent


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    num_steps: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes_per_step: int | None = None,
    device: str = "cpu",
    max_tasks: int | None = None,
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation of a run: the return of episode 1, 2, ..., n of trials on the
    tasks of ``split``, the memory starting from zero at each trial (the unit is the
    *episode*: point ``k`` is after ``k`` episodes of adaptation).

    Args:
        num_steps: ``n - 1``; None: the trial length the run was trained with (a longer one
            asks the policy to keep adapting past what it was trained on).
        seeds: one batch of trials per seed; the CI is over (seed, task) pairs as for the
            gradient-based agents.
        episodes_per_step: trials per task and seed whose returns are averaged (default 40
            for 2D navigation, 20 otherwise, as the gradient agents' episodes per step).
        max_tasks: only the first tasks of the split.

    ``env_steps[k]`` counts the steps one trial per task spends to reach episode ``k + 1``,
    summed over the tasks (the other trials only estimate the mean), and ``wall_clock_s[k]``
    the seconds of the first seed's batch, spread evenly over its episodes.
    Writes ``eval_<split>.json`` and ``eval_<split>.png`` in the run directory.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if num_steps is not None and (isinstance(num_steps, bool) or num_steps < 0):
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not seeds:
        raise ValueError("give at least one evaluation seed")
    agent = load_agent(run_dir, device)
    cfg = agent.config
    n = cfg.episodes_per_trial if num_steps is None else num_steps + 1
    trials = episodes_per_step or (40 if "Navigation2D" in cfg.env_id else 20)
    tasks = list(agent.dist.split("test" if split == "test" else "train"))[:max_tasks]
    per_seed = [
        agent.evaluate(
            tasks, trials_per_task=trials, seed=int(s), split=split, episodes_per_trial=n
        )
        for s in seeds
    ]
    first = per_seed[0]
    curve = AdaptationCurve(
        agent=AGENT,
        env_id=cfg.env_id,
        unit="episodes",
        returns=np.stack([c.returns.mean(0) for c in per_seed]),
        success=None
        if first.success is None
        else np.stack([np.asarray(c.success).mean(0) for c in per_seed]),
        env_steps=[steps * len(tasks) for steps in first.env_steps],
        wall_clock_s=list(first.wall_clock_s),
        split=split,
        meta={
            "config": cfg.to_dict(),
            "run_dir": str(run_dir),
            "iterations": agent.iteration,
            "meta_train_env_steps": agent.env_steps,
            "trials_per_task": trials,
            "episodes_per_trial": n,
            "trained_episodes_per_trial": cfg.episodes_per_trial,
            "seeds": list(map(int, seeds)),
        },
    )
    return save_run_curve(curve, run_dir, split)
