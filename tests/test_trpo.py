"""The TRPO solver (metarl.learning.trpo): conjugate gradient, step scaling, backtracking line
search, checked against closed-form answers on quadratics."""

from __future__ import annotations

import math

import pytest
import torch

from metarl.learning.trpo import conjugate_gradient, dot, line_search, trust_region_step


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_conjugate_gradient_solves_spd_system() -> None:
    a = _spd(6)
    b = {"x": torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, iters=20)
    assert torch.allclose(a @ x["x"], b["x"], atol=1e-8)
    # The product A x it accumulates (TRPO's step length), also when stopped early.
    for iters in (2, 20):
        product: dict = {}
        x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, iters=iters, product=product)
        assert torch.allclose(product["x"], a @ x["x"], atol=1e-8), iters


def test_conjugate_gradient_works_on_parameter_dicts() -> None:
    """Two entries of different shapes form one vector: the block-diagonal system is solved
    as a whole (not entry by entry with separate step lengths)."""
    a1, a2 = _spd(3, 2), _spd(4, 3)
    b = {"w": torch.ones(3, dtype=torch.float64), "b": torch.arange(4.0, dtype=torch.float64)}
    x = conjugate_gradient(lambda v: {"w": a1 @ v["w"], "b": a2 @ v["b"]}, b, iters=30)
    assert torch.allclose(a1 @ x["w"], b["w"], atol=1e-8)
    assert torch.allclose(a2 @ x["b"], b["b"], atol=1e-8)


@pytest.mark.parametrize("max_kl", [0.01, 0.5])
def test_trust_region_step_reaches_the_quadratic_trust_region(max_kl: float) -> None:
    """The full step ``βs`` has ``½ (βs)ᵀ A (βs) = δ`` and points along ``A⁻¹ g``."""
    a = _spd(5, 4)
    g = {"x": torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)}
    step = trust_region_step(lambda v: {"x": a @ v["x"]}, g, max_kl, cg_iters=20)
    s = step["x"]
    assert math.isclose(0.5 * float(s @ a @ s), max_kl, rel_tol=1e-8)
    exact = torch.linalg.solve(a, g["x"])
    assert torch.allclose(s / s.norm(), exact / exact.norm(), atol=1e-8)
    assert float(dot(step, g)) > 0  # a descent direction of the loss when stepped θ − βs


def test_line_search_accepts_the_first_improving_fraction_within_the_kl() -> None:
    tried: list[float] = []

    def try_step(fraction: float) -> tuple[float, float]:
        tried.append(fraction)
        # Full and half steps overshoot the KL; a quarter step improves within it.
        return 1.0 - fraction, 0.1 * fraction**2

    out = line_search(try_step, old_loss=1.0, max_kl=0.01, max_steps=10, backtrack_ratio=0.5)
    assert tried == [1.0, 0.5, 0.25]
    assert out.accepted and out.fraction == 0.25
    assert out.loss == 0.75 and out.kl == try_step(0.25)[1]


@pytest.mark.parametrize(
    "result",
    [(2.0, 0.0), (float("nan"), 0.0), (0.5, 1.0)],  # worse, not finite, outside the region
)
def test_line_search_rejects_every_bad_candidate(result: tuple[float, float]) -> None:
    calls = [0]

    def try_step(fraction: float) -> tuple[float, float]:
        calls[0] += 1
        return result

    out = line_search(try_step, old_loss=1.0, max_kl=0.01, max_steps=7, backtrack_ratio=0.8)
    assert calls[0] == 7
    assert not out.accepted and out.fraction == 0.0 and out.loss == 1.0 and out.kl == 0.0
