"""RL²: a recurrent policy that learns to adapt within a trial (Duan et al. 2016; Wang et al. 2016).

A *trial* is ``n`` episodes on one task. The policy is a GRU whose input at every step is
``(observation, previous action, previous reward, done flag)`` — the done flag is 1 on the
first step of episodes 2..n, where the previous action and reward are those that ended the
previous episode, and everything but the observation is 0 on a trial's first step. The
hidden state runs through all episodes of a trial (that is where the adaptation lives) and
is reset to zero between trials. The meta-objective is the return of the whole trial, so the
policy learns to spend early episodes exploring when that pays later. It is trained with PPO
(Schulman et al. 2017: clipped objective, GAE over the whole trial) on many training tasks at
once: ``B`` trials, one task each, stepped together through the family's batched env
(:class:`metarl.stepping.TensorBatchedEnv`: on-device torch where the family has one, else its
host env with one transfer per step).

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
    >>> run = rl2.train(cfg, "runs/rl2-bandit")   # the one training loop: a run directory
    >>> agent = rl2.load_agent(run.path)
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from metarl.adaptation.policy_gradient import ppo_clip_loss
from metarl.agent import Capabilities
from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    check_episode_eval,
    default_episodes_per_step,
    evaluate_run_by_episodes,
    progress_bar,
)
from metarl.learning.policies import run_gru
from metarl.learning.returns import normalize_advantages, trial_gae
from metarl.numerics import check_finite
from metarl.runs import Run, load_checkpoint_file
from metarl.runs.config import (
    ConfigError,
    RunConfig,
    TrialPPOOptions,
    _check_device,
    num_workers_option,
    option,
    worker_timeout_option,
)
from metarl.runs.training import Generators, Trainer, iteration_range, train_loop
from metarl.stepping import TensorBatchedEnv
from metarl.stepping.registry import family, task_distribution
from metarl.stepping.torch_batched import resolve_device
from metarl.tasks.spaces import FlatEncoder

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

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
    "evaluate_tasks",
    "load_agent",
    "train",
    "trained_policy",
    "trial_gae",
]

#: The name written into (and required of) RL² checkpoints.
AGENT = "rl2"


class _UnknownFamily(ConfigError, KeyError):
    """An unknown ``env_id``: a :class:`ConfigError` that is also the registry's KeyError."""


@dataclass
class RL2Config(TrialPPOOptions, RunConfig):
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
    hidden_size: int = option(128, "GRU hidden units", low=1)
    value_network: str = option(
        "shared",
        "where the value head reads from: shared (the policy's GRU) or separate (a GRU of "
        "its own, as the rllab baseline Duan et al. 2016 trained; the value loss then "
        "does not shape the policy's memory)",
        choices=("shared", "separate"),
    )
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
        try:
            family(self.env_id)
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
#: random MDPs with n episodes of 10 steps; HalfCheetahVel (``halfcheetah-vel``, after the
#: VariBAD reference code's RL² baseline); 2D navigation (``nav2d``, and ``quick``: about a
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
    # HalfCheetahVel after the RL² baseline of the VariBAD reference code
    # (config/mujoco/args_cheetah_vel_rl2.py in github.com/lmzintgraf/varibad; the RL² paper
    # has no MuJoCo experiment): trials of 2 episodes of 200 steps, 16 processes × 800 steps
    # per PPO update (32 trials here), GRU 128, PPO 2 epochs × 4 minibatches, clip 0.1, lr
    # 7e-4, γ 0.97, GAE λ 0.9 (its returns the value target), entropy 0.01; its 1e8 frames are
    # 7,812 iterations. Not reproduced: the reference's MLP layer between the GRU and the
    # heads, and its reward normalisation.
    "halfcheetah-vel": {
        "env_id": "metarl/HalfCheetahVel-v0",
        "episodes_per_trial": 2,
        "num_trials": 32,
        "hidden_size": 128,
        "lr": 7e-4,
        "clip_coef": 0.1,
        "update_epochs": 2,
        "num_minibatches": 4,
        "gamma": 0.97,
        "gae_lambda": 0.9,
        "value_target": "gae",
        "ent_coef": 0.01,
        "num_iterations": 7_812,
        "checkpoint_every": 50,
    },
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
CAPABILITIES = Capabilities(adapts_by="episodes")


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
        self.encode_obs, self.encode_act = FlatEncoder(observation_space), FlatEncoder(action_space)
        self.obs_size, self.act_size = self.encode_obs.size, self.encode_act.size
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
            out, h_last = run_gru(self.gru, x, h, mask)
            return self.pi(out), self.v(out).squeeze(-1), h_last
        n = self.hidden_size
        out, h_pi = run_gru(self.gru, x, h[:, :n], mask)
        v_out, h_v = run_gru(self.v_gru, x, h[:, n:], mask)
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
    env: TensorBatchedEnv,
    tasks: Sequence[Any],
    episodes_per_trial: int,
    seed: int | None,
    generator: torch.Generator | None = None,
    memory: dict[str, Tensor] | None = None,
) -> Trials:
    """Run one trial per task (``len(tasks)`` = the env's rows), the hidden state kept across
    the trial's episodes and starting from zero; returns the :class:`Trials`.

    ``memory``: if given, receives what the policy carries into the trial's next step — the
    hidden state ``"hidden"`` ``(B, state_size)`` and the inputs ``"prev_action"`` (encoded),
    ``"prev_reward"``, ``"done"`` — so a trial can be continued (an adapted policy acts from
    it)."""
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
            obs, reward, term, trunc, info = env.step(action)
            # Checked before the policy sees them (a NaN input fails deep inside torch).
            check_finite("observations or rewards", obs, reward,
                         hint=f"the env {env.env_id} returned them")  # fmt: skip
            done, stepped, success = term | trunc, info["active"], info["is_success"]
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
    if memory is not None:
        memory.update(hidden=h, prev_action=prev_action, prev_reward=prev_reward,
                      done=done_flag)  # fmt: skip
    return Trials(
        **{k: torch.stack(v) for k, v in buf.items()},
        episode_returns=torch.stack(episode_returns),
        episode_success=torch.stack(episode_success) if episode_success else None,
    )


class RL2(Trainer):
    """An RL² agent: the :class:`metarl.runs.training.Trainer` that :func:`train` drives (one PPO
    iteration per :meth:`iteration`), and :meth:`evaluate` on held-out tasks.

    Args:
        config: an :class:`RL2Config` (or a preset from :data:`PRESETS`).

    Attributes:
        iterations: PPO iterations done.
        env_steps: env steps of training so far.
    """

    outer_step = "PPO update"

    def __init__(self, config: RL2Config) -> None:
        self.config = config.validate()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.dist = task_distribution(config.env_id)
        self.train_tasks = self.dist.split("train")
        self.env = self._env(config.num_trials)
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
        self.iterations = 0
        self.env_steps = 0
        self.value_scale = 1.0

    def _env(self, num_trials: int) -> TensorBatchedEnv:
        cfg = self.config
        horizon = cfg.max_episode_steps
        return TensorBatchedEnv(
            cfg.env_id, num_trials, backend=cfg.backend, device=self.device,
            env_kwargs={} if horizon is None else {"max_episode_steps": horizon},
            num_workers=cfg.num_workers, worker_timeout=cfg.worker_timeout,
        )  # fmt: skip

    def _init_policy(self, path: str) -> None:
        state = load_checkpoint_file(_checkpoint_in(path), agent=AGENT, map_location=self.device)
        # A run directory's checkpoint keeps the policy in "state"; a file of the RL² of
        # earlier metarl versions at its top level.
        if "policy" not in state and isinstance(state.get("state"), dict):
            state = state["state"]
        if "policy" not in state:
            raise ValueError(f"init_from {path}: it holds no RL² policy")
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
        if self.iterations == 0:
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
                mb_adv = normalize_advantages(adv[:, mb], m)
                policy_loss, ratio = ppo_clip_loss(
                    logp, trials.log_probs[:, mb], mb_adv, m, n, cfg.clip_coef
                )
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

    def iteration(self, it: int) -> dict[str, float]:
        """PPO iteration ``it`` on ``num_trials`` fresh training tasks; its metrics row (trial
        return, returns of the trial's first and last episodes, losses, env steps, seconds)."""
        cfg = self.config
        self.iterations = it
        start = time.perf_counter()
        idx = self.rng.integers(0, len(self.train_tasks), size=cfg.num_trials)
        tasks = [self.train_tasks[i] for i in idx]
        seed = int(self.rng.integers(2**31))
        trials = collect_trials(
            self.policy, self.env, tasks, cfg.episodes_per_trial, seed, self.generator
        )
        sample_s = time.perf_counter() - start
        losses = self._ppo_update(trials)
        steps = int(trials.mask.sum())
        self.env_steps += steps
        self.iterations = it + 1
        episode_means = trials.episode_returns.mean(1)
        total_s = time.perf_counter() - start
        return {
            "trial_return": float(trials.episode_returns.sum(0).mean()),
            "first_episode_return": float(episode_means[0]),
            "last_episode_return": float(episode_means[-1]),
            **losses,
            "env_steps": steps,
            "env_steps_total": self.env_steps,
            "env_steps_per_s": steps / max(total_s, 1e-9),
            "sample_s": sample_s,
            "update_s": total_s - sample_s,
            "iteration_s": total_s,
        }

    def state(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "env_steps": self.env_steps,
            "value_scale": self.value_scale,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.env_steps = int(state["env_steps"])
        self.value_scale = float(state["value_scale"])

    def generators(self) -> Generators:
        return {"tasks": self.rng, "torch": self.generator}

    def parameters(self) -> Any:
        return list(self.policy.parameters())

    def header(self, start: int, total: int) -> str:
        trial = self.config.episodes_per_trial
        return f"{iteration_range(start, total)}, {trial} episode(s) per trial"

    def progress(self, stats: Mapping[str, float]) -> str:
        return (f"trial return {stats['trial_return']:.2f} (episode 1: "
                f"{stats['first_episode_return']:.2f}, episode {self.config.episodes_per_trial}: "
                f"{stats['last_episode_return']:.2f})")  # fmt: skip

    def close(self) -> None:
        self.env.close()

    # -- evaluation ----------------------------------------------------------------------
    def collect(
        self,
        tasks: Sequence[Any],
        episodes_per_trial: int | None = None,
        seed: int = 1,
        memory: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Trials:
        """One trial of ``episodes_per_trial`` episodes (default: the config's ``n``) on each
        of ``tasks`` (a task repeated gives it more trials), the memory starting from zero,
        in an env of its own; seeded by ``seed``. ``memory``: receives the memory the trials
        end with (see :func:`collect_trials`). ``generator``: draws the actions (default: a
        new one seeded by ``seed``); it is left where the trials end, so that what follows
        (an adapted policy's sampled actions) continues the same stream."""
        n = self.config.episodes_per_trial if episodes_per_trial is None else episodes_per_trial
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"episodes_per_trial must be an integer >= 1, got {n!r}")
        gen = (
            torch.Generator(device=self.device).manual_seed(seed)
            if generator is None
            else generator
        )
        env = self._env(len(tasks))
        try:
            return collect_trials(self.policy, env, tasks, n, seed, gen, memory)
        finally:
            env.close()

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
        n = self.config.episodes_per_trial if episodes_per_trial is None else episodes_per_trial
        start = time.perf_counter()
        trials = self.collect(rows, n, seed)
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
                "iterations": self.iterations,
                "meta_train_env_steps": self.env_steps,
                "trials_per_task": trials_per_task,
            },
        )


def train(
    cfg: RL2Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Meta-train RL² in a run directory through :func:`metarl.runs.training.train_loop`:
    config.json, metrics.csv (one row per PPO iteration: trial return, returns of the trial's
    first and last episodes, losses, env steps, seconds) and checkpoint.pt.

    Args:
        resume: continue ``run_dir`` from its last checkpoint (exactly, on the CPU).
        overwrite: delete ``run_dir`` first if it exists.
        log: where one-line progress messages go (e.g. ``print``); None: silent.
    """
    cfg.validate()

    def make(cfg: RL2Config, device: torch.device, resume: bool) -> RL2:
        # On resume the weights come from the run's own checkpoint, not from init_from
        # (which may be gone).
        return RL2(cfg.replace(init_from=None) if resume else cfg)

    return train_loop(cfg, run_dir, AGENT, make, resume=resume, overwrite=overwrite, log=log)


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
    agent.load_state(payload["state"])
    agent.iterations = int(payload["iteration"])
    return agent


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation of a run (:class:`metarl.evaluation.EvalSettings`: ``settings``
    and/or its fields by name; no ``lrs``): the return of episode 1, 2, ..., n of trials on
    the tasks of the split, the memory starting from zero at each trial (the unit is the
    *episode*: point ``k`` is after ``k`` episodes of adaptation).

    ``num_steps`` is ``n - 1`` (None: the trial length the run was trained with; a longer
    one asks the policy to keep adapting past what it was trained on); each seed is one batch
    of trials, the CI over (seed, task) pairs as for the gradient-based agents;
    ``episodes_per_step`` trials per task and seed are averaged.

    ``env_steps[k]`` counts the steps one trial per task spends to reach episode ``k + 1``,
    summed over the tasks (the other trials only estimate the mean), and ``wall_clock_s[k]``
    the seconds of the first seed's batch, spread evenly over its episodes.
    Writes ``eval_<split>.json`` and ``eval_<split>.png`` in the run directory.
    """
    return evaluate_run_by_episodes(
        run_dir, settings, overrides, agent=AGENT, load_agent=load_agent,
        evaluate_tasks=evaluate_tasks,
    )  # fmt: skip


def evaluate_tasks(
    agent: RL2,
    tasks: Sequence[Any],
    *,
    split: str = "test",
    num_steps: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes_per_step: int | None = None,
) -> AdaptationCurve:
    """:func:`evaluate`'s curve on ``tasks`` (``split`` only recorded), written nowhere."""
    check_episode_eval(num_steps, seeds, tasks)
    cfg = agent.config
    n = cfg.episodes_per_trial if num_steps is None else num_steps + 1
    trials = episodes_per_step or default_episodes_per_step(cfg.env_id)
    per_seed = []
    with progress_bar(len(seeds), f"{AGENT}: {len(tasks)} tasks", "seed") as bar:
        for seed in seeds:
            per_seed.append(agent.evaluate(tasks, trials_per_task=trials, seed=seed, split=split,
                                           episodes_per_trial=n))  # fmt: skip
            bar.update()
    first = per_seed[0]
    return AdaptationCurve(
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
            "iterations": agent.iterations,
            "meta_train_env_steps": agent.env_steps,
            "trials_per_task": trials,
            "episodes_per_trial": n,
            "trained_episodes_per_trial": cfg.episodes_per_trial,
            "seeds": list(map(int, seeds)),
        },
    )


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: it adapts by running episodes of the task,
    its memory carried through them; ``evaluate`` is :func:`evaluate`'s curve."""
    from metarl.agents.trained import RecurrentTrainedPolicy

    return RecurrentTrainedPolicy(load_agent(run_dir, device), evaluate_tasks)
