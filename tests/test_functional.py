"""The adaptation core against closed forms: second-order MAML, first-order MAML, Meta-SGD,
the vmap-able variant, and Reptile's interpolation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import vmap

from metarl.learning.functional import (
    adapt,
    adapt_func,
    forward,
    load_params,
    named_params,
    reptile_update,
)


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    # Closed forms are compared to 1e-12; restore the default for the other test modules.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def scalar_problem() -> tuple[torch.Tensor, dict[str, float]]:
    w = torch.tensor(0.7, requires_grad=True)
    return w, {"x1": 1.5, "y1": 0.3, "x2": -0.8, "y2": 1.1, "a": 0.1}


def test_second_order_maml_gradient_by_hand() -> None:
    # f(w; x) = w x, inner loss (w x1 - y1)^2, outer loss (w' x2 - y2)^2.
    # w' = w - a * 2 x1 (w x1 - y1);  dw'/dw = 1 - 2 a x1^2.
    w, c = scalar_problem()
    x1, y1, x2, y2, a = c["x1"], c["y1"], c["x2"], c["y2"], c["a"]
    adapted = adapt(lambda p: (p["w"] * x1 - y1) ** 2, {"w": w}, num_steps=1, lr=a)
    ((adapted["w"] * x2 - y2) ** 2).backward()
    w0 = w.item()
    w1 = w0 - a * 2 * x1 * (w0 * x1 - y1)
    expected = 2 * (w1 * x2 - y2) * x2 * (1 - 2 * a * x1**2)
    assert w.grad is not None
    assert w.grad.item() == pytest.approx(expected, rel=1e-12)


def test_first_order_maml_gradient_by_hand() -> None:
    w, c = scalar_problem()
    x1, y1, x2, y2, a = c["x1"], c["y1"], c["x2"], c["y2"], c["a"]
    adapted = adapt(lambda p: (p["w"] * x1 - y1) ** 2, {"w": w}, lr=a, first_order=True)
    ((adapted["w"] * x2 - y2) ** 2).backward()
    w0 = w.item()
    w1 = w0 - a * 2 * x1 * (w0 * x1 - y1)
    assert w.grad is not None
    assert w.grad.item() == pytest.approx(2 * (w1 * x2 - y2) * x2, rel=1e-12)


def test_two_steps_with_per_step_rates() -> None:
    w, c = scalar_problem()
    x1, y1, x2, y2 = c["x1"], c["y1"], c["x2"], c["y2"]
    rates = [0.1, 0.05]
    adapted = adapt(lambda p: (p["w"] * x1 - y1) ** 2, {"w": w}, num_steps=2, lr=rates)
    ((adapted["w"] * x2 - y2) ** 2).backward()
    wk, jac = w.item(), 1.0
    for a in rates:
        wk = wk - a * 2 * x1 * (wk * x1 - y1)
        jac *= 1 - 2 * a * x1**2
    assert adapted["w"].item() == pytest.approx(wk, rel=1e-12)
    assert w.grad is not None
    assert w.grad.item() == pytest.approx(2 * (wk * x2 - y2) * x2 * jac, rel=1e-12)


def _mlp_problem() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    xs, ys = torch.randn(6, 2), torch.randn(6, 1)
    xq, yq = torch.randn(5, 2), torch.randn(5, 1)
    return model, (xs, ys, xq, yq)


def test_second_order_matches_hessian_formula_on_an_mlp() -> None:
    # MAML's meta-gradient for one step: (I - a H_inner(θ)) ∇L_outer(θ'), with H built
    # explicitly from torch.autograd.functional.hessian over the flattened parameters.
    model, (xs, ys, xq, yq) = _mlp_problem()
    a = 0.3
    params = named_params(model)
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: c.view(s) for n, c, s in zip(names, v.split(sizes), shapes, strict=True)}

    def inner(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((forward(model, p, xs) - ys) ** 2).mean()

    def outer(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((forward(model, p, xq) - yq) ** 2).mean()

    adapted = adapt(inner, params, lr=a)
    outer(adapted).backward()
    got = torch.cat([params[n].grad.flatten() for n in names])  # type: ignore[union-attr]

    theta = torch.cat([params[n].detach().flatten() for n in names])
    hess = torch.autograd.functional.hessian(lambda v: inner(unflat(v)), theta)
    g_inner = torch.autograd.functional.jacobian(lambda v: inner(unflat(v)), theta)
    theta1 = theta - a * g_inner
    g_outer = torch.autograd.functional.jacobian(lambda v: outer(unflat(v)), theta1)
    expected = (torch.eye(len(theta)) - a * hess) @ g_outer
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_meta_sgd_rates_are_learned() -> None:
    # Per-parameter rates: dL/dα = -∇L_outer(θ') ∘ ∇L_inner(θ).
    w, c = scalar_problem()
    x1, y1, x2, y2 = c["x1"], c["y1"], c["x2"], c["y2"]
    alpha = torch.tensor(0.2, requires_grad=True)
    adapted = adapt(lambda p: (p["w"] * x1 - y1) ** 2, {"w": w}, lr={"w": alpha})
    ((adapted["w"] * x2 - y2) ** 2).backward()
    w0 = w.item()
    g_in = 2 * x1 * (w0 * x1 - y1)
    w1 = w0 - 0.2 * g_in
    assert alpha.grad is not None
    assert alpha.grad.item() == pytest.approx(-2 * (w1 * x2 - y2) * x2 * g_in, rel=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_adaptation_equals_a_loop_over_tasks(first_order: bool) -> None:
    model, _ = _mlp_problem()
    params = named_params(model)
    torch.manual_seed(1)
    xs, ys = torch.randn(3, 6, 2), torch.randn(3, 6, 1)
    xq, yq = torch.randn(3, 5, 2), torch.randn(3, 5, 1)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((forward(model, p, x) - y) ** 2).mean()

    def task_outer(x_s, y_s, x_q, y_q):  # type: ignore[no-untyped-def]
        adapted = adapt_func(loss, params, x_s, y_s, num_steps=2, lr=0.2, first_order=first_order)
        return loss(adapted, x_q, y_q)

    vmapped = vmap(task_outer)(xs, ys, xq, yq)
    grads_v = torch.autograd.grad(vmapped.sum(), list(params.values()))
    looped = []
    for i in range(3):
        adapted = adapt(
            lambda p, i=i: loss(p, xs[i], ys[i]),
            params,
            num_steps=2,
            lr=0.2,
            first_order=first_order,
        )
        looped.append(loss(adapted, xq[i], yq[i]))
    grads_l = torch.autograd.grad(torch.stack(looped).sum(), list(params.values()))
    torch.testing.assert_close(vmapped, torch.stack(looped))
    for gv, gl in zip(grads_v, grads_l, strict=True):
        torch.testing.assert_close(gv, gl)


def test_reptile_interpolation() -> None:
    theta = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)}
    phis = [
        {"w": torch.tensor([3.0, 2.0]), "b": torch.tensor(1.0)},
        {"w": torch.tensor([1.0, 6.0]), "b": torch.tensor(3.0)},
    ]
    new = reptile_update(theta, phis, step_size=0.5)
    torch.testing.assert_close(new["w"], torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(new["b"], torch.tensor(1.0))
    assert reptile_update(theta, phis, 1.0)["w"].tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="step size"):
        reptile_update(theta, phis, 0.0)


def test_adapt_leaves_the_module_alone_and_load_params() -> None:
    model, (xs, ys, _, _) = _mlp_problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = named_params(model)
    adapted = adapt(lambda p: ((forward(model, p, xs) - ys) ** 2).mean(), params, num_steps=3)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n])
    assert adapt(lambda p: p["0.weight"].sum(), params, num_steps=0) == params
    load_params(model, adapted)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), adapted[n].detach())
    with pytest.raises(KeyError, match="missing"):
        load_params(model, {"0.weight": adapted["0.weight"]})


def test_adapt_bad_input() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        adapt(lambda p: p["w"] * 2, {"w": w})
    with pytest.raises(ValueError, match="non-negative"):
        adapt(lambda p: p["w"].sum(), {"w": w}, num_steps=-1)
    with pytest.raises(ValueError, match="requires grad"):
        adapt(lambda p: p["w"].sum(), {"w": w.detach()})
