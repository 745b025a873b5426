"""The TRPO solver: conjugate gradient, step scaling and backtracking line search.

Schulman et al. 2015, "Trust Region Policy Optimization", App. C: the search direction
``s ≈ A⁻¹ g`` by conjugate gradient on products with the KL Hessian ``A``, scaled so that the
quadratic model of the KL reaches the trust region, ``½ (βs)ᵀ A (βs) = δ``, then shrunk until
the surrogate improves and the measured KL stays within ``δ``.

Vectors are parameter dicts (``name -> Tensor``), so the solver works for any set of
parameters — a policy's, or MAML's ``(θ, α)`` of Meta-SGD — without flattening them.

Example:
    >>> import torch
    >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    >>> x = conjugate_gradient(lambda v: {"w": a @ v["w"]}, {"w": torch.tensor([1.0, 2.0])}, 10)
    >>> torch.allclose(a @ x["w"], torch.tensor([1.0, 2.0]))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LineSearchResult", "conjugate_gradient", "dot", "line_search", "trust_region_step"]

Vector = dict[str, Tensor]


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """``Σ_k ⟨a_k, b_k⟩`` over the entries of two parameter dicts."""
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Vector:
    """``y + α x`` entry by entry."""
    return {k: y[k] + alpha * x[k] for k in y}


def conjugate_gradient(
    mvp: Callable[[Vector], Vector],
    b: Vector,
    iters: int,
    tol: float = 1e-10,
    *,
    product: dict[str, Tensor] | None = None,
) -> Vector:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given by ``mvp`` (Hestenes and
    Stiefel 1952), as in TRPO's reference implementation.

    ``product``: if given, filled with ``A x``. CG builds ``x = Σ α_i p_i`` from the products
    ``A p_i`` it computes anyway, so ``A x = Σ α_i A p_i`` costs no extra product; TRPO's step
    length needs ``xᵀ A x`` (Schulman et al. 2015, Appendix C), which the reference
    implementation gets from one more call of ``mvp``."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    ax = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rr = dot(r, r)
    for _ in range(iters):
        ap = mvp(p)
        alpha = rr / dot(p, ap).clamp_min(1e-30)
        x = axpy(alpha, p, x)
        ax = axpy(alpha, ap, ax)
        r = axpy(-alpha, ap, r)
        rr_new = dot(r, r)
        if rr_new < tol:
            break
        p = axpy(rr_new / rr, p, r)
        rr = rr_new
    if product is not None:
        product.update(ax)
    return x


def trust_region_step(
    mvp: Callable[[Vector], Vector], grad: Vector, max_kl: float, cg_iters: int
) -> Vector:
    """TRPO's full step ``β s``: ``s`` the conjugate-gradient solution of ``A s = g`` (``g``
    the gradient of the loss to *minimise*; the caller steps ``θ − β s``) and
    ``β = sqrt(2δ / sᵀAs)``, the length at which the quadratic model of the KL is ``δ``."""
    h_direction: dict[str, Tensor] = {}
    direction = conjugate_gradient(mvp, grad, cg_iters, product=h_direction)
    shs = 0.5 * dot(direction, h_direction)
    lagrange = torch.sqrt(shs.clamp_min(1e-20) / max_kl)
    return {k: v / lagrange for k, v in direction.items()}


@dataclass(frozen=True)
class LineSearchResult:
    """What the backtracking line search found.

    ``fraction``: the accepted share of the full step (0 when none was accepted);
    ``loss``/``kl``: the surrogate and KL at the accepted step (the old loss and 0 when none
    was)."""

    accepted: bool
    fraction: float
    loss: float
    kl: float


def line_search(
    try_step: Callable[[float], tuple[float, float]],
    old_loss: float,
    max_kl: float,
    max_steps: int,
    backtrack_ratio: float,
) -> LineSearchResult:
    """Backtracking: try fractions ``1, r, r², …`` of the full step (``max_steps`` of them)
    and accept the first whose surrogate loss is finite and below ``old_loss`` with a KL
    within ``max_kl``.

    ``try_step(fraction) -> (loss, kl)`` evaluates the candidate; it is called once per
    fraction, in order, and the caller keeps whatever the accepted call computed (the last
    call is the accepted one when ``accepted``)."""
    fraction = 1.0
    for _ in range(max_steps):
        loss, kl = try_step(fraction)
        if loss < old_loss and kl <= max_kl and math.isfinite(loss):
            return LineSearchResult(True, fraction, loss, kl)
        fraction *= backtrack_ratio
    return LineSearchResult(False, 0.0, old_loss, 0.0)
