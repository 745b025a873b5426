"""VariBAD: a belief over the task, learnt as a VAE, fed to a PPO policy (Zintgraf et al. 2020).

A *trial* (the paper's BAMDP episode) is ``n`` episodes on one task. A recurrent encoder (a
GRU over embedded ``(action, reward, next observation)`` transitions) gives at every step
``t`` a Gaussian posterior ``q(m | τ:t) = N(μ_t, diag σ_t²)`` over a task embedding ``m``;
``t = 0`` (nothing seen yet) is the prior, the encoder's output from an empty memory. The
encoder's memory runs through all episodes of a trial and starts blank at every trial.

* **The VAE** (encoder + a reward decoder ``p(r | m, s, a, s')`` and, with
  ``--decode-state``, a state decoder ``p(s' | m, s, a)``) is trained on trials drawn from a
  buffer of recent ones, with its own Adam optimiser. For a trial of ``T`` steps its loss is
  the negative ELBO of *every* belief of the trajectory so far, each decoding the whole
  trial (past and future transitions):

      Σ_{t=0..T} [ Σ_{j<T} −log p(r_j | m_t ~ q(·|τ:t), s_j, a_j, s'_j)
                   + kl_weight · KL(q(·|τ:t) ‖ q(·|τ:t−1)) ],     q(·|τ:−1) = N(0, I),

  (Zintgraf et al. 2020, Sec. 4, with the KL to the previous posterior); the rewards'
  log-likelihood is Gaussian with unit variance (a squared error). ``--vae-subsample-elbos``
  and ``--vae-subsample-decodes`` draw that many beliefs and decoded steps per update, as
  the reference code does for the MuJoCo trials of 400 steps.
* **The policy** ``π(a | s, μ_t, log σ_t²)`` and a value function of the same input are
  trained with PPO (clipped objective, GAE over the whole trial: the return of the trial
  is the objective, so exploring early pays when it helps later). By default the policy's
  loss does not reach the encoder (the beliefs are inputs the VAE alone shapes, the paper's
  default); ``--policy-through-encoder`` lets the PPO gradient into the encoder too.

Evaluation follows the one protocol (:class:`metarl.evaluation.AdaptationCurve`): the unit is
the episode, as for RL²; the curve holds the return of episodes 1, 2, ..., n of trials on
held-out tasks, the belief starting at the prior in every trial.

Deviations from the paper: the reward likelihood is a unit-variance Gaussian on every family
(the reference code decodes the gridworld's reward as a Bernoulli per cell); the encoder's
input is the transition's ``(a, r, s')`` with the true last observation of an episode (not
the next episode's first); the value head's targets are scaled by a running spread of the
returns (as this project's RL²) instead of normalised rewards. Hyperparameters in
:data:`PRESETS`, where the notes say which are recalled from the reference code.

Example:
    >>> from metarl.agents import varibad
    >>> cfg = varibad.VariBADConfig.from_preset("quick", num_iterations=2)
    >>> run = varibad.train(cfg, "runs/varibad-grid")   # doctest: +SKIP
    >>> curve, _, _ = varibad.evaluate(run.path, seeds=(0,))  # doctest: +SKIP
    >>> curve.returns.shape   # (seeds, held-out tasks, episodes of a trial)  # doctest: +SKIP
    (1, 5, 4)

References:
    Zintgraf, Shiarlis, Igl, Schulze, Gal, Hofmann, Whiteson 2020, "VariBAD: A Very Good
    Method for Bayes-Adaptive Deep RL via Meta-Learning", ICLR 2020.
    Schulman, Wolski, Dhariwal, Radford, Klimov 2017, "Proximal Policy Optimization
    Algorithms"; Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation".
"""

from __future__ import annotations

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
    curve_by_episodes,
    evaluate_run_by_episodes,
)
from metarl.learning.policies import Policy, make_policy, run_gru
from metarl.learning.returns import normalize_advantages, trial_gae
from metarl.numerics import check_finite
from metarl.runs import Run, load_checkpoint_file
from metarl.runs.config import (
    ConfigError,
    EnvOptions,
    PolicyOptions,
    ReturnOptions,
    RunConfig,
    TrialPPOOptions,
    _check_device,
    option,
    option_of,
)
from metarl.runs.training import Generators, Trainer, train_loop
from metarl.stepping import TensorBatchedEnv
from metarl.stepping.registry import family, task_distribution
from metarl.stepping.torch_batched import resolve_device
from metarl.tasks.spaces import FlatEncoder

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "AGENT",
    "CAPABILITIES",
    "CONFIG",
    "PRESETS",
    "BeliefPolicy",
    "Trials",
    "VariBAD",
    "VariBADConfig",
    "VariBADEncoder",
    "collect_trials",
    "elbo_loss",
    "evaluate",
    "evaluate_tasks",
    "load_agent",
    "train",
    "trained_policy",
]

#: The name written into (and required of) VariBAD checkpoints.
AGENT = "varibad"


class _UnknownFamily(ConfigError, KeyError):
    """An unknown ``env_id``: a :class:`ConfigError` that is also the registry's KeyError."""


@dataclass
class VariBADConfig(TrialPPOOptions, PolicyOptions, ReturnOptions, EnvOptions, RunConfig):
    """Settings of a VariBAD run; :attr:`presets` holds the paper's settings and ``quick``."""

    env_id: str = option(
        "metarl/GridNavigation-v0",
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
        4, "n: episodes per trial (the BAMDP's horizon is n episodes of one task)", low=1
    )
    num_trials: int = option_of(TrialPPOOptions, "num_trials", 16)
    backend: str = option(
        "auto",
        "batched env: auto (torch env when the family has one), torch, numpy, or subprocess "
        "(envs in worker processes with a timeout)",
        choices=("auto", "torch", "numpy", "subprocess"),
    )
    # -- the policy (PPO) ------------------------------------------------------------------
    lr: float = option_of(TrialPPOOptions, "lr", 7e-4)
    clip_coef: float = option_of(TrialPPOOptions, "clip_coef", 0.1)
    update_epochs: int = option_of(TrialPPOOptions, "update_epochs", 2)
    policy_through_encoder: bool = option(
        False,
        "let the PPO loss's gradient into the encoder (the paper's default keeps it out: the "
        "VAE alone shapes the belief)",
    )
    # -- the VAE ---------------------------------------------------------------------------
    latent_dim: int = option(5, "size of the task embedding m (the belief is its mean and "
                             "log-variance)", low=1)  # fmt: skip
    encoder_hidden: int = option(64, "encoder GRU hidden units", low=1)
    state_embed: int = option(8, "encoder's observation embedding width", low=1)
    action_embed: int = option(8, "encoder's action embedding width", low=1)
    reward_embed: int = option(8, "encoder's reward embedding width", low=1)
    decoder_hidden: tuple[int, ...] = option((32, 32), "decoder MLP hidden widths", low=1)
    decode_state: bool = option(
        False, "also decode the next observation from (m, s, a) (the paper's option)"
    )
    lr_vae: float = option(1e-3, "Adam learning rate of the VAE", low=0.0, low_open=True)
    kl_weight: float = option(1.0, "weight of the KL terms of the ELBO", low=0.0)
    state_loss_coef: float = option(1.0, "weight of the state reconstruction", low=0.0)
    num_vae_updates: int = option(3, "VAE updates per iteration", low=0)
    vae_batch_num_trajs: int = option(25, "trials per VAE update, drawn from the buffer", low=1)
    vae_buffer_size: int = option(1000, "trials the VAE's buffer keeps (the most recent)", low=1)
    vae_subsample_elbos: int = option(
        0, "beliefs whose ELBO terms one update takes, drawn at random; 0: every one", low=0
    )
    vae_subsample_decodes: int = option(
        0, "transitions each belief decodes in one update, drawn at random; 0: all", low=0
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below

    def validate(self) -> VariBADConfig:  # type: ignore[override]
        """Raise :class:`ConfigError` (a ValueError) naming the setting for any value of the
        wrong type or range; returns the config."""
        super().validate()
        try:
            family(self.env_id)
        except KeyError as e:
            msg = e.args[0] if e.args else str(e)
            raise _UnknownFamily(f"VariBADConfig.env_id (--env-id): {msg}") from None
        return self


# The reference code's settings, as recalled (its args_*_varibad.py files; not checked
# against them here): gridworld: 4 episodes of 15 steps per trial, 16 processes, latent 5,
# GRU 64, embeddings 8, reward decoder (32, 32), VAE lr 1e-3 with 3 updates on 25 trials,
# policy lr 7e-4, γ 0.95, λ 0.95, entropy 0.1 (the policy there is A2C; PPO here).
# MuJoCo (HalfCheetahDir/Vel, AntDir): 2 episodes of 200 steps, 16 processes, PPO with 2
# epochs × 4 minibatches and clip 0.1, lr 7e-4, policy (128, 128) tanh, γ 0.97, λ 0.9,
# entropy 0.01, latent 5, GRU 128, embeddings 32/16/16, decoder (64, 32), VAE 3 updates on
# 10 trials with 50 beliefs × 50 decodes, KL weight 0.1, 1e8 frames. Guessed here: the
# gridworld's PPO epochs and minibatches and its KL weight (0.1: with 1.0 the posterior
# stayed at the prior, KL ≈ 2 nats over a trial, through 100 iterations of a trial run),
# the buffers' sizes in trials, the gridworld's iteration count.
_GRID: dict[str, Any] = {
    "env_id": "metarl/GridNavigation-v0",
    "episodes_per_trial": 4,
    "num_trials": 16,
    "hidden_sizes": (32, 32),
    "nonlinearity": "tanh",
    "gamma": 0.95,
    "gae_lambda": 0.95,
    "ent_coef": 0.1,
    "update_epochs": 4,
    "num_minibatches": 4,
    "latent_dim": 5,
    "encoder_hidden": 64,
    "decoder_hidden": (32, 32),
    "kl_weight": 0.1,
    "vae_batch_num_trajs": 25,
}
# A minute or two on one CPU thread: twice the trials per iteration, a larger policy step and
# less entropy bonus than the reference's gridworld, and 16 beliefs × 16 decoded transitions
# per VAE update (of 61 × 60).
_QUICK: dict[str, Any] = {
    **_GRID,
    "num_trials": 32,
    "lr": 2e-3,
    "ent_coef": 0.01,
    "vae_subsample_elbos": 16,
    "vae_subsample_decodes": 16,
}
_MUJOCO: dict[str, Any] = {
    "episodes_per_trial": 2,
    "num_trials": 16,
    "hidden_sizes": (128, 128),
    "nonlinearity": "tanh",
    "init_std": 1.0,
    "gamma": 0.97,
    "gae_lambda": 0.9,
    "lr": 7e-4,
    "clip_coef": 0.1,
    "update_epochs": 2,
    "num_minibatches": 4,
    "ent_coef": 0.01,
    "latent_dim": 5,
    "encoder_hidden": 128,
    "state_embed": 32,
    "action_embed": 16,
    "reward_embed": 16,
    "decoder_hidden": (64, 32),
    "kl_weight": 0.1,
    "vae_batch_num_trajs": 10,
    "vae_buffer_size": 1000,
    "vae_subsample_elbos": 50,
    "vae_subsample_decodes": 50,
    # 1e8 frames / (16 trials × 400 steps) (the paper's budget; days on a CPU)
    "num_iterations": 15_625,
    "checkpoint_every": 50,
}

#: The paper's settings (Zintgraf et al. 2020, Sec. 5 and App. C): the 5×5 gridworld
#: (``grid``) and the MuJoCo families; ``quick``: the gridworld in a minute or two on one
#: CPU thread (see ``_QUICK``; trials and networks as ``grid``).
VariBADConfig.presets = {
    "grid": {**_GRID, "num_iterations": 2000, "checkpoint_every": 50},
    "quick": {**_QUICK, "num_iterations": 250, "checkpoint_every": 50},
    "halfcheetah-dir": {**_MUJOCO, "env_id": "metarl/HalfCheetahDir-v0"},
    "halfcheetah-vel": {**_MUJOCO, "env_id": "metarl/HalfCheetahVel-v0"},
    "ant-dir": {**_MUJOCO, "env_id": "metarl/AntDir-v0"},
}

#: The presets as configs (``PRESETS["grid"]``), for Python use.
PRESETS: dict[str, VariBADConfig] = {
    name: VariBADConfig.from_preset(name) for name in VariBADConfig.presets
}

#: The agent registry's config class (``metarl train --agent varibad``).
CONFIG = VariBADConfig
CAPABILITIES = Capabilities(adapts_by="episodes")


def _mlp(inputs: int, hidden: Sequence[int], outputs: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inputs, h), act()]
        inputs = h
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


class VariBADEncoder(nn.Module):
    """The recurrent encoder: ``(a, r, s')`` transitions -> Gaussian beliefs ``(μ, log σ²)``.

    ``prior(B)`` is the belief before any transition (the output of an empty memory);
    ``step`` takes one transition of every row; ``beliefs`` a whole trial.
    """

    def __init__(self, obs_size: int, act_size: int, cfg: VariBADConfig) -> None:
        super().__init__()
        self.latent_dim, self.hidden_size = cfg.latent_dim, cfg.encoder_hidden
        self.embed_state = nn.Sequential(nn.Linear(obs_size, cfg.state_embed), nn.ReLU())
        self.embed_action = nn.Sequential(nn.Linear(act_size, cfg.action_embed), nn.ReLU())
        self.embed_reward = nn.Sequential(nn.Linear(1, cfg.reward_embed), nn.ReLU())
        width = cfg.state_embed + cfg.action_embed + cfg.reward_embed
        self.gru = nn.GRU(width, cfg.encoder_hidden)
        self.mu = nn.Linear(cfg.encoder_hidden, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.encoder_hidden, cfg.latent_dim)

    def _embed(self, action: Tensor, reward: Tensor, next_obs: Tensor) -> Tensor:
        return torch.cat([self.embed_action(action), self.embed_reward(reward[..., None]),
                          self.embed_state(next_obs)], -1)  # fmt: skip

    def head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The belief ``(μ, log σ²)`` read from memory ``h`` ``(..., hidden)``."""
        return self.mu(h), self.logvar(h)

    def prior(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(μ, log σ², memory) before any transition, ``(B, latent)`` and ``(B, hidden)``."""
        h = torch.zeros(batch, self.hidden_size, device=device)
        return (*self.head(h), h)

    def step(
        self, action: Tensor, reward: Tensor, next_obs: Tensor, h: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One transition of every row (``(B, ...)``, the action encoded): (μ, log σ², h)."""
        out, h_new = self.gru(self._embed(action, reward, next_obs)[None], h[None])
        return (*self.head(out[0]), h_new[0])

    def beliefs(
        self, actions: Tensor, rewards: Tensor, next_obs: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Every belief of ``B`` trials of ``T`` steps, the prior first: ``(T + 1, B,
        latent)`` means and log-variances. Where ``mask`` is 0 (a row waiting for the others
        to end their episode) the belief is carried unchanged."""
        batch = rewards.shape[1]
        h0 = torch.zeros(batch, self.hidden_size, device=rewards.device)
        out, _ = run_gru(self.gru, self._embed(actions, rewards, next_obs), h0, mask)
        # run_gru's output is 0 where masked: carry the last live memory through instead.
        hs = [h0]
        for t in range(out.shape[0]):
            hs.append(torch.where(mask[t, :, None] > 0, out[t], hs[-1]))
        return self.head(torch.stack(hs))


class Trials(NamedTuple):
    """``B`` trials of ``T = n × horizon`` steps, time-major.

    ``obs``, ``next_obs`` ``(T, B, obs_size)`` encoded; ``beliefs`` ``(T, B, 2 × latent)``
    the belief ``(μ, log σ²)`` the policy acted on; ``actions`` ``(T, B[, A])`` and
    ``enc_actions`` ``(T, B, act_size)``; ``log_probs``, ``values``, ``rewards``, ``mask``
    ``(T, B)``; ``episode_returns`` ``(n, B)``; ``episode_success`` ``(n, B)`` or None.
    """

    obs: Tensor
    next_obs: Tensor
    beliefs: Tensor
    actions: Tensor
    enc_actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    mask: Tensor
    episode_returns: Tensor
    episode_success: Tensor | None = None


class BeliefPolicy(Policy):
    """VariBAD's policy with its belief held fixed: ``obs -> π(· | obs, belief)``; what an
    adapted policy acts (and is exported) with."""

    belief: Tensor

    def __init__(self, policy: Policy, encode_obs: FlatEncoder, belief: Tensor) -> None:
        super().__init__()
        self.policy, self.encode_obs = policy, encode_obs
        self.register_buffer("belief", belief[:1].detach().clone())

    def forward(self, obs: Tensor) -> tuple[Tensor, ...]:
        x = self.encode_obs(obs)
        return self.policy(torch.cat([x, self.belief.expand(x.shape[0], -1)], -1))

    def sample(self, dist: tuple[Tensor, ...], generator: torch.Generator | None = None) -> Tensor:
        return self.policy.sample(dist, generator)

    def mode(self, dist: tuple[Tensor, ...]) -> Tensor:
        return self.policy.mode(dist)

    def log_prob(self, dist: tuple[Tensor, ...], actions: Tensor) -> Tensor:
        return self.policy.log_prob(dist, actions)

    def entropy(self, dist: tuple[Tensor, ...]) -> Tensor:
        return self.policy.entropy(dist)


@torch.no_grad()
def collect_trials(
    agent: VariBAD,
    env: TensorBatchedEnv,
    tasks: Sequence[Any],
    episodes_per_trial: int,
    seed: int | None,
    generator: torch.Generator | None = None,
    memory: dict[str, Tensor] | None = None,
) -> Trials:
    """Run one trial per task (``len(tasks)`` = the env's rows): the belief starts at the
    prior and is updated after every step, across the trial's episodes.

    ``memory``: if given, receives the belief ``"belief"`` ``(B, 2 × latent)`` the trials end
    with (an adapted policy acts from it)."""
    device = env.device
    batch = len(tasks)
    enc, policy, value = agent.encoder, agent.policy, agent.value
    mu, logvar, h = enc.prior(batch, device)
    buf: dict[str, list[Tensor]] = {k: [] for k in Trials._fields[:9]}
    episode_returns, episode_success = [], []
    for episode in range(episodes_per_trial):
        obs = agent.encode_obs(env.reset(tasks, seed=None if seed is None or episode else seed))
        ep_return = torch.zeros(batch, device=device)
        ep_success: Tensor | None = None
        for _ in range(env.horizon):
            belief = torch.cat([mu, logvar], -1)
            x = torch.cat([obs, belief], -1)
            dist = policy(x)
            action = policy.sample(dist, generator)
            raw_next, reward, term, trunc, info = env.step(action)
            check_finite("observations or rewards", raw_next, reward,
                         hint=f"the env {env.env_id} returned them")  # fmt: skip
            next_obs = agent.encode_obs(raw_next)
            done, stepped, success = term | trunc, info["active"], info["is_success"]
            m = stepped.float()
            reward = reward.float() * m
            if success is not None:
                hit = success.bool() & stepped
                ep_success = hit if ep_success is None else ep_success | hit
            enc_action = agent.encode_act(action)
            for key, val in (
                ("obs", obs), ("next_obs", next_obs), ("beliefs", belief), ("actions", action),
                ("enc_actions", enc_action), ("log_probs", policy.log_prob(dist, action)),
                ("values", value(x).squeeze(-1)), ("rewards", reward), ("mask", m),
            ):  # fmt: skip
                buf[key].append(val)
            mu2, logvar2, h2 = enc.step(enc_action, reward, next_obs, h)
            keep = stepped[:, None]
            mu, logvar, h = (torch.where(keep, mu2, mu), torch.where(keep, logvar2, logvar),
                             torch.where(keep, h2, h))  # fmt: skip
            obs = next_obs
            ep_return += reward
            if not bool((stepped & ~done).any()):
                break
        episode_returns.append(ep_return)
        if ep_success is not None:
            episode_success.append(ep_success.float())
    if memory is not None:
        memory["belief"] = torch.cat([mu, logvar], -1)
    return Trials(
        **{k: torch.stack(v) for k, v in buf.items()},
        episode_returns=torch.stack(episode_returns),
        episode_success=torch.stack(episode_success) if episode_success else None,
    )


def _gauss_kl(mu: Tensor, logvar: Tensor, mu0: Tensor, logvar0: Tensor) -> Tensor:
    """KL(N(μ, e^logvar) ‖ N(μ0, e^logvar0)) per row, summed over the latent dimension."""
    return 0.5 * (logvar0 - logvar + (logvar.exp() + (mu - mu0) ** 2) / logvar0.exp() - 1).sum(-1)


def elbo_loss(
    encoder: VariBADEncoder,
    reward_decoder: nn.Module,
    state_decoder: nn.Module | None,
    batch: Mapping[str, Tensor],
    cfg: VariBADConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, dict[str, float]]:
    """The negative ELBO of every belief of ``b`` trials (see the module doc), summed over
    beliefs and decoded transitions, averaged over the trials; with its parts.

    ``batch``: ``obs``, ``next_obs`` ``(T, b, obs)``, ``actions`` ``(T, b, act)``
    (encoded), ``rewards``, ``mask`` ``(T, b)``."""
    obs, nxt, act = batch["obs"], batch["next_obs"], batch["actions"]
    rew, mask = batch["rewards"], batch["mask"]
    steps, b = rew.shape
    device = rew.device
    mu, logvar = encoder.beliefs(act, rew, nxt, mask)  # (T + 1, b, L)
    # The KL of each belief to the one before it; the prior's to N(0, I).
    prev_mu = torch.cat([torch.zeros_like(mu[:1]), mu[:-1]])
    prev_logvar = torch.cat([torch.zeros_like(logvar[:1]), logvar[:-1]])
    kl = _gauss_kl(mu, logvar, prev_mu, prev_logvar)  # (T + 1, b)
    # Belief t exists where transition t - 1 happened (the prior always).
    live = torch.cat([torch.ones_like(mask[:1]), mask])  # (T + 1, b)
    elbos = torch.arange(steps + 1, device=device)
    if cfg.vae_subsample_elbos and cfg.vae_subsample_elbos < steps + 1:
        pick = torch.randperm(steps + 1, generator=generator, device=device)
        elbos = pick[: cfg.vae_subsample_elbos].sort().values
    decodes = torch.arange(steps, device=device)
    if cfg.vae_subsample_decodes and cfg.vae_subsample_decodes < steps:
        pick = torch.randperm(steps, generator=generator, device=device)
        decodes = pick[: cfg.vae_subsample_decodes].sort().values
    e, d = len(elbos), len(decodes)
    noise = torch.randn((e, b, mu.shape[-1]), generator=generator, device=device)
    z = mu[elbos] + (0.5 * logvar[elbos]).exp() * noise  # (E, b, L)
    zz = z[:, None].expand(e, d, b, z.shape[-1])
    s, a, s2 = (t[decodes][None].expand(e, *t[decodes].shape) for t in (obs, act, nxt))
    weight = live[elbos][:, None] * mask[decodes][None]  # (E, D, b)
    pred = reward_decoder(torch.cat([zz, s, a, s2], -1)).squeeze(-1)
    rew_loss = (((pred - rew[decodes][None]) ** 2) * weight).sum() / b
    kl_loss = (kl * live).sum() / b
    loss = rew_loss + cfg.kl_weight * kl_loss
    parts = {"vae_reward_loss": rew_loss.item(), "vae_kl": kl_loss.item()}
    if state_decoder is not None:
        pred_s = state_decoder(torch.cat([zz, s, a], -1))
        state_loss = ((((pred_s - s2) ** 2).sum(-1)) * weight).sum() / b
        loss = loss + cfg.state_loss_coef * state_loss
        parts["vae_state_loss"] = state_loss.item()
    return loss, parts


class VariBAD(Trainer):
    """A VariBAD agent: the :class:`metarl.runs.training.Trainer` that :func:`train` drives (one
    PPO iteration and ``num_vae_updates`` VAE updates per :meth:`iteration`), and
    :meth:`evaluate` on held-out tasks.

    Args:
        config: a :class:`VariBADConfig` (or a preset from :data:`PRESETS`).

    Attributes:
        iterations: iterations done; env_steps: env steps of training so far.
    """

    outer_step = "PPO and VAE updates"

    def __init__(self, config: VariBADConfig) -> None:
        self.config = cfg = config.validate()
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.dist = task_distribution(cfg.env_id)
        self.train_tasks = self.dist.split("train")
        self.env = self._env(cfg.num_trials)
        obs_space, act_space = self.env.observation_space, self.env.action_space
        self.encode_obs, self.encode_act = FlatEncoder(obs_space), FlatEncoder(act_space)
        self.obs_size, self.act_size = self.encode_obs.size, self.encode_act.size
        belief = 2 * cfg.latent_dim
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[cfg.nonlinearity]
        policy_in = gym.spaces.Box(-np.inf, np.inf, (self.obs_size + belief,), np.float32)
        self.policy: Policy = make_policy(
            policy_in, act_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std
        ).to(self.device)
        self.value = _mlp(self.obs_size + belief, cfg.hidden_sizes, 1, act).to(self.device)
        self.encoder = VariBADEncoder(self.obs_size, self.act_size, cfg).to(self.device)
        dec_in = cfg.latent_dim + 2 * self.obs_size + self.act_size
        self.reward_decoder = _mlp(dec_in, cfg.decoder_hidden, 1, nn.ReLU).to(self.device)
        self.state_decoder = (
            _mlp(
                cfg.latent_dim + self.obs_size + self.act_size,
                cfg.decoder_hidden,
                self.obs_size,
                nn.ReLU,
            ).to(self.device)
            if cfg.decode_state
            else None
        )
        rl_params = [*self.policy.parameters(), *self.value.parameters()]
        if cfg.policy_through_encoder:
            rl_params += list(self.encoder.parameters())
        self.optimizer = torch.optim.Adam(rl_params, lr=cfg.lr, eps=1e-5)
        self.vae_optimizer = torch.optim.Adam(self._vae_parameters(), lr=cfg.lr_vae)
        self.rng = np.random.default_rng([cfg.seed, 0xBAD])
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.iterations = 0
        self.env_steps = 0
        self.value_scale = 1.0
        self.buffer: dict[str, Tensor] = {}
        self.buffer_size = 0
        self.buffer_pos = 0

    def _vae_parameters(self) -> list[nn.Parameter]:
        modules = [self.encoder, self.reward_decoder, self.state_decoder]
        return [p for m in modules if m is not None for p in m.parameters()]

    def _env(self, num_trials: int) -> TensorBatchedEnv:
        cfg = self.config
        return TensorBatchedEnv(
            cfg.env_id, num_trials, backend=cfg.backend, device=self.device,
            env_kwargs=cfg.env_kwargs(), num_workers=cfg.num_workers,
            worker_timeout=cfg.worker_timeout,
        )  # fmt: skip

    # -- the VAE's buffer of recent trials ------------------------------------------------
    def _store(self, trials: Trials) -> None:
        """Keep the trials' transitions, trial-major, the oldest overwritten first."""
        cfg = self.config
        new = {"obs": trials.obs, "next_obs": trials.next_obs, "actions": trials.enc_actions,
               "rewards": trials.rewards, "mask": trials.mask}  # fmt: skip
        new = {k: v.transpose(0, 1) for k, v in new.items()}  # (B, T, ...)
        steps = cfg.episodes_per_trial * self.env.horizon  # the longest a trial can be
        if not self.buffer:
            self.buffer = {
                k: torch.zeros(
                    (cfg.vae_buffer_size, steps, *v.shape[2:]), dtype=v.dtype, device=self.device
                )
                for k, v in new.items()
            }
        for k, v in new.items():  # a trial cut short (every row terminated early) is padded
            if v.shape[1] < steps:
                pad = torch.zeros((v.shape[0], steps - v.shape[1], *v.shape[2:]), dtype=v.dtype,
                                  device=v.device)  # fmt: skip
                new[k] = torch.cat([v, pad], 1)
        count = trials.mask.shape[1]
        idx = (self.buffer_pos + torch.arange(count, device=self.device)) % cfg.vae_buffer_size
        for k in new:
            self.buffer[k][idx] = new[k]
        self.buffer_pos = int((self.buffer_pos + count) % cfg.vae_buffer_size)
        self.buffer_size = min(self.buffer_size + count, cfg.vae_buffer_size)

    def _vae_update(self) -> dict[str, float]:
        cfg = self.config
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.num_vae_updates):
            n = min(cfg.vae_batch_num_trajs, self.buffer_size)
            idx = torch.randint(self.buffer_size, (n,), generator=self.generator,
                                device=self.device)  # fmt: skip
            batch = {k: v[idx].transpose(0, 1) for k, v in self.buffer.items()}
            loss, parts = elbo_loss(self.encoder, self.reward_decoder, self.state_decoder,
                                    batch, cfg, self.generator)  # fmt: skip
            self.vae_optimizer.zero_grad()
            loss.backward()
            check_finite("VAE loss", loss, hint="lower --lr-vae or check the env's rewards")
            check_finite("VAE gradients", [p.grad for p in self._vae_parameters()
                                           if p.grad is not None])  # fmt: skip
            self.vae_optimizer.step()
            for k, v in {"vae_loss": loss.item(), **parts}.items():
                stats.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in stats.items()}

    # -- PPO -------------------------------------------------------------------------------
    def _ppo_update(self, trials: Trials) -> dict[str, float]:
        cfg = self.config
        # The value predicts returns in units of ``value_scale``, a running spread of the
        # returns (as RL² here): trial returns reach hundreds on MuJoCo.
        values = trials.values * self.value_scale
        adv = trial_gae(trials.rewards, values, trials.mask, cfg.gamma, cfg.gae_lambda)
        returns = adv + values
        live = trials.mask > 0
        spread = float(returns[live].std()) if int(live.sum()) > 1 else 1.0
        if self.iterations == 0:
            self.value_scale = max(spread, 1e-3)
        else:
            self.value_scale = max(0.95 * self.value_scale + 0.05 * spread, 1e-3)
        targets = returns / self.value_scale
        batch = trials.rewards.shape[1]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [],
                                         "clip_frac": []}  # fmt: skip
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(batch, generator=self.generator, device=self.device)
            for mb in perm.view(cfg.num_minibatches, -1):
                m = trials.mask[:, mb]
                beliefs = trials.beliefs[:, mb]
                if cfg.policy_through_encoder:  # the beliefs again, with the encoder's graph
                    mu, logvar = self.encoder.beliefs(
                        trials.enc_actions[:, mb], trials.rewards[:, mb],
                        trials.next_obs[:, mb], m,
                    )  # fmt: skip
                    beliefs = torch.cat([mu, logvar], -1)[:-1]
                x = torch.cat([trials.obs[:, mb], beliefs], -1)
                dist = self.policy(x)
                logp = self.policy.log_prob(dist, trials.actions[:, mb])
                n = m.sum().clamp_min(1.0)
                mb_adv = normalize_advantages(adv[:, mb], m)
                policy_loss, ratio = ppo_clip_loss(
                    logp, trials.log_probs[:, mb], mb_adv, m, n, cfg.clip_coef
                )
                value_loss = (
                    0.5 * (((self.value(x).squeeze(-1) - targets[:, mb]) ** 2) * m).sum() / n
                )
                entropy = (self.policy.entropy(dist) * m).sum() / n
                loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                check_finite("PPO loss", loss, hint="lower --lr or check the env's rewards")
                check_finite("gradients", [p.grad for p in params if p.grad is not None])
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                stats["policy_loss"].append(policy_loss.item())
                stats["value_loss"].append(value_loss.item())
                stats["entropy"].append(entropy.item())
                clipped = ((ratio - 1).abs() > cfg.clip_coef).float()
                stats["clip_frac"].append(((clipped * m).sum() / n).item())
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def iteration(self, it: int) -> dict[str, float]:
        """Iteration ``it`` on ``num_trials`` fresh training tasks: collect trials, store them
        in the VAE's buffer, the PPO update, then the VAE updates; the metrics row."""
        cfg = self.config
        self.iterations = it
        start = time.perf_counter()
        idx = self.rng.integers(0, len(self.train_tasks), size=cfg.num_trials)
        tasks = [self.train_tasks[i] for i in idx]
        seed = int(self.rng.integers(2**31))
        trials = collect_trials(self, self.env, tasks, cfg.episodes_per_trial, seed,
                                self.generator)  # fmt: skip
        sample_s = time.perf_counter() - start
        self._store(trials)
        losses = self._ppo_update(trials)
        vae_start = time.perf_counter()
        vae = self._vae_update()
        vae_s = time.perf_counter() - vae_start
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
            **vae,
            "env_steps": steps,
            "env_steps_total": self.env_steps,
            "env_steps_per_s": steps / max(total_s, 1e-9),
            "sample_s": sample_s,
            "update_s": total_s - sample_s,
            "vae_s": vae_s,
            "iteration_s": total_s,
        }

    def _modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"policy": self.policy, "value": self.value,
                                      "encoder": self.encoder,
                                      "reward_decoder": self.reward_decoder}  # fmt: skip
        if self.state_decoder is not None:
            mods["state_decoder"] = self.state_decoder
        return mods

    def state(self) -> dict[str, Any]:
        size = self.buffer_size
        return {
            **{k: m.state_dict() for k, m in self._modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "env_steps": self.env_steps,
            "value_scale": self.value_scale,
            # Only the filled part of the buffer (its capacity is the config's).
            "buffer": {k: v[:size].clone() for k, v in self.buffer.items()},
            "buffer_pos": self.buffer_pos,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.env_steps = int(state["env_steps"])
        self.value_scale = float(state["value_scale"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        saved = state.get("buffer") or {}
        self.buffer, self.buffer_size = {}, 0
        if saved:
            size = int(next(iter(saved.values())).shape[0])
            self.buffer = {
                k: torch.zeros(
                    (self.config.vae_buffer_size, *v.shape[1:]), dtype=v.dtype, device=self.device
                )
                for k, v in saved.items()
            }
            for k, v in saved.items():
                self.buffer[k][:size] = v.to(self.device)
            self.buffer_size = size
        self.buffer_pos = int(state.get("buffer_pos", 0))

    def generators(self) -> Generators:
        return {"tasks": self.rng, "torch": self.generator}

    def parameters(self) -> Any:
        return [p for m in self._modules().values() for p in m.parameters()]

    def header(self, start: int, total: int) -> str:
        return f"iterations {start}..{total}, {self.config.episodes_per_trial} episode(s) per trial"

    def progress(self, stats: Mapping[str, float]) -> str:
        n = self.config.episodes_per_trial
        return (
            f"trial return {stats['trial_return']:.2f} (episode 1: "
            f"{stats['first_episode_return']:.2f}, episode {n}: "
            f"{stats['last_episode_return']:.2f}), VAE loss {stats.get('vae_loss', 0.0):.3g}"
        )

    def close(self) -> None:
        self.env.close()

    # -- evaluation ----------------------------------------------------------------------
    def prior_belief(self) -> Tensor:
        """The belief before any transition, ``(1, 2 × latent)``."""
        with torch.no_grad():
            mu, logvar, _ = self.encoder.prior(1, self.device)
        return torch.cat([mu, logvar], -1)

    def conditioned_policy(self, belief: Tensor) -> BeliefPolicy:
        """The policy with ``belief`` ``(1, 2 × latent)`` held fixed."""
        return BeliefPolicy(self.policy, self.encode_obs, belief)

    def collect(
        self,
        tasks: Sequence[Any],
        episodes_per_trial: int | None = None,
        seed: int = 1,
        memory: dict[str, Tensor] | None = None,
    ) -> Trials:
        """One trial of ``episodes_per_trial`` episodes (default: the config's ``n``) on each
        of ``tasks``, the belief starting at the prior, in an env of its own; seeded by
        ``seed``. ``memory`` receives the belief the trials end with."""
        n = self.config.episodes_per_trial if episodes_per_trial is None else episodes_per_trial
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"episodes_per_trial must be an integer >= 1, got {n!r}")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        env = self._env(len(tasks))
        try:
            return collect_trials(self, env, tasks, n, seed, gen, memory)
        finally:
            env.close()


def train(
    cfg: VariBADConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Meta-train VariBAD in a run directory through :func:`metarl.runs.training.train_loop`:
    config.json, metrics.csv (one row per iteration: trial return, returns of the trial's
    first and last episodes, PPO and VAE losses, env steps, seconds) and checkpoint.pt.

    Args:
        resume: continue ``run_dir`` from its last checkpoint (exactly, on the CPU).
        overwrite: delete ``run_dir`` first if it exists.
        log: where one-line progress messages go (e.g. ``print``); None: silent.
    """
    cfg.validate()
    return train_loop(cfg, run_dir, AGENT, lambda c, device, resume: VariBAD(c),
                      resume=resume, overwrite=overwrite, log=log)  # fmt: skip


def load_agent(run_dir: str | Path, device: str = "cpu") -> VariBAD:
    """The VariBAD agent of a run directory (its last checkpoint)."""
    record = Run.read_record(run_dir)
    if record["agent"] != AGENT:
        raise ValueError(f"{run_dir} is a {record['agent']} run, not {AGENT}")
    cfg = VariBADConfig.from_dict({**record["config"], "device": device})
    payload = load_checkpoint_file(
        Path(run_dir) / "checkpoint.pt", agent=AGENT, task_family=cfg.env_id,
        map_location=resolve_device(device),
    )  # fmt: skip
    agent = VariBAD(cfg)
    agent.load_state(payload["state"])
    agent.iterations = int(payload["iteration"])
    return agent


def evaluate(
    run_dir: str | Path, settings: EvalSettings | None = None, **overrides: Any
) -> tuple[AdaptationCurve, Path, Path]:
    """Held-out evaluation of a run (:class:`metarl.evaluation.EvalSettings`: ``settings``
    and/or its fields by name; no ``lrs``): the return of episode 1, 2, ..., n of trials on
    the tasks of the split, the belief starting at the prior in every trial (the unit is the
    *episode*: point ``k`` is after ``k`` episodes of adaptation).

    ``num_steps`` is ``n - 1`` (None: the trial length the run was trained with); each seed
    is one batch of trials, the CI over (seed, task) pairs; ``episodes_per_step`` trials per
    task and seed are averaged. Writes ``eval_<split>.json`` and ``eval_<split>.png`` in the
    run directory.
    """
    return evaluate_run_by_episodes(
        run_dir, settings, overrides, agent=AGENT, load_agent=load_agent,
        evaluate_tasks=evaluate_tasks,
    )  # fmt: skip


def evaluate_tasks(
    agent: VariBAD,
    tasks: Sequence[Any],
    *,
    split: str = "test",
    num_steps: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes_per_step: int | None = None,
) -> AdaptationCurve:
    """:func:`evaluate`'s curve on ``tasks`` (``split`` only recorded), written nowhere
    (:func:`metarl.evaluation.curve_by_episodes`)."""

    def run(rows: list[Any], n: int, seed: int) -> tuple[Tensor, Tensor | None, float]:
        trials = agent.collect(rows, n, seed)
        return trials.episode_returns, trials.episode_success, int(trials.mask.sum())

    return curve_by_episodes(
        AGENT, agent.config, tasks, run, split=split, num_steps=num_steps, seeds=seeds,
        episodes_per_step=episodes_per_step,
        meta={"iterations": agent.iterations, "meta_train_env_steps": agent.env_steps},
    )  # fmt: skip


def trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The run's policy for :func:`metarl.agents.load`: it adapts by running episodes of the task,
    which update its belief; the adapted policy acts from that belief, held fixed."""
    from metarl.agents.trained import BeliefTrainedPolicy

    return BeliefTrainedPolicy(load_agent(run_dir, device), evaluate_tasks)
