"""Reptile for few-shot classification and regression, with and without transduction.

Per task: from ``θ``, ``num_inner_steps`` steps of Adam (β₁ = 0, as in Nichol et al.'s
code) on mini-batches of the task's labelled examples give ``φ_i``; then
``θ ← θ + ε (mean_i φ_i − θ)`` with ``ε`` annealed linearly from ``meta_step`` to
``meta_step_final`` over ``total_iterations`` (Nichol et al. 2018, Alg. 2, "batched"
version). In meta-training the labelled examples are the support and query sets together
(Nichol et al. train on ``train_shots`` examples per class); at meta-test time only the
support set, for ``num_eval_steps`` steps.

Transduction: with ``transductive=True`` the query set is classified in one batch, so batch
statistics come from the whole query set (the setting of Reptile's 97.68%); with False each
query image is classified in a batch with the support set alone (Nichol et al.'s
non-transductive evaluation), so no query sees another. The inner loop is vectorised over
tasks with ``vmap``.

References:
    Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms". Omniglot
    5-way 1-shot: inner Adam 1e-3, 5 inner steps of batch 10, meta-batch 5, ε 1 → 0,
    50 test-time steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, task_loss
from metarl.learning.functional import Params, forward, load_params, named_params, reptile_update

__all__ = ["Reptile"]


class Reptile(Learner):
    """Reptile over any ``nn.Module`` (see the module docstring for the arguments' roles)."""

    name = "reptile"

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 1e-3,
        num_inner_steps: int = 5,
        inner_batch_size: int = 10,
        num_eval_steps: int = 50,
        meta_step: float = 1.0,
        meta_step_final: float = 0.0,
        total_iterations: int = 100_000,
        transductive: bool = True,
        adam_beta2: float = 0.999,
    ) -> None:
        super().__init__()
        if not 0 < meta_step <= 1 or not 0 <= meta_step_final <= 1:
            raise ValueError(f"meta steps must be in (0, 1], got {meta_step}, {meta_step_final}")
        self.model = model
        self.inner_lr = inner_lr
        self.num_inner_steps = num_inner_steps
        self.inner_batch_size = inner_batch_size
        self.num_eval_steps = num_eval_steps
        self.meta_step = meta_step
        self.meta_step_final = meta_step_final
        self.total_iterations = max(1, total_iterations)
        self.transductive = transductive
        self.beta2 = adam_beta2
        if not transductive:
            self.name = "reptile-nontransductive"
        self.iteration: Tensor
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def _inner_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return task_loss(forward(self.model, params, x), y)

    def inner_loop(self, x: Tensor, y: Tensor, num_steps: int) -> Params:
        """Adam (β₁ = 0) from the meta-parameters on every task: ``x`` is ``(B, M, ...)``.

        Returns the adapted parameters with a leading task dimension.
        """
        params = {n: p.detach() for n, p in named_params(self.model).items()}
        grad_fn = grad(self._inner_loss)
        m = x.shape[1]
        bs = min(self.inner_batch_size, m)
        eps, lr, b2 = 1e-8, self.inner_lr, self.beta2

        def one_task(x: Tensor, y: Tensor, order: Tensor) -> Params:
            p = dict(params)
            v = {n: torch.zeros_like(t) for n, t in p.items()}
            for step in range(num_steps):
                idx = order[step]
                g = grad_fn(p, x[idx], y[idx])
                for n in p:
                    v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
                    v_hat = v[n] / (1 - b2 ** (step + 1))
                    p[n] = p[n] - lr * g[n] / (torch.sqrt(v_hat) + eps)
            return p

        # The same mini-batch schedule for every task: cycle through a shuffle of the M
        # examples (Nichol et al. draw mini-batches without replacement per pass).
        order = _minibatch_schedule(m, bs, num_steps, x.device)
        orders = order.expand(x.shape[0], *order.shape)
        with torch.no_grad():
            return vmap(one_task)(x, y, orders)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        adapted = self.inner_loop(x, y, self.num_inner_steps)
        frac = min(1.0, int(self.iteration.item()) / self.total_iterations)
        eps = frac * self.meta_step_final + (1 - frac) * self.meta_step
        meta = named_params(self.model)
        per_task = [{n: t[i] for n, t in adapted.items()} for i in range(batch.num_tasks)]
        load_params(self.model, reptile_update(meta, per_task, eps))
        self.iteration.add_(1)
        with torch.no_grad():
            pred = vmap(lambda p, x: forward(self.model, p, x))(adapted, batch.query_x)
            loss = task_loss(pred, batch.query_y)
        return {**self._metrics(loss, pred, batch.query_y), "meta_step": eps}

    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        steps = self.num_eval_steps if num_steps is None else num_steps
        adapted = self.inner_loop(batch.support_x, batch.support_y, steps)
        with torch.no_grad():
            if self.transductive:
                return vmap(lambda p, x: forward(self.model, p, x))(adapted, batch.query_x)

            def one_query(p: Params, sx: Tensor, q: Tensor) -> Tensor:
                return forward(self.model, p, torch.cat([sx, q[None]]))[-1]

            def one_task(p: Params, sx: Tensor, qx: Tensor) -> Tensor:
                return vmap(one_query, in_dims=(None, None, 0))(p, sx, qx)

            return vmap(one_task)(adapted, batch.support_x, batch.query_x)

    def train_state(self) -> dict[str, object]:
        return {"model": self.state_dict(), "optimizer": None}


def _minibatch_schedule(m: int, batch_size: int, num_steps: int, device: torch.device) -> Tensor:
    """``(num_steps, batch_size)`` example indices: successive slices of reshuffles of ``m``."""
    idx: list[Tensor] = []
    need = num_steps * batch_size
    while sum(len(t) for t in idx) < need:
        idx.append(torch.randperm(m))
    return torch.cat(idx)[:need].view(num_steps, batch_size).to(device)
