"""MAML-TRPO's curvature as batched matrix products, for the project's own MLP policies.

TRPO's conjugate gradient needs products with the Hessian of the mean KL of the adapted
policies at the current meta-parameters ``θ``. The KL's gradient is zero there, so that
Hessian is exactly ``Σ_i J_iᵀ F_i J_i`` (see :mod:`metarl.agents.maml_trpo`): ``J_i`` the
Jacobian of task ``i``'s inner steps (``I − α H_i`` for one step, ``H_i`` the Hessian of its
inner loss), ``F_i`` the Fisher matrix of the adapted policy. For an MLP both come in closed
form from one cached forward pass per batch of rows:

* ``H v`` by Pearlmutter's R-forward and R-backward passes (Pearlmutter 1994, "Fast Exact
  Multiplication by the Hessian"; Schraudolph 2002, "Fast Curvature Matrix-Vector Products
  for Second-Order Gradient Descent"): six matrix products per layer, ``torch.bmm`` over the
  meta-batch's tasks, each task with its own weights and direction;
* ``F w = J_netᵀ M J_net w`` (Gauss–Newton form, ``M`` the Fisher in the network's outputs:
  ``1/σ²`` in the Gaussian mean and ``2`` in its log-std, ``diag(p) − ppᵀ`` in categorical
  logits; Schulman et al. 2015, App. C.1): one R-forward and one backward pass, four matrix
  products per layer.

No autograd graph is built or walked: a CG product is a fixed list of large matmuls and
elementwise products on the activations cached when the product is made. The inner loss is
the policy-gradient surrogate of :func:`metarl.adaptation.policy_gradient.reinforce_loss`,
``−Σ_r m_r A_r log π(a_r|s_r) / Σ_r m_r`` per task; the Fisher weighs each validation row by
its task's mask over its count, over the number of tasks (the mean KL of the outer step).
:func:`structured_curvature` returns None for a policy it does not know (another class, or an
MLP that is not ``Linear`` layers with ReLU or tanh between them): the caller then uses the
autograd products.

Example:
    >>> import torch
    >>> from metarl.learning.policies import GaussianMLPPolicy
    >>> policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    >>> net = MLPStructure.of(policy)
    >>> net.weights, net.nonlinearity
    (('mean.0.weight', 'mean.2.weight'), 'relu')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarl.adaptation.policy_gradient import TaskData
from metarl.learning.functional import Params
from metarl.learning.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy

__all__ = ["MLPStructure", "StructuredCurvature", "structured_curvature"]


def _bmm_t(x: Tensor, w: Tensor) -> Tensor:
    """``x @ wᵀ`` per task: ``x`` (N, R, in), ``w`` (N, out, in) → (N, R, out)."""
    return torch.bmm(x, w.transpose(1, 2))


def _outer(e: Tensor, h: Tensor) -> Tensor:
    """``Σ_r e_r h_rᵀ`` per task: ``e`` (N, R, out), ``h`` (N, R, in) → (N, out, in)."""
    return torch.bmm(e.transpose(1, 2), h)


@dataclass(frozen=True)
class MLPStructure:
    """What the structured products need to know of a policy: its MLP's parameter names
    (weight and bias of every ``Linear``, first to last), the nonlinearity, and the output
    head (``"gaussian"``: the mean, with a state-independent ``log_std``; ``"categorical"``:
    logits)."""

    policy: Policy
    head: str
    weights: tuple[str, ...]
    biases: tuple[str, ...]
    nonlinearity: str  # "relu" or "tanh"

    @staticmethod
    def of(policy: Policy) -> MLPStructure | None:
        """The structure of one of the project's MLP policies, or None for anything else."""
        if type(policy) is GaussianMLPPolicy:
            head, prefix, net = "gaussian", "mean", policy.mean
        elif type(policy) is CategoricalMLPPolicy:
            head, prefix, net = "categorical", "logits", policy.logits
        else:
            return None
        if not isinstance(net, nn.Sequential) or len(net) % 2 != 1:
            return None
        acts = {type(m) for i, m in enumerate(net) if i % 2}
        if len(acts) > 1 or not acts <= {nn.ReLU, nn.Tanh}:
            return None
        if not all(isinstance(m, nn.Linear) for i, m in enumerate(net) if i % 2 == 0):
            return None
        linear = [(f"{prefix}.{i}", m) for i, m in enumerate(net) if i % 2 == 0]
        if any(m.bias is None for _, m in linear):
            return None
        nonlinearity = "tanh" if acts == {nn.Tanh} else "relu"
        return MLPStructure(policy, head, tuple(f"{n}.weight" for n, _ in linear),
                            tuple(f"{n}.bias" for n, _ in linear), nonlinearity)  # fmt: skip

    def inputs(self, obs: Tensor, dtype: torch.dtype) -> Tensor:
        """The MLP's input rows for observations ``(N, R, ...)``, as the policy's forward."""
        policy = self.policy
        if isinstance(policy, CategoricalMLPPolicy):
            return policy._features(obs).to(dtype)
        assert isinstance(policy, GaussianMLPPolicy)
        return obs.reshape(*obs.shape[:2], policy.obs_dim).to(dtype)


class _Pass:
    """One cached forward pass of the MLP on a batch of rows, per task, with the backward
    signals of a loss whose gradient in the network's outputs is ``e_out``.

    ``hs[l]``: input of layer ``l`` (N, R, in); ``d1[l]``/``d2[l]``: first/second derivative
    of the nonlinearity after hidden layer ``l``; ``es[l]``: ``∂loss/∂a_l`` (the
    pre-activation of layer ``l``), set by :meth:`backward`."""

    def __init__(self, net: MLPStructure, params: Mapping[str, Tensor], x: Tensor) -> None:
        self.net = net
        self.w = [params[k] for k in net.weights]
        self.b = [params[k] for k in net.biases]
        self.hs: list[Tensor] = [x]
        self.d1: list[Tensor] = []
        self.d2: list[Tensor | None] = []
        h = x
        for layer in range(len(self.w) - 1):
            a = torch.baddbmm(self.b[layer].unsqueeze(1), h, self.w[layer].transpose(1, 2))
            if net.nonlinearity == "relu":
                h = a.clamp_min(0.0)
                self.d1.append((a > 0).to(a.dtype))
                self.d2.append(None)
            else:
                h = torch.tanh(a)
                d = 1 - h * h
                self.d1.append(d)
                self.d2.append(-2 * h * d)
            self.hs.append(h)
        self.out = torch.baddbmm(self.b[-1].unsqueeze(1), h, self.w[-1].transpose(1, 2))
        self.es: list[Tensor] = []
        self.dh: list[Tensor] = []  # ∂loss/∂h_l (before the nonlinearity's derivative)

    def backward(self, e_out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Gradients ``(∂W_l, ∂b_l)`` of the loss whose output gradient is ``e_out``;
        keeps the backward signals for :meth:`r_backward`."""
        e = e_out
        es, dh, grads = [e], [], []
        for layer in range(len(self.w) - 1, -1, -1):
            grads.append((_outer(e, self.hs[layer]), e.sum(1)))
            if layer:
                t = torch.bmm(e, self.w[layer])
                dh.append(t)
                e = self.d1[layer - 1] * t
                es.append(e)
        self.es, self.dh = es[::-1], dh[::-1]
        return grads[::-1]

    def r_forward(
        self, v: Sequence[Tensor], c: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Pearlmutter's R-forward pass for the direction ``(v_l, c_l)`` of the weights and
        biases: ``R{a_l}`` and ``R{h_l}`` of every hidden layer, and ``R{out}``."""
        ra_hidden: list[Tensor] = []
        rh_hidden: list[Tensor] = []
        rh: Tensor | None = None
        last = len(self.w) - 1
        for layer in range(last + 1):
            ra = torch.baddbmm(c[layer].unsqueeze(1), self.hs[layer], v[layer].transpose(1, 2))
            if rh is not None:
                ra.baddbmm_(rh, self.w[layer].transpose(1, 2))
            if layer == last:
                return ra_hidden, rh_hidden, ra
            rh = self.d1[layer] * ra
            ra_hidden.append(ra)
            rh_hidden.append(rh)
        raise AssertionError("unreachable")

    def transpose(self, e_out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``J_netᵀ e_out``: the gradients of ``⟨out, e_out⟩`` (no signals kept)."""
        e, grads = e_out, []
        for layer in range(len(self.w) - 1, -1, -1):
            grads.append((_outer(e, self.hs[layer]), e.sum(1)))
            if layer:
                e = torch.bmm(e, self.w[layer]).mul_(self.d1[layer - 1])
        return grads[::-1]

    def r_backward(
        self,
        v: Sequence[Tensor],
        ra_hidden: Sequence[Tensor],
        rh_hidden: Sequence[Tensor],
        r_out: Tensor,
    ) -> list[tuple[Tensor, Tensor]]:
        """Pearlmutter's R-backward pass: ``R{∂W_l}, R{∂b_l}`` given the R-forward pass and
        ``R{e_out}`` (``r_out``), for the loss of :meth:`backward`."""
        re, grads = r_out, []
        for layer in range(len(self.w) - 1, -1, -1):
            e = self.es[layer]
            gw = _outer(re, self.hs[layer])
            if layer:
                gw.baddbmm_(e.transpose(1, 2), rh_hidden[layer - 1])
            grads.append((gw, re.sum(1)))
            if layer:
                t = torch.bmm(re, self.w[layer]).baddbmm_(e, v[layer])
                re = t.mul_(self.d1[layer - 1])
                d2 = self.d2[layer - 1]
                if d2 is not None:
                    re.addcmul_(d2 * ra_hidden[layer - 1], self.dh[layer - 1])
        return grads[::-1]


class _InnerCurvature:
    """One inner step's Hessian-vector products ``H_i v`` for every task (and its gradient
    ``∇L_i``), from one cached pass over its episodes at the step's start parameters."""

    def __init__(self, net: MLPStructure, start: Mapping[str, Tensor], data: TaskData) -> None:
        dtype = start[net.weights[0]].dtype
        self.net = net
        self.pass_ = _Pass(net, start, net.inputs(data.obs, dtype))
        mask = data.mask.to(dtype)
        # The loss's weight of each row: −A m / Σ m (the mean over the task's live steps).
        weight = -(data.adv.to(dtype) * mask) / mask.sum(1, keepdim=True).clamp_min(1.0)
        z = self.pass_.out
        if net.head == "gaussian":
            policy = net.policy
            assert isinstance(policy, GaussianMLPPolicy)
            log_std = start["log_std"]  # (N, A)
            # clamp_min's derivative (1 where log σ ≥ its floor); its second derivative is 0.
            self.keep = (log_std >= policy.min_log_std).to(dtype).unsqueeze(1)
            lam = log_std.clamp_min(policy.min_log_std).unsqueeze(1)  # (N, 1, A)
            actions = data.actions.to(dtype)
            if policy.normalized:  # the affine action map: μ = c + s·z, σ = s·σ_net
                actions = (actions - policy.action_center) / policy.action_log_scale.exp()
            inv_var = torch.exp(-2 * lam)
            u = (actions - z) * torch.exp(-lam)  # standardised residual
            w = weight.unsqueeze(-1)
            self.e_out = w * (actions - z) * inv_var  # ∂L/∂z
            self.g_lam = (self.keep * (w * (u * u - 1))).sum(1)  # ∂L/∂log σ (N, A)
            # Second derivatives of L in (z_r, λ): −w e^{−2λ}, −2 w u e^{−λ}, Σ −2 w u².
            self.h_zz = -w * inv_var
            self.h_zl = -2 * w * u * torch.exp(-lam)
            self.h_ll = (-2 * w * u * u).sum(1)
        else:
            p = torch.softmax(z, -1)
            onehot = nn.functional.one_hot(data.actions.long(), z.shape[-1]).to(dtype)
            self.p, self.w = p, weight.unsqueeze(-1)
            self.e_out = self.w * (onehot - p)
        grads = self.pass_.backward(self.e_out)
        self.grad: Params = {}
        for (gw, gb), kw, kb in zip(grads, net.weights, net.biases, strict=True):
            self.grad[kw], self.grad[kb] = gw, gb
        if net.head == "gaussian":
            self.grad["log_std"] = self.g_lam

    def hvp(self, v: Mapping[str, Tensor]) -> Params:
        """``H_i v_i`` per task (``v`` with the leading task dimension)."""
        net, ps = self.net, self.pass_
        vw = [v[k] for k in net.weights]
        ra_hidden, rh_hidden, rz = ps.r_forward(vw, [v[k] for k in net.biases])
        out: Params = {}
        if net.head == "gaussian":
            dlam = self.keep * v["log_std"].unsqueeze(1)  # (N, 1, A)
            r_out = self.h_zz * rz + self.h_zl * dlam
            out["log_std"] = self.keep[:, 0] * ((self.h_zl * rz).sum(1) + self.h_ll * dlam[:, 0])
        else:
            p = self.p
            r_out = -self.w * (p * rz - p * (p * rz).sum(-1, keepdim=True))
        grads = ps.r_backward(vw, ra_hidden, rh_hidden, r_out)
        for (gw, gb), kw, kb in zip(grads, net.weights, net.biases, strict=True):
            out[kw], out[kb] = gw, gb
        return out


class _FisherCurvature:
    """``F_i w_i`` per task in Gauss–Newton form at the adapted parameters, on the
    validation rows, each weighted by its task's mask over its count, over the number of
    tasks ``n`` (of the whole meta-batch, not only of this chunk)."""

    def __init__(
        self, net: MLPStructure, adapted: Mapping[str, Tensor], data: TaskData, n: int
    ) -> None:
        dtype = adapted[net.weights[0]].dtype
        self.net = net
        self.pass_ = _Pass(net, adapted, net.inputs(data.obs, dtype))
        mask = data.mask.to(dtype)
        self.weight = (mask / mask.sum(1, keepdim=True).clamp_min(1.0) / n).unsqueeze(-1)
        z = self.pass_.out
        if net.head == "gaussian":
            policy = net.policy
            assert isinstance(policy, GaussianMLPPolicy)
            log_std = adapted["log_std"]
            self.keep = (log_std >= policy.min_log_std).to(dtype)  # (N, A)
            lam = log_std.clamp_min(policy.min_log_std).unsqueeze(1)
            # M in z: s·(1/σ²)·s = e^{−2λ} (the action scale s cancels); in log σ: 2.
            self.m_z = self.weight * torch.exp(-2 * lam)
            self.m_lam = 2 * self.weight.sum(1)  # (N, 1): Σ_r weight_r · 2
        else:
            self.p = torch.softmax(z, -1)

    def product(self, w: Mapping[str, Tensor]) -> Params:
        net, ps = self.net, self.pass_
        _, _, rz = ps.r_forward([w[k] for k in net.weights], [w[k] for k in net.biases])
        out: Params = {}
        if net.head == "gaussian":
            cot = self.m_z * rz
            out["log_std"] = self.keep * self.m_lam * (self.keep * w["log_std"])
        else:
            p = self.p
            cot = self.weight * (p * rz - p * (p * rz).sum(-1, keepdim=True))
        for (gw, gb), kw, kb in zip(ps.transpose(cot), net.weights, net.biases, strict=True):
            out[kw], out[kb] = gw, gb
        return out


#: Rows per chunk of tasks in the structured products on a CPU: each chunk goes through the
#: whole product (inner steps, Fisher, transpose) before the next, so its temporaries stay
#: in the core's cache. One nav2d task (2000 rows, 2×100 policy: 0.8 MB per activation
#: tensor) per chunk ran the hidden layer's matmuls 2.6x faster per row than all 20 tasks
#: in one ``bmm`` on the 2-core CPU (scripts/profile_maml_curvature.py). A GPU takes all
#: tasks at once.
CHUNK_ROWS = 2048


class _Chunk:
    """The cached passes of one chunk of tasks: its inner steps and its Fisher."""

    def __init__(
        self,
        net: MLPStructure,
        steps: Sequence[tuple[Mapping[str, Tensor], TaskData]],
        valid: TaskData,
        adapted: Mapping[str, Tensor],
        lr: float | Mapping[str, Tensor],
        first_order: bool,
        num_tasks: int,
    ) -> None:
        self.lr = lr
        self.inner = [] if first_order else [_InnerCurvature(net, s, d) for s, d in steps]
        self.fisher = _FisherCurvature(net, adapted, valid, num_tasks)

    def jvp(self, w: Params, u: Mapping[str, Tensor] | None = None) -> Params:
        """``J_i w_i`` through every inner step (``u``: Meta-SGD's tangent of ``α``)."""
        for step in self.inner:
            hw = step.hvp(w)
            if isinstance(self.lr, Mapping):
                assert u is not None
                rates, g = self.lr, step.grad
                w = {k: w[k] - rates[k] * hw[k] - g[k] * u[k] for k in w}
            else:
                w = {k: w[k] - self.lr * hw[k] for k in w}
        return w

    def vjp(self, w: Params) -> tuple[Params, Params | None]:
        """``J_iᵀ w_i`` per task through every inner step, last to first, and with Meta-SGD
        rates the cotangent of ``α`` summed over the chunk's tasks and the steps."""
        if not isinstance(self.lr, Mapping):
            for step in reversed(self.inner):
                hw = step.hvp(w)  # J = I − αH is symmetric
                w = {k: w[k] - self.lr * hw[k] for k in w}
            return w, None
        rates = self.lr
        on_rates = {k: torch.zeros_like(v) for k, v in rates.items()}
        for step in reversed(self.inner):
            g = step.grad
            on_rates = {k: on_rates[k] - (g[k] * w[k]).sum(0) for k in on_rates}
            h_aw = step.hvp({k: rates[k] * w[k] for k in w})
            w = {k: w[k] - h_aw[k] for k in w}
        return w, on_rates


class StructuredCurvature:
    """MAML-TRPO's ``Σ_i J_iᵀ F_i J_i v`` and ``Σ_i J_iᵀ w_i`` through cached passes, chunk
    of tasks by chunk (:data:`CHUNK_ROWS`).

    ``steps``: each inner step's per-task start parameters ``(N, ...)`` and episodes, in
    order; ``lr``: the scalar inner rate ``α`` or Meta-SGD's per-entry rates (one tensor per
    parameter, shared by the tasks; vectors are then on ``(θ, α)``, ``α``'s entries named
    ``rate_prefix + name``); ``first_order``: ``J_i = I``. Build it with
    :func:`structured_curvature`."""

    def __init__(
        self,
        net: MLPStructure,
        steps: Sequence[tuple[Mapping[str, Tensor], TaskData]],
        valid: TaskData,
        adapted: Mapping[str, Tensor],
        lr: float | Mapping[str, Tensor],
        first_order: bool,
        rate_prefix: str = "α:",
    ) -> None:
        self.lr, self.rate_prefix = lr, rate_prefix
        self.names = [*net.weights, *net.biases] + (["log_std"] if net.head == "gaussian" else [])
        n, rows = valid.obs.shape[0], valid.obs.shape[1]
        size = n if valid.obs.device.type != "cpu" else max(1, CHUNK_ROWS // max(1, rows))
        self.chunks: list[tuple[slice, _Chunk]] = []
        for i in range(0, n, size):
            c = slice(i, min(i + size, n))

            def part(p: Mapping[str, Tensor], c: slice = c) -> Params:
                return {k: v[c] for k, v in p.items()}

            self.chunks.append((c, _Chunk(net, [(part(s), d.chunk(c)) for s, d in steps],
                                          valid.chunk(c), part(adapted), lr,
                                          first_order, n)))  # fmt: skip

    def _total(self, parts: list[tuple[Params, Params | None]]) -> Params:
        out = {k: sum(p[k].sum(0) for p, _ in parts) for k in self.names}
        if isinstance(self.lr, Mapping):
            out.update({self.rate_prefix + k: sum(r[k] for _, r in parts if r is not None)
                        for k in self.lr})  # fmt: skip
        return out  # type: ignore[return-value]

    def product(self, v: Mapping[str, Tensor]) -> Params:
        """``Σ_i J_iᵀ F_i J_i v`` for a vector ``v`` of ``θ`` (or ``(θ, α)``)."""
        u = None
        if isinstance(self.lr, Mapping):
            u = {k: v[self.rate_prefix + k] for k in self.lr}
        parts = []
        for c, chunk in self.chunks:
            n = c.stop - c.start
            w = {k: v[k].expand(n, *v[k].shape) for k in self.names}
            parts.append(chunk.vjp(chunk.fisher.product(chunk.jvp(w, u))))
        return self._total(parts)

    def back_to_theta(self, w: Mapping[str, Tensor]) -> Params:
        """``Σ_i J_iᵀ w_i`` for per-task cotangents ``w`` of the adapted parameters (the
        meta-gradient from the outer loss's gradient)."""
        return self._total([chunk.vjp({k: w[k][c] for k in self.names})
                            for c, chunk in self.chunks])  # fmt: skip


def structured_curvature(
    policy: Policy,
    steps: Sequence[tuple[Mapping[str, Tensor], TaskData]],
    valid: TaskData,
    adapted: Mapping[str, Tensor],
    lr: float | Mapping[str, Tensor],
    first_order: bool,
    rate_prefix: str = "α:",
) -> StructuredCurvature | None:
    """The structured products for ``policy``, or None when it is not one of the project's
    MLP policies (:meth:`MLPStructure.of`). ``steps``' start parameters and ``adapted`` may
    hold more tasks than the data: the first ones are used (the ``--cg-subsample`` of
    tasks)."""
    net = MLPStructure.of(policy)
    if net is None:
        return None
    n = valid.obs.shape[0]

    def first(p: Mapping[str, Tensor]) -> Params:
        return {k: v[:n].detach() for k, v in p.items()}

    return StructuredCurvature(net, [(first(s), d) for s, d in steps], valid, first(adapted),
                               lr, first_order, rate_prefix)  # fmt: skip
