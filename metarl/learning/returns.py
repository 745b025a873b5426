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
    "PreviousTaskBaseline",
    "ZeroBaseline",
    "discounted_returns",
    "gae",
    "normalize_advantages",
    "trial_gae",
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


def normalize_advantages(
    adv: Tensor, mask: Tensor, eps: float = 1e-8, dims: tuple[int, ...] | None = None
) -> Tensor:
    """Zero mean, unit variance over the unmasked entries; masked entries are 0.

    ``dims``: normalise over these dimensions only, separately along the others (e.g. per
    task: ``(T, N, E)`` advantages with ``dims=(0, 2)``); None: over all entries."""
    if dims is None:
        n = mask.sum().clamp_min(1.0)
        mean = (adv * mask).sum() / n
        var = (((adv - mean) * mask) ** 2).sum() / n
    else:
        n = mask.sum(dims, keepdim=True).clamp_min(1.0)
        mean = (adv * mask).sum(dims, keepdim=True) / n
        var = (((adv - mean) * mask) ** 2).sum(dims, keepdim=True) / n
    return (adv - mean) / (var.sqrt() + eps) * mask


class LinearFeatureBaseline:
    """The linear feature baseline of Duan et al. 2016, fitted per task by ridge regression.

    Features of a step: ``[o, o², t/100, (t/100)², (t/100)³, 1]`` with ``o`` the observation
    and ``t`` the time step, so the baseline can follow the time-dependence of returns.
    :meth:`fit_predict` fits one least-squares model per task on that task's episodes and
    returns its predictions, all tasks in one batched solve.

    Args:
        reg_coeff: the ridge term; multiplied by 10 (up to 5 times) while the matrix is
            singular or the solve is not finite, as in the reference implementation of rllab;
            then the least-squares solution (see :meth:`solve`).
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

    @staticmethod
    def num_features(obs_size: int) -> int:
        """Length of a step's feature vector for flat observations of ``obs_size``."""
        return 2 * obs_size + 4

    def design(
        self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int
    ) -> tuple[Tensor, Tensor]:
        """Per-task design matrices ``(N, T·E, F)`` and targets ``(N, T·E)``: the ``B``
        columns are ``num_tasks`` consecutive groups of episodes, one group per task."""
        num_steps, batch = returns.shape
        if batch % num_tasks:
            raise ValueError(f"{batch} episode columns do not split into {num_tasks} tasks")
        obs, returns, mask = obs.detach(), returns.detach(), mask.detach()
        feats = self.features(obs.to(returns.dtype), mask)  # (T, B, F)
        nf = feats.shape[-1]
        per_task = batch // num_tasks
        x = feats.view(num_steps, num_tasks, per_task, nf).permute(1, 0, 2, 3)
        x = x.reshape(num_tasks, -1, nf)
        y = returns.view(num_steps, num_tasks, per_task).permute(1, 0, 2).reshape(num_tasks, -1)
        return x, y

    def solve(self, xtx: Tensor, xty: Tensor) -> Tensor:
        """Ridge solution(s) ``(XᵀX + r I)⁻¹ Xᵀy`` (batched over leading dimensions); ``r``
        grows tenfold, up to 5 times, while the matrix is singular or the solution is not
        finite (rllab); if it still is, the minimum-norm least-squares solution.

        A degenerate design (constant observation dimensions, one episode, zero rewards) makes
        ``XᵀX`` singular, and with large features the ridge term is lost in float32 rounding.
        """
        eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
        reg = self.reg_coeff
        for _ in range(5):
            try:
                coeffs = torch.linalg.solve(xtx + reg * eye, xty)
            except torch.linalg.LinAlgError:  # exactly singular: a larger ridge, as rllab does
                reg *= 10
                continue
            if torch.isfinite(coeffs).all():
                return coeffs
            reg *= 10
        # XᵀX is symmetric positive semi-definite: its pseudo-inverse exists on any device.
        pinv = torch.linalg.pinv(xtx, hermitian=True)
        return (pinv @ xty.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _unpack(pred: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """``(N, T·E)`` per-task predictions back to ``(T, B)``, 0 where masked."""
        num_steps, batch = returns.shape
        pred = pred.view(num_tasks, num_steps, batch // num_tasks).permute(1, 0, 2)
        return pred.reshape(num_steps, batch) * mask

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """Fit on the episodes of each task and predict their values.

        Args:
            obs: ``(T, B, *obs_shape)``, ``returns`` and ``mask``: ``(T, B)``, where the ``B``
                columns are ``num_tasks`` consecutive groups of episodes, one group per task.

        Returns:
            Baseline values ``(T, B)``, 0 where masked.
        """
        x, y = self.design(obs, returns, mask, num_tasks)
        xt = x.transpose(1, 2)
        coeffs = self.solve(xt @ x, (xt @ y.unsqueeze(-1)).squeeze(-1))
        pred = (x @ coeffs.unsqueeze(-1)).squeeze(-1)  # (num_tasks, T * per_task)
        return self._unpack(pred, returns, mask.detach(), num_tasks)


class PreviousTaskBaseline(LinearFeatureBaseline):
    """The linear feature baseline as rllab's sampler used it: *predict, then fit*, with one
    baseline object shared by the tasks of a meta-batch processed one after another.

    rllab's ``BaseSampler.process_samples`` (rll/rllab ``rllab/sampler/base.py``; in Finn et
    al.'s cbfinn/maml_rl the version before commit fb26875, which moved the fit in front of
    the prediction) predicts the values of a batch of episodes with the baseline's current
    coefficients and only then fits it on that batch. MAML's ``BatchMAMLPolopt.train``
    (``sandbox/rocky/tf/algos/batch_maml_polopt.py``) calls it task by task on one shared
    ``LinearFeatureBaseline``, then once more on all the round's episodes together (for
    logging). So in every sampling round (each inner step's episodes, then the validation
    episodes of the outer step):

    - task ``i ≥ 1`` uses the fit on task ``i − 1``'s episodes of the same round;
    - task 0 uses the fit on *all* tasks' episodes of the round before (the logging call),
      across meta-iterations too: the first round of a meta-iteration uses the previous
      meta-iteration's validation episodes; before any fit the coefficients are zero
      (rllab's fresh baseline predicts 0).

    :meth:`fit_predict` does a round in one batched solve (the per-task fits shifted by one
    task, no loop over tasks) and leaves the pooled fit in :attr:`coeffs` (updated in place,
    so a checkpoint can hold it) for the next round's task 0.

    Args:
        num_features: the feature length (:meth:`LinearFeatureBaseline.num_features`).
        coeffs: the carried coefficients ``(F,)`` to start from (used and updated in place);
            None: zeros.
    """

    def __init__(
        self,
        num_features: int,
        reg_coeff: float = 1e-5,
        coeffs: Tensor | None = None,
    ) -> None:
        super().__init__(reg_coeff)
        if coeffs is None:
            coeffs = torch.zeros(num_features)
        if coeffs.shape != (num_features,):
            raise ValueError(
                f"carried baseline coefficients must be ({num_features},), got "
                f"{tuple(coeffs.shape)}"
            )
        self.coeffs = coeffs

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """Values of a round's episodes from the previous task's fit (task 0: the carried
        pooled fit of the round before); then carry the pooled fit of this round.

        Args and returns as :meth:`LinearFeatureBaseline.fit_predict`.
        """
        x, y = self.design(obs, returns, mask, num_tasks)
        if x.shape[-1] != self.coeffs.shape[0]:
            raise ValueError(
                f"the episodes have {x.shape[-1]} features, the carried baseline "
                f"{self.coeffs.shape[0]}: it was made for another observation space"
            )
        xt = x.transpose(1, 2)
        xtx, xty = xt @ x, (xt @ y.unsqueeze(-1)).squeeze(-1)
        per_task = self.solve(xtx, xty)  # (N, F)
        pooled = self.solve(xtx.sum(0), xty.sum(0))  # (F,)
        carried = self.coeffs.to(device=x.device, dtype=x.dtype)
        previous = torch.cat([carried.unsqueeze(0), per_task[:-1]])  # task i: fit of i - 1
        pred = (x @ previous.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            self.coeffs.copy_(pooled)
        return self._unpack(pred, returns, mask.detach(), num_tasks)


class ZeroBaseline:
    """No baseline: ``b(s) = 0``, so the advantages are the (GAE-λ) returns themselves.

    What rllab's ``VPG`` used in the first adaptation step of Finn et al.'s test scripts
    (``maml_examples/test_maml_*.py``) while rllab's sampler predicted with the baseline
    *before* fitting it (see :class:`PreviousTaskBaseline`): a fresh
    ``LinearFeatureBaseline`` predicts zeros.
    """

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor, num_tasks: int) -> Tensor:
        """Zeros ``(T, B)`` (the signature of :meth:`LinearFeatureBaseline.fit_predict`)."""
        if returns.shape[1] % num_tasks:
            raise ValueError(
                f"{returns.shape[1]} episode columns do not split into {num_tasks} tasks"
            )
        return torch.zeros_like(returns)


BASELINES = {"linear": LinearFeatureBaseline, "zero": ZeroBaseline}


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
