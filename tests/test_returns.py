"""Returns, GAE and the linear feature baseline against closed forms."""

from __future__ import annotations

import pytest
import torch

from metarl.returns import LinearFeatureBaseline, discounted_returns, gae, normalize_advantages


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
