"""MAML and first-order MAML for few-shot classification and regression.

Per task ``i``: adapt ``θ`` on the support set with ``num_inner_steps`` gradient steps,
``θ'_i = θ − α ∇_θ L_support_i(θ)``, score ``θ'_i`` on the query set; the outer update is Adam
on ``Σ_i L_query_i(θ'_i)`` (Finn et al. 2017, Alg. 2). ``first_order=True`` drops the
second-order terms (Sec. 5.2). The meta-batch is vectorised over tasks: for a model with a
``forward_tasks`` method (:class:`~metarl.fewshot.models.Conv4`) by folding the tasks into
the channels of one grouped convolution per layer, otherwise with :func:`torch.func.vmap`
(``vectorize=False``: a Python loop over tasks, the way learn2learn and most tutorials do
it, kept for the side-by-side benchmark and as a reference).

References:
    Finn, Abbeel, Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks", ICML. Omniglot 5-way 1-shot: α = 0.4, 1 inner step in training and 3 at test,
    meta-batch 32, Adam 1e-3.

Example:
    >>> import numpy as np
    >>> from metarl.fewshot.data import SinusoidTasks
    >>> from metarl.fewshot.models import MLP
    >>> maml = MAML(MLP(), inner_lr=0.01, num_inner_steps=1)
    >>> metrics = maml.meta_train_step(SinusoidTasks(10).sample(4, np.random.default_rng(0)))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
from torch import Tensor, nn
from torch.func import vmap

from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, task_loss
from metarl.learning.functional import (
    LearningRate,
    Params,
    adapt,
    adapt_func,
    forward,
    gradient_step,
    named_params,
    step_lr,
)

__all__ = ["MAML"]


class MAML(Learner):
    """MAML (``first_order=False``) or first-order MAML over any ``nn.Module``.

    Args:
        model: the network; for classification its output size is N.
        inner_lr: inner step size α.
        num_inner_steps: inner steps in meta-training.
        num_eval_steps: inner steps at meta-test time (default: ``num_inner_steps``).
        first_order: first-order MAML.
        meta_lr: Adam's step size for the outer update.
        vectorize: vectorise the meta-batch (True) or loop over tasks in Python (False).
        fold_tasks: how a vectorised meta-batch runs: True folds the tasks into the
            channels (needs the model's ``forward_tasks``), False uses ``vmap``; None (the
            default) folds whenever the model can.
    """

    name = "maml"

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        num_inner_steps: int = 1,
        num_eval_steps: int | None = None,
        first_order: bool = False,
        meta_lr: float = 1e-3,
        vectorize: bool = True,
        fold_tasks: bool | None = None,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or meta_lr <= 0:
            raise ValueError(f"learning rates must be positive, got {inner_lr}, {meta_lr}")
        self.model = model
        self.inner_lr = inner_lr
        self.num_inner_steps = num_inner_steps
        self.num_eval_steps = num_inner_steps if num_eval_steps is None else num_eval_steps
        self.first_order = first_order
        self.vectorize = vectorize
        can_fold = callable(getattr(model, "forward_tasks", None))
        if fold_tasks and not can_fold:
            raise ValueError(
                f"fold_tasks=True needs a model with a forward_tasks method (Conv4 has one); "
                f"{type(model).__name__} has none: pass fold_tasks=None or False (vmap)"
            )
        self.fold_tasks = can_fold if fold_tasks is None else fold_tasks
        if first_order:
            self.name = "fomaml"
        self._build_extra()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=meta_lr)

    def _build_extra(self) -> None:
        """Hook for subclasses that add meta-parameters (Meta-SGD's rates)."""

    def inner_rates(self) -> LearningRate:
        return self.inner_lr

    def _inner_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return task_loss(forward(self.model, params, x), y)

    def adapt_and_query(
        self,
        batch: EpisodeBatch,
        num_steps: int,
        first_order: bool,
        params: Mapping[str, Tensor] | None = None,
        vectorize: bool | None = None,
    ) -> Tensor:
        """Adapt to every support set, return the query predictions ``(B, M, out)``."""
        params = named_params(self.model) if params is None else dict(params)
        lr = self.inner_rates()
        vectorize = self.vectorize if vectorize is None else vectorize
        if vectorize and self.fold_tasks:
            return self._adapt_and_query_folded(batch, num_steps, first_order, params, lr)
        if vectorize:

            def one_task(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
                adapted = adapt_func(
                    self._inner_loss,
                    params,
                    sx,
                    sy,
                    num_steps=num_steps,
                    lr=lr,
                    first_order=first_order,
                )
                return forward(self.model, adapted, qx)

            return vmap(one_task)(batch.support_x, batch.support_y, batch.query_x)
        preds = []
        for i in range(batch.num_tasks):
            sx, sy = batch.support_x[i], batch.support_y[i]

            def support_loss(p: Params, sx: Tensor = sx, sy: Tensor = sy) -> Tensor:
                return self._inner_loss(p, sx, sy)

            adapted = adapt(
                support_loss,
                params,
                num_steps=num_steps,
                lr=lr,
                first_order=first_order,
            )
            preds.append(forward(self.model, adapted, batch.query_x[i]))
        return torch.stack(preds)

    def _adapt_and_query_folded(
        self,
        batch: EpisodeBatch,
        num_steps: int,
        first_order: bool,
        params: Params,
        lr: LearningRate,
    ) -> Tensor:
        """:meth:`adapt_and_query` with every task's parameters stacked on a leading task
        dimension and the model's ``forward_tasks`` running all tasks at once.

        The tasks share no parameters after the stacking, so the gradient of the sum of the
        per-task support losses with respect to the stacked parameters is every task's own
        gradient; with ``create_graph`` it stays differentiable (second-order MAML) back
        through the stacking (an ``expand``, no copy) to ``params``.
        """
        run = cast(Callable[[Params, Tensor], Tensor], self.model.forward_tasks)
        b = batch.num_tasks
        current = {n: p.unsqueeze(0).expand(b, *p.shape) for n, p in params.items()}
        for step in range(num_steps):
            # task_loss is the mean over the tasks' equal-sized sets: × b = Σ_i L_i
            loss = task_loss(run(current, batch.support_x), batch.support_y) * b
            names = [n for n, p in current.items() if p.requires_grad]
            if not names:
                raise ValueError("no parameter requires grad; nothing to adapt")
            grads = torch.autograd.grad(
                loss, [current[n] for n in names], create_graph=not first_order
            )
            current = gradient_step(
                current, dict(zip(names, grads, strict=True)), step_lr(lr, step)
            )
        return run(current, batch.query_x)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        pred = self.adapt_and_query(batch, self.num_inner_steps, self.first_order)
        loss = task_loss(pred, batch.query_y)
        self._outer_step(loss)
        return self._metrics(loss, pred, batch.query_y)

    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        steps = self.num_eval_steps if num_steps is None else num_steps
        params = {n: p.detach().requires_grad_() for n, p in named_params(self.model).items()}
        with torch.enable_grad():
            pred = self.adapt_and_query(batch, steps, first_order=True, params=params)
        return pred.detach()
