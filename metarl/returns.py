"""Returns, advantages and the linear feature baseline, on time-major ``(T, B)`` tensors.

Episodes come from the batched sampler as ``(T, B, ...)`` tensors with a ``mask`` that is 1
while a row's episode runs and 0 after it ended (terminated or hit the horizon). Every
function here treats masked steps as absent: they earn nothing and nothing flows through
them.

References:
    Schulman, Moritz, Levine, Jordan, Abbeel 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation" (GAE, Eq. 16).
    Duan, Chen, Houthooft, Schulman, Abbeel 2016, "Benchmarking Deep Reinforcement Learning
    for Continuous Control" (the linear feature baseline used by MAML-RL).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "LinearFeatureBaseline",
    "ZeroBaseline",
    "discounted_returns",
    "gae",
    "normalize_advantages",
]


def _check(rewards: Tensor, mask: Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards and mask must both be (T, B), got {tuple(rewards.shape)} and "
            f"{tuple(mask.shape)}"
        )


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + γ G_{t+1}`` within each row's episode; ``(T, B)``, 0 where masked."""
    _check(rewards, mask)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (rewards[t] + gamma * running) * mask[t]
        out[t] = running
    return out


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    bootstrap: Tensor | None = None,
) -> Tensor:
    """Generalised advantage estimates (Schulman et al. 2016, Eq. 16).

    ``δ_t = r_t + γ V(s_{t+1}) − V(s_t)``, ``A_t = Σ_l (γλ)^l δ_{t+l}`` within the episode.
    After a row's last step the next value is 0, unless ``bootstrap`` ``(B,)`` gives one: the
    value of the state a row was truncated in (a time limit, not a true end); pass 0 for rows
    that terminated.

    Args:
        rewards, values, mask: ``(T, B)``.
        bootstrap: ``(B,)`` values to bootstrap truncated rows from, or None.

    Returns:
        Advantages ``(T, B)``, 0 where masked.
    """
    _check(rewards, mask)
    if values.shape != rewards.shape:
        raise ValueError(f"values must be (T, B) like rewards, got {tuple(values.shape)}")
    num_steps = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    zeros = torch.zeros_like(rewards[0])
    end_value = zeros if bootstrap is None else bootstrap
    for t in range(num_steps - 1, -1, -1):
        # The step after t belongs to the same episode iff its mask is 1.
        alive_next = mask[t + 1] if t + 1 < num_steps else zeros
        value_next = values[t + 1] if t + 1 < num_steps else zeros
        v_next = alive_next * value_next + (1 - alive_next) * end_value
        delta = rewards[t] + gamma * v_next - values[t]
        running = (delta + gamma * lam * alive_next * running) * mask[t]
        adv[t] = running
    return adv


def normalize_advantages(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance over the unmasked entries; masked entries stay 0."""
    n = mask.sum().clamp_min(1.0)
    mean = (adv * mask).sum() / n
    var = (((adv - mean) * mask) ** 2).sum() / n
    return (adv - mean) / (var.sqrt() + eps) * mask


class LinearFeatureBaseline:
    """The linear feature baseline of Duan et al. 2016, fitted per task by ridge regression.

    Features of a step: ``[o, o², t/100, (t/100)², (t/100)³, 1]`` with ``o`` the observation
    and ``t`` the time step, so the baseline can follow the time-dependence of returns.
    :meth:`fit_predict` fits one least-squares model per task on that task's episodes and
    returns its predictions, all tasks in one batched solve.

    Args:
        reg_coeff: the ridge term; multiplied by 10 (up to 5 times) while the solve is not
            finite, as in the reference implementation of rllab.
    """

    def __init__(self, reg_coeff: float = 1e-5) -> None:
        self.reg_coeff = reg_coeff

    @staticmethod
    def features(obs: Tensor, mask: Tensor) -> Tensor:
        """``(T, B, F)`` features; zero on masked steps."""
        num_steps = obs.shape[0]
        obs = obs.reshape(num_steps, obs.shape[1], -1).clamp(-10.0, 10.0)
        al = torch.arange(num_steps, dtype=obs.dtype, device=obs.device) / 100.0
        al = al.view(-1, 1, 1).expand(num_steps, obs.shape[1], 1)
        feats = torch.cat([obs, obs**2, al, al**2, al**3, torch.ones_like(al)], dim=-1)
        return feats * mask.unsqueeze(-1)

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """Fit on the episodes of each task and predict their values.

        Args:
            obs: ``(T, B, *obs_shape)``, ``returns`` and ``mask``: ``(T, B)``, where the ``B``
                columns are ``num_tasks`` consecutive groups of episodes, one group per task.

        Returns:
            Baseline values ``(T, B)``, 0 where masked.
        """
        num_steps, batch = returns.shape
        if batch % num_tasks:
            raise ValueError(f"{batch} episode columns do not split into {num_tasks} tasks")
        obs, returns, mask = obs.detach(), returns.detach(), mask.detach()
        feats = self.features(obs.to(returns.dtype), mask)  # (T, B, F)
        nf = feats.shape[-1]
        per_task = batch // num_tasks
        # (num_tasks, T * per_task, F) design matrices, one per task.
        x = feats.view(num_steps, num_tasks, per_task, nf).permute(1, 0, 2, 3)
        x = x.reshape(num_tasks, -1, nf)
        y = returns.view(num_steps, num_tasks, per_task).permute(1, 0, 2).reshape(num_tasks, -1)
        xtx = x.transpose(1, 2) @ x
        xty = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(nf, dtype=x.dtype, device=x.device)
        reg = self.reg_coeff
        for _ in range(5):
            coeffs = torch.linalg.solve(xtx + reg * eye, xty)
            if torch.isfinite(coeffs).all():
                break
            reg *= 10
        pred = (x @ coeffs.unsqueeze(-1)).squeeze(-1)  # (num_tasks, T * per_task)
        pred = pred.view(num_tasks, num_steps, per_task).permute(1, 0, 2).reshape(num_steps, batch)
        return pred * mask


class ZeroBaseline:
    """No baseline: ``b(s) = 0``, so the advantages are the (GAE-λ) returns themselves.

    What rllab's ``VPG`` uses in the first adaptation step of Finn et al.'s released test
    scripts (``maml_examples/test_maml_*.py``): rllab's sampler predicts with the baseline
    *before* fitting it, and a fresh ``LinearFeatureBaseline`` predicts zeros.
    """

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """Zeros ``(T, B)`` (the signature of :meth:`LinearFeatureBaseline.fit_predict`)."""
        if returns.shape[1] % num_tasks:
            raise ValueError(
                f"{returns.shape[1]} episode columns do not split into {num_tasks} tasks"
            )
        return torch.zeros_like(returns)


BASELINES = {"linear": LinearFeatureBaseline, "zero": ZeroBaseline}
