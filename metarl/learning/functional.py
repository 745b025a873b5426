"""Functional adaptation: the inner loop shared by MAML-RL, Reptile-RL and few-shot learning.

Parameters are ``dict[str, Tensor]`` (the names of ``module.named_parameters()``); a model is
called with given parameters through :func:`torch.func.functional_call`; an update returns
new parameters and never mutates the module. With ``first_order=False`` the returned
parameters are differentiable functions of the inputs, so an outer loss backpropagates
through the inner steps (second-order MAML).

References:
    Finn, Abbeel, Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks" (MAML; first-order MAML, Sec. 5.2).
    Li, Zhou, Chen, Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"
    (per-parameter learned inner rates).
    Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms" (Reptile).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(1, 1)
    >>> x, y = torch.randn(10, 1), torch.randn(10, 1)
    >>> params = named_params(model)
    >>> loss = lambda p: ((forward(model, p, x) - y) ** 2).mean()
    >>> adapted = adapt(loss, params, num_steps=2, lr=0.1)
    >>> outer = loss(adapted)
    >>> outer.backward()  # second-order gradient w.r.t. model.weight and model.bias
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

__all__ = [
    "LearningRate",
    "Params",
    "adapt",
    "adapt_func",
    "check_num_steps",
    "forward",
    "gradient_step",
    "load_params",
    "named_params",
    "reptile_update",
    "step_lr",
]

Params: TypeAlias = dict[str, Tensor]
#: A scalar, one scalar per inner step (e.g. ``[0.1, 0.05, 0.05]``), or per-parameter
#: rates (Meta-SGD: a tensor per parameter, the same shape as it).
LearningRate: TypeAlias = float | Tensor | Sequence[float] | Mapping[str, Tensor]


def named_params(module: nn.Module) -> Params:
    """The module's live parameters by name (gradients flow back to the module)."""
    return dict(module.named_parameters())


def forward(module: nn.Module, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` evaluated with ``params`` in place of its own parameters."""
    return functional_call(module, dict(params), args, kwargs)


def step_lr(lr: LearningRate, step: int) -> float | Tensor | Mapping[str, Tensor]:
    """The learning rate of inner step ``step`` (0-based); a sequence's last entry repeats."""
    if isinstance(lr, Mapping | float | int | Tensor):
        return lr
    rates = list(lr)
    if not rates:
        raise ValueError("an empty sequence of inner learning rates")
    return rates[min(step, len(rates) - 1)]


def gradient_step(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor | None],
    lr: float | Tensor | Mapping[str, Tensor],
) -> Params:
    """``θ' = θ − α ∘ ∇`` for every parameter; a parameter with no gradient is kept."""
    out: Params = {}
    for name, p in params.items():
        g = grads.get(name)
        if g is None:
            out[name] = p
            continue
        rate = lr[name] if isinstance(lr, Mapping) else lr
        out[name] = p - rate * g
    return out


def check_num_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")


def adapt(
    loss_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor],
    num_steps: int = 1,
    lr: LearningRate = 0.1,
    first_order: bool = False,
) -> Params:
    """``num_steps`` steps of gradient descent on ``loss_fn`` from ``params``.

    Args:
        loss_fn: the inner (support / training-rollout) loss as a function of parameters.
        params: the starting parameters, usually :func:`named_params` of the meta-model.
        num_steps: number of inner gradient steps; 0 returns ``params`` unchanged.
        lr: inner step size(s), see :data:`LearningRate`.
        first_order: drop the second-order terms (first-order MAML): the inner gradients
            are treated as constants, so ``d adapted / d params`` is the identity.

    Returns:
        The adapted parameters. Unless ``first_order``, they are differentiable functions of
        ``params`` (and of learned ``lr`` tensors, for Meta-SGD).
    """
    check_num_steps(num_steps)
    current = dict(params)
    for step in range(num_steps):
        loss = loss_fn(current)
        if loss.dim() != 0:
            raise ValueError(f"the inner loss must be a scalar, got shape {tuple(loss.shape)}")
        names = [n for n, p in current.items() if p.requires_grad]
        if not names:
            raise ValueError("no parameter requires grad; nothing to adapt")
        grads = torch.autograd.grad(
            loss,
            [current[n] for n in names],
            create_graph=not first_order,
            allow_unused=True,
        )
        current = gradient_step(current, dict(zip(names, grads, strict=True)), step_lr(lr, step))
    return current


def adapt_func(
    loss_fn: Callable[..., Tensor],
    params: Mapping[str, Tensor],
    *data: Any,
    num_steps: int = 1,
    lr: LearningRate = 0.1,
    first_order: bool = False,
) -> Params:
    """:func:`adapt` written with :func:`torch.func.grad`, so it composes with ``vmap``.

    ``loss_fn(params, *data)`` is the inner loss. Vectorise over a batch of tasks with
    ``torch.func.vmap(lambda *d: adapt_func(loss_fn, params, *d), ...)``: one call adapts
    every task, and the result stays differentiable for second-order MAML.
    """
    check_num_steps(num_steps)
    current = dict(params)
    grad_fn = grad(loss_fn)
    for step in range(num_steps):
        grads = grad_fn(current, *data)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        current = gradient_step(current, grads, step_lr(lr, step))
    return current


@torch.no_grad()
def reptile_update(
    meta_params: Mapping[str, Tensor],
    adapted: Sequence[Mapping[str, Tensor]],
    step_size: float,
) -> Params:
    """Reptile's outer step: ``θ ← θ + ε (mean_i φ_i − θ)`` (Nichol et al. 2018, Alg. 2).

    Returns new tensors; load them into a module with :func:`load_params`.
    """
    if not adapted:
        raise ValueError("reptile_update needs at least one adapted parameter set")
    if not 0 < step_size <= 1:
        raise ValueError(f"the Reptile step size ε must be in (0, 1], got {step_size}")
    out: Params = {}
    for name, theta in meta_params.items():
        mean = torch.stack([a[name].detach() for a in adapted]).mean(0)
        out[name] = theta.detach() + step_size * (mean - theta.detach())
    return out


@torch.no_grad()
def load_params(module: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Copy ``params`` into ``module``'s parameters in place (names must match)."""
    own = dict(module.named_parameters())
    missing, unexpected = set(own) - set(params), set(params) - set(own)
    if missing or unexpected:
        raise KeyError(
            f"parameter names do not match the module: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    for name, p in own.items():
        p.copy_(params[name])
