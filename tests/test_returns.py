"""Returns, GAE and the linear feature baseline against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.learning.returns import (
    LinearFeatureBaseline,
    PreviousTaskBaseline,
    discounted_returns,
    gae,
    normalize_advantages,
)


def _episode_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Row 0 runs 4 steps, row 1 ends after 2, row 2 after 3.
    rewards = torch.tensor(
        [[1.0, 2.0, -1.0], [0.5, 1.0, 0.0], [2.0, 9.0, 3.0], [-1.0, 9.0, 9.0]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 0]], dtype=torch.float64)
    values = torch.tensor(
        [[0.3, 0.1, 0.2], [0.4, 0.6, -0.5], [0.2, 7.0, 1.0], [0.1, 7.0, 7.0]], dtype=torch.float64
    )
    return rewards, mask, values


def test_discounted_returns_closed_form() -> None:
    rewards, mask, _ = _episode_batch()
    g = 0.9
    out = discounted_returns(rewards, mask, g)
    assert out[0, 0].item() == pytest.approx(1 + g * 0.5 + g**2 * 2 + g**3 * -1)
    assert out[0, 1].item() == pytest.approx(2 + g * 1)
    assert out[1, 1].item() == pytest.approx(1.0)
    assert out[2, 1].item() == 0 and out[3, 1].item() == 0  # masked: nothing leaks in
    assert out[0, 2].item() == pytest.approx(-1 + g * 0 + g**2 * 3)


def test_gae_lambda_one_is_returns_minus_values() -> None:
    rewards, mask, values = _episode_batch()
    adv = gae(rewards, values, mask, gamma=0.95, lam=1.0)
    expected = (discounted_returns(rewards, mask, 0.95) - values) * mask
    torch.testing.assert_close(adv, expected)


def test_gae_lambda_zero_is_the_td_error() -> None:
    rewards, mask, values = _episode_batch()
    adv = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    # Row 1 ends at t=1: delta_1 = r_1 - V_1 (no next value); t=0: r_0 + g V_1 - V_0.
    assert adv[1, 1].item() == pytest.approx(1.0 - 0.6)
    assert adv[0, 1].item() == pytest.approx(2.0 + 0.9 * 0.6 - 0.1)
    assert adv[2, 1].item() == 0


def test_gae_by_hand_with_bootstrap() -> None:
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [1.0]])
    mask = torch.ones(2, 1)
    g, lam, vb = 0.9, 0.8, 3.0
    adv = gae(rewards, values, mask, g, lam, bootstrap=torch.tensor([vb]))
    d1 = 2.0 + g * vb - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    assert adv[1, 0].item() == pytest.approx(d1)
    assert adv[0, 0].item() == pytest.approx(d0 + g * lam * d1)


def test_normalize_advantages_ignores_masked_entries() -> None:
    adv = torch.tensor([[1.0, 5.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = normalize_advantages(adv, mask)
    vals = out[mask.bool()]
    assert vals.mean().abs().item() < 1e-6
    assert vals.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)
    assert out[1, 1].item() == 0
    # Over some dimensions only: each slice along the others normalised on its own, exactly
    # as if normalised alone.
    g = torch.Generator().manual_seed(0)
    adv3 = torch.randn(5, 3, 4, generator=g)
    mask3 = (torch.rand(5, 3, 4, generator=g) > 0.2).float()
    per_task = normalize_advantages(adv3, mask3, dims=(0, 2))
    for i in range(3):
        alone = normalize_advantages(adv3[:, i], mask3[:, i])
        torch.testing.assert_close(per_task[:, i], alone, rtol=0, atol=1e-6)


def test_linear_baseline_fits_a_linear_target_exactly_per_task() -> None:
    torch.manual_seed(0)
    num_steps, num_tasks, per_task = 12, 3, 4
    obs = torch.randn(num_steps, num_tasks * per_task, 2, dtype=torch.float64)
    mask = torch.ones(num_steps, num_tasks * per_task, dtype=torch.float64)
    mask[9:, 0] = 0  # one short episode
    feats = LinearFeatureBaseline.features(obs, mask)
    # Each task's returns are a different exact linear function of the features.
    coeffs = torch.randn(num_tasks, feats.shape[-1], dtype=torch.float64)
    target = torch.einsum("tbf,bf->tb", feats, coeffs.repeat_interleave(per_task, dim=0))
    pred = LinearFeatureBaseline(reg_coeff=1e-10).fit_predict(obs, target, mask, num_tasks)
    torch.testing.assert_close(pred, target * mask, atol=1e-6, rtol=1e-6)
    assert (pred[9:, 0] == 0).all()
    with pytest.raises(ValueError, match="do not split"):
        LinearFeatureBaseline().fit_predict(obs, target, mask, 5)


def _rllab_fit(feats: np.ndarray, returns: np.ndarray, reg: float) -> np.ndarray:
    """rllab's ``LinearFeatureBaseline.fit`` on one batch of steps (rows)."""
    a = feats.T @ feats + reg * np.eye(feats.shape[1])
    return np.linalg.lstsq(a, feats.T @ returns, rcond=None)[0]


def _rounds(num_tasks: int, per_task: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    num_steps = 9
    obs = torch.randn(num_steps, num_tasks * per_task, 2, generator=g, dtype=torch.float64)
    returns = torch.randn(num_steps, num_tasks * per_task, generator=g, dtype=torch.float64)
    mask = torch.ones(num_steps, num_tasks * per_task, dtype=torch.float64)
    mask[6:, 1] = 0  # a short episode of task 0
    mask[4:, per_task + 1] = 0  # and one of task 1
    return obs, returns * mask, mask


def _per_task_loop(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, num_tasks: int,
    carried: np.ndarray, reg: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """rllab's MAML processing of one round, task by task on one baseline object that
    predicts, then fits (float64 NumPy): the values, and the coefficients it ends with (the
    logging call's fit on all the round's episodes)."""
    feats = LinearFeatureBaseline.features(obs, mask).numpy()
    per = obs.shape[1] // num_tasks
    values = np.zeros(returns.shape)
    coeffs = carried
    rows = []
    for i in range(num_tasks):
        cols = slice(i * per, (i + 1) * per)
        live = mask[:, cols].numpy().astype(bool)
        f, y = feats[:, cols][live], returns[:, cols].numpy()[live]
        block = np.zeros(live.shape)
        block[live] = f @ coeffs  # predict first ...
        values[:, cols] = block
        coeffs = _rllab_fit(f, y, reg)  # ... then fit
        rows.append((f, y))
    pooled = _rllab_fit(np.concatenate([f for f, _ in rows]),
                        np.concatenate([y for _, y in rows]), reg)  # fmt: skip
    return values, pooled


def test_previous_task_baseline_uses_the_fit_of_the_task_before() -> None:
    """Task i's values come from the fit on task i-1's episodes, task 0's from the carried
    coefficients; the round leaves the fit on all its episodes. Checked against rllab's
    task-by-task predict-then-fit loop in float64, over two rounds (the second round's
    task 0 uses the first round's pooled fit)."""
    num_tasks, per_task, reg = 4, 3, 1e-5
    carried = np.random.default_rng(3).normal(size=LinearFeatureBaseline.num_features(2))
    baseline = PreviousTaskBaseline(8, reg, coeffs=torch.tensor(carried))
    for seed in (0, 1):
        obs, returns, mask = _rounds(num_tasks, per_task, seed)
        expected, pooled = _per_task_loop(obs, returns, mask, num_tasks, carried, reg)
        got = baseline.fit_predict(obs, returns, mask, num_tasks)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(baseline.coeffs.numpy(), pooled, rtol=1e-8, atol=1e-10)
        carried = pooled
    # Not the task's own fit: the shift is what the class is about.
    own = LinearFeatureBaseline(reg).fit_predict(obs, returns, mask, num_tasks)
    assert (own - got).abs().max() > 0.1


def test_previous_task_baseline_first_task_of_a_fresh_baseline_gets_zero() -> None:
    """A fresh baseline (rllab's ``_coeffs is None``) predicts 0 for the first task only;
    the carried coefficients are updated in place (a checkpoint holds that tensor)."""
    obs, returns, mask = _rounds(3, 4, 7)
    baseline = PreviousTaskBaseline(8)
    live = baseline.coeffs
    values = baseline.fit_predict(obs, returns, mask, 3)
    assert (values[:, :4] == 0).all()
    assert (values[:, 4:] != 0).any(dim=0).all()
    assert baseline.coeffs is live and live.abs().sum() > 0
    assert (values * (1 - mask) == 0).all()  # masked steps stay 0


def test_previous_task_baseline_refuses_a_wrong_feature_size() -> None:
    obs, returns, mask = _rounds(2, 2, 0)
    with pytest.raises(ValueError, match="another observation space"):
        PreviousTaskBaseline(10).fit_predict(obs, returns, mask, 2)
    with pytest.raises(ValueError, match="must be"):
        PreviousTaskBaseline(8, coeffs=torch.zeros(3))
    with pytest.raises(ValueError, match="do not split"):
        PreviousTaskBaseline(8).fit_predict(obs, returns, mask, 3)


def _old_solve(xtx: torch.Tensor, xty: torch.Tensor, reg: float) -> torch.Tensor:
    # The solve as it was before singular matrices were handled: the reference for inputs
    # it could solve.
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype)
    for _ in range(5):
        coeffs = torch.linalg.solve(xtx + reg * eye, xty)
        if torch.isfinite(coeffs).all():
            break
        reg *= 10
    return coeffs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_baseline_solve_is_unchanged_on_regular_designs(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(50, 6, 5, generator=gen, dtype=dtype)
    returns = torch.randn(50, 6, generator=gen, dtype=dtype)
    mask = torch.ones(50, 6, dtype=dtype)
    base = LinearFeatureBaseline()
    x, y = base.design(obs, returns, mask, num_tasks=3)
    xt = x.transpose(1, 2)
    xtx, xty = xt @ x, (xt @ y.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(base.solve(xtx, xty), _old_solve(xtx, xty, base.reg_coeff))


@pytest.mark.parametrize(
    "case", ["constant-dims-1", "constant-dims-10", "one-step", "all-masked", "all-constant"]
)
def test_linear_baseline_survives_degenerate_designs(case: str) -> None:
    # Meta-World: 17 of 39 observation dimensions constant; with values of 1 or 10 the
    # columns o, o² and the bias coincide (or the ridge term vanishes in float32 rounding),
    # so XᵀX + rI is exactly singular and torch.linalg.solve raises.
    gen = torch.Generator().manual_seed(1)
    num_steps, batch = 500, 2
    obs = torch.randn(num_steps, batch, 39, generator=gen)
    mask = torch.ones(num_steps, batch)
    returns = torch.zeros(num_steps, batch)  # all-zero rewards
    if case == "constant-dims-1":
        obs[..., 10:27] = 1.0
    elif case == "constant-dims-10":
        obs[..., 10:27] = 10.0
    elif case == "one-step":
        mask[1:] = 0
    elif case == "all-masked":
        mask[:] = 0
    else:
        obs[:] = 10.0
        returns = torch.ones(num_steps, batch)
    base = LinearFeatureBaseline()
    pred = base.fit_predict(obs, returns, mask, num_tasks=batch)  # one episode per task
    assert pred.shape == (num_steps, batch) and torch.isfinite(pred).all()
    assert (pred[mask == 0] == 0).all()
    if case == "all-constant":  # a constant return is fitted exactly by the bias term
        torch.testing.assert_close(pred, returns, atol=1e-2, rtol=0)
