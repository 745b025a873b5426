"""Stochastic policies with a functional interface, for batched meta-RL.

A policy is an ``nn.Module`` whose parameters are also handled as a ``dict[str, Tensor]``
(:func:`metarl.learning.functional.named_params`). Everything the samplers and the losses need goes
through four methods that take the distribution's parameters as a tuple of tensors, so that
``torch.func.vmap`` can run one task's parameters on that task's rows:

* ``dist_params(obs)`` — ``forward``; with given parameters, call it through
  :func:`metarl.learning.functional.forward` (``functional_call``);
* ``sample(dist, generator)`` — draws actions outside any ``vmap`` (random draws from an
  explicit generator keep runs reproducible);
* ``log_prob(dist, actions)`` and ``kl(old, new)`` — closed forms.

:class:`GaussianMLPPolicy` is the policy of Finn et al. 2017 (MAML) for continuous actions:
an MLP for the mean and a learned, state-independent log standard deviation.
:class:`CategoricalMLPPolicy` serves discrete actions (bandits, tabular MDPs); discrete
observations are one-hot encoded.

Example:
    >>> policy = GaussianMLPPolicy(obs_dim=2, action_dim=2, hidden_sizes=(100, 100))
    >>> dist = policy(torch.zeros(5, 2))
    >>> actions = policy.sample(dist)
    >>> policy.log_prob(dist, actions).shape
    torch.Size([5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from metarl.tasks.spaces import FlatEncoder

__all__ = ["CategoricalMLPPolicy", "GaussianMLPPolicy", "Policy", "make_policy", "run_gru"]

Dist = tuple[Tensor, ...]

_NONLINEARITIES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _mlp(inputs: int, hidden_sizes: Sequence[int], outputs: int, nonlinearity: str) -> nn.Module:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be one of {', '.join(_NONLINEARITIES)}, got {nonlinearity!r}"
        )
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), _NONLINEARITIES[nonlinearity]()]
        width = h
    layers.append(nn.Linear(width, outputs))
    for m in layers:
        if isinstance(m, nn.Linear):  # Xavier-uniform weights and zero biases, as rllab's MLP
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """The interface the samplers and losses use; see the module docstring."""

    def forward(self, obs: Tensor) -> Dist:
        raise NotImplementedError

    def sample(self, dist: Dist, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def mode(self, dist: Dist) -> Tensor:
        """The most likely action (deterministic evaluation)."""
        raise NotImplementedError

    def log_prob(self, dist: Dist, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def kl(self, old: Dist, new: Dist) -> Tensor:
        """``KL(old || new)`` per row."""
        raise NotImplementedError

    def fisher_diagonal(self, dist: Dist) -> Dist:
        """The Fisher information of each row's distribution in the coordinates of ``dist``
        (one tensor per entry of ``dist``, its shape): diagonal there, so that the Hessian of
        the mean KL at ``new = old`` is ``Jᵀ diag(F) J`` with ``J`` the Jacobian of ``dist``
        in the parameters (Schulman et al. 2015, App. C.1)."""
        raise NotImplementedError

    def entropy(self, dist: Dist) -> Tensor:
        raise NotImplementedError


class GaussianMLPPolicy(Policy):
    """``a ~ N(μ_θ(s), diag(σ²))`` with ``μ`` an MLP and ``log σ`` a learned vector.

    Args:
        obs_dim, action_dim: sizes of the flat observation and action.
        hidden_sizes: hidden layer widths; (100, 100) in Finn et al. 2017.
        nonlinearity: ``"relu"`` (the paper's) or ``"tanh"``.
        init_std: initial standard deviation (1.0, as rllab's ``GaussianMLPPolicy``).
        min_log_std: lower clamp of ``log σ``, keeps the density finite.
        action_low, action_high: if given, the network acts in ``[-1, 1]`` and its actions
            are mapped affinely onto ``[low, high]``: ``μ = c + s·μ_net``, ``σ = s·σ_net``
            with ``c = (high + low)/2``, ``s = (high − low)/2``. This is rllab's ``normalize``
            env wrapper (``NormalizedEnv``: ``a_env = low + (a + 1)(high − low)/2``, then
            clipped), which Finn et al.'s released MAML code wraps every env in: the same
            distribution of env actions, the same gradients of log-probabilities (they
            differ by the constant ``Σ log s``) and the same KL, with ``init_std`` and the
            learning rates meaning what they mean there.
    """

    action_center: Tensor
    action_log_scale: Tensor

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        nonlinearity: str = "relu",
        init_std: float = 1.0,
        min_log_std: float = -6.0,
        action_low: Sequence[float] | np.ndarray | None = None,
        action_high: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.mean = _mlp(self.obs_dim, hidden_sizes, self.action_dim, nonlinearity)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), math.log(init_std)))
        self.min_log_std = min_log_std
        self.normalized = action_low is not None or action_high is not None
        if self.normalized:
            if action_low is None or action_high is None:
                raise ValueError("give both action_low and action_high, or neither")
            low = torch.as_tensor(np.asarray(action_low, dtype=np.float32)).reshape(-1)
            high = torch.as_tensor(np.asarray(action_high, dtype=np.float32)).reshape(-1)
            if low.shape != (self.action_dim,) or high.shape != (self.action_dim,):
                raise ValueError(
                    f"action_low and action_high need {self.action_dim} entries, got "
                    f"{tuple(low.shape)} and {tuple(high.shape)}"
                )
            if not (
                torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()
            ):
                raise ValueError(
                    "normalized actions need finite bounds with high > low; this action space "
                    f"has low={low.tolist()}, high={high.tolist()} (leave normalization off)"
                )
            self.register_buffer("action_center", (high + low) / 2, persistent=False)
            self.register_buffer("action_log_scale", torch.log((high - low) / 2), persistent=False)

    def forward(self, obs: Tensor) -> Dist:
        # Observations are cast to the parameters' dtype: float32 normally, float64 for a
        # policy made ``.double()`` (the round-off-free equality tests of the agents).
        flat = obs.reshape(*obs.shape[: obs.dim() - 1], self.obs_dim)
        mean = self.mean(flat.to(self.log_std.dtype))
        log_std = self.log_std.clamp_min(self.min_log_std).expand_as(mean)
        if self.normalized:
            mean = self.action_center + self.action_log_scale.exp() * mean
            log_std = log_std + self.action_log_scale
        return mean, log_std

    def sample(self, dist: Dist, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = dist
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + log_std.exp() * noise

    def mode(self, dist: Dist) -> Tensor:
        return dist[0]

    def log_prob(self, dist: Dist, actions: Tensor) -> Tensor:
        mean, log_std = dist
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def kl(self, old: Dist, new: Dist) -> Tensor:
        # KL(N(μ0, σ0²) || N(μ1, σ1²)) = log σ1/σ0 + (σ0² + (μ0 − μ1)²) / (2σ1²) − 1/2
        m0, ls0 = old
        m1, ls1 = new
        var0, var1 = torch.exp(2 * ls0), torch.exp(2 * ls1)
        return (ls1 - ls0 + (var0 + (m0 - m1) ** 2) / (2 * var1) - 0.5).sum(-1)

    def fisher_diagonal(self, dist: Dist) -> Dist:
        # The KL's second derivatives at new = old: 1/σ² in μ, 2 in log σ, none mixed.
        log_std = dist[1]
        return torch.exp(-2 * log_std), torch.full_like(log_std, 2.0)

    def entropy(self, dist: Dist) -> Tensor:
        return (dist[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class CategoricalMLPPolicy(Policy):
    """``a ~ Categorical(softmax(f_θ(s)))``; integer observations are one-hot encoded.

    Args:
        obs_dim: flat observation size, or the number of states when ``discrete_obs``.
        num_actions: number of discrete actions.
        discrete_obs: observations are integers in ``[0, obs_dim)``.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (100, 100),
        nonlinearity: str = "relu",
        discrete_obs: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim, self.num_actions = int(obs_dim), int(num_actions)
        self.discrete_obs = discrete_obs
        space = (
            gym.spaces.Discrete(self.obs_dim)
            if discrete_obs
            else gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,))
        )
        self._features = FlatEncoder(space)
        self.logits = _mlp(self.obs_dim, hidden_sizes, self.num_actions, nonlinearity)

    def forward(self, obs: Tensor) -> Dist:
        # Cast to the parameters' dtype as the Gaussian policy does (float64 in the exactness
        # tests of the curvature products).
        dtype = next(self.logits.parameters()).dtype
        return (torch.log_softmax(self.logits(self._features(obs).to(dtype)), -1),)

    def sample(self, dist: Dist, generator: torch.Generator | None = None) -> Tensor:
        logp = dist[0]
        flat = logp.reshape(-1, logp.shape[-1]).exp()
        return torch.multinomial(flat, 1, generator=generator).view(logp.shape[:-1])

    def mode(self, dist: Dist) -> Tensor:
        return dist[0].argmax(-1)

    def log_prob(self, dist: Dist, actions: Tensor) -> Tensor:
        return dist[0].gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def kl(self, old: Dist, new: Dist) -> Tensor:
        return (old[0].exp() * (old[0] - new[0])).sum(-1)

    def fisher_diagonal(self, dist: Dist) -> Dist:
        # In the log-probabilities l = z − logsumexp(z): ∂l/∂z = I − 1pᵀ, and
        # (I − p1ᵀ) diag(p) (I − 1pᵀ) = diag(p) − ppᵀ, the Fisher in the logits z.
        return (dist[0].exp(),)

    def entropy(self, dist: Dist) -> Tensor:
        return -(dist[0].exp() * dist[0]).sum(-1)


def make_policy(
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    hidden_sizes: Sequence[int] = (100, 100),
    nonlinearity: str = "relu",
    init_std: float = 1.0,
    normalize_actions: bool = False,
) -> Policy:
    """The policy that fits the spaces: Gaussian for ``Box`` actions, categorical for
    ``Discrete`` ones (one-hot inputs for ``Discrete`` observations).

    ``normalize_actions``: a Gaussian policy acts in ``[-1, 1]`` mapped onto the ``Box``'s
    bounds (rllab's ``normalize`` wrapper; see :class:`GaussianMLPPolicy`)."""
    if isinstance(observation_space, gym.spaces.Discrete):
        obs_dim, discrete_obs = int(observation_space.n), True
    elif isinstance(observation_space, gym.spaces.Box):
        obs_dim, discrete_obs = int(np.prod(observation_space.shape)), False
    else:
        raise TypeError(
            f"policies take Box or Discrete observations, not {type(observation_space).__name__}"
        )
    if isinstance(action_space, gym.spaces.Box):
        if discrete_obs:
            raise TypeError("a Gaussian policy over Discrete observations is not supported")
        bounds = (action_space.low, action_space.high) if normalize_actions else (None, None)
        return GaussianMLPPolicy(
            obs_dim,
            int(np.prod(action_space.shape)),
            hidden_sizes,
            nonlinearity,
            init_std,
            action_low=bounds[0],
            action_high=bounds[1],
        )
    if isinstance(action_space, gym.spaces.Discrete):
        if normalize_actions:
            raise ValueError("normalize_actions is for Box actions; this space is Discrete")
        return CategoricalMLPPolicy(
            obs_dim, int(action_space.n), hidden_sizes, nonlinearity, discrete_obs
        )
    raise TypeError(f"policies take Box or Discrete actions, not {type(action_space).__name__}")


def run_gru(gru: nn.GRU, x: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
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
