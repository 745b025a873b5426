"""Meta Networks (MetaNet, Munkhdalai & Yu 2017): fast weights from loss gradients.

Two networks, each with slow weights learned across tasks by the outer Adam update, and
fast weights generated per task from *meta-information* -- loss gradients on the support set:

- the **base learner** ``b`` classifies: a conv trunk, then a hidden and an output layer whose
  slow weights ``W`` are *augmented* by fast weights ``W*`` (layer augmentation, Sec. 3.3):
  the hidden layer outputs ``relu(W₁ h) + relu(W₁* h)``, the output layer ``W₂ a + W₂* a``;
- the **meta learner** holds the representation function ``u`` (a conv trunk and a key layer
  with slow weights ``Q``) and two fast weight generators, ``d`` and ``g``.

Per episode (Alg. 1):

1. *Representation fast weights*: the gradient ``∇_Q L_emb`` of a representation loss over
   pairs of the support set (a contrastive loss: same-class pairs pulled together,
   different-class pairs apart, on the cosine of their keys) gives the task-level fast
   weights of the key layer, ``Q* = d(∇_Q L_emb)``.
2. *Example-level fast weights*: for every support example ``x'_i``, the gradient of the base
   learner's loss ``∇_i = ∇_W L(b(W, x'_i), y'_i)`` gives ``W*_i = g(∇_i)``, stored in a
   memory ``M`` under the key ``r'_i = u(Q, Q*, x'_i)``.
3. *Query*: ``r = u(Q, Q*, x)``, attention ``a = softmax(s · cos(R, r))`` over the memory's
   keys, the query's fast weights ``W* = Σ_i a_i W*_i``, and the prediction of the
   fast-weight-augmented base learner ``b(W, W*, x)``. The query cross-entropy trains every
   slow weight end to end (through the generated fast weights and the gradients that made
   them: the meta-information is a differentiable function of the slow weights).

Gradients are preprocessed coordinate-wise as Andrychowicz et al. 2016 propose (``p = 10``:
``(log|x| / p, sign x)`` for ``|x| ≥ e⁻ᵖ``, else ``(−1, eᵖ x)``), and ``d`` and ``g`` are small
MLPs applied to every coordinate (one generated fast weight per slow weight).

Choices where the paper leaves room or where the CPU budget decided (see the docs page):
fast weights augment the base learner's two fully connected layers and the key layer (the
conv trunks keep slow weights only); ``d`` is an MLP on the mean gradient over the support
pairs (the paper's ``d`` is an LSTM over ``T`` sampled pairs); the attention has a learned
inverse temperature ``s`` (initialised to 10).

References:
    Munkhdalai, Yu 2017, "Meta Networks", ICML. Omniglot 1-shot: 98.95% (5-way), 97.00%
    (20-way).
    Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent"
    (the gradient preprocessing).

Example:
    >>> import numpy as np
    >>> from metarl.fewshot.data import EpisodeSampler, ImageClasses
    >>> from metarl.fewshot.models import MLP
    >>> rng = np.random.default_rng(0)
    >>> imgs = [rng.integers(0, 256, (4, 1, 4, 4), dtype=np.uint8) for _ in range(6)]
    >>> episodes = EpisodeSampler(ImageClasses(imgs, list("abcdef")), 3, 1, 2)
    >>> net = MetaNet(nn.Sequential(nn.Flatten(), MLP((16, 8))), nn.Sequential(nn.Flatten(),
    ...               MLP((16, 8))), feature_dim=8, num_ways=3)
    >>> metrics = net.meta_train_step(episodes.sample(2, rng))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, num_ways
from metarl.learning.functional import Params, forward, named_params

__all__ = ["MetaNet", "preprocess_gradient"]

#: Andrychowicz et al. 2016's ``p``: gradients below ``e^-p`` in magnitude are scaled, not logged.
GRADIENT_P = 10.0


def preprocess_gradient(g: Tensor, p: float = GRADIENT_P) -> Tensor:
    """``(..., ) → (..., 2)``: ``(log|g| / p, sign g)`` where ``|g| ≥ e^-p``, else
    ``(−1, e^p g)`` (Andrychowicz et al. 2016, App. A)."""
    big = g.abs() >= math.exp(-p)
    log_part = torch.where(big, torch.log(g.abs().clamp_min(math.exp(-p))) / p, -torch.ones_like(g))
    sign_part = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


class _Generator(nn.Module):
    """A fast weight generator applied to every coordinate: preprocessed gradient → weight."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, gradient: Tensor) -> Tensor:
        return self.net(preprocess_gradient(gradient)).squeeze(-1)


class _BaseHead(nn.Module):
    """The base learner's augmented layers with slow weights only: ``h → logits``."""

    def __init__(self, feature_dim: int, fc_size: int, num_ways: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(feature_dim, fc_size)
        self.output = nn.Linear(fc_size, num_ways)

    def forward(self, h: Tensor) -> Tensor:
        return self.output(F.relu(self.hidden(h)))


class MetaNet(Learner):
    """Meta Networks over two trunks (``x → (D,)`` features each; see the module doc).

    Args:
        base_trunk: the base learner's feature network (e.g. a :class:`Conv4` embedding).
        key_trunk: the representation function's feature network.
        feature_dim: ``D``, the trunks' output size.
        num_ways: N of the N-way episodes (the base learner's outputs).
        fc_size: width of the base learner's augmented hidden layer.
        key_size: size of the memory keys.
        generator_size: hidden width of the generators ``g`` and ``d``.
        fast_weights: False drops every fast weight: the same slow networks alone (an
            ablation, which cannot beat chance on episodes with shuffled labels).
        lr: Adam's step size.
    """

    name = "metanet"

    def __init__(
        self,
        base_trunk: nn.Module,
        key_trunk: nn.Module,
        feature_dim: int,
        num_ways: int,
        fc_size: int = 64,
        key_size: int = 64,
        generator_size: int = 20,
        fast_weights: bool = True,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.num_classes = num_ways
        self.base_trunk = base_trunk
        self.key_trunk = key_trunk
        self.head = _BaseHead(feature_dim, fc_size, num_ways)
        self.key = nn.Linear(feature_dim, key_size)
        self.g = _Generator(generator_size)  # example-level fast weights of the base learner
        self.d = _Generator(generator_size)  # task-level fast weights of the key layer
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.fast_weights = fast_weights
        if not fast_weights:
            self.name = "metanet-slow-only"
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    # -- one episode ------------------------------------------------------------------------
    def _head_loss(self, params: Params, h: Tensor, y: Tensor) -> Tensor:
        """The base learner's loss on one support example (slow weights only)."""
        return F.cross_entropy(forward(self.head, params, h[None]), y[None])

    def _embedding_loss(self, params: Params, z: Tensor, y: Tensor) -> Tensor:
        """The representation loss: every support pair's cosine, same class or not."""
        r = F.normalize(forward(self.key, params, z), dim=-1)
        cos = r @ r.T
        same = (y[:, None] == y[None, :]).to(cos.dtype)
        pairs = torch.triu(torch.ones_like(cos), diagonal=1)
        scale = self.log_scale.exp()
        loss = F.binary_cross_entropy_with_logits(scale * cos, same, reduction="none")
        return (loss * pairs).sum() / pairs.sum().clamp_min(1.0)

    def _episode(self, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        """One episode's query logits ``(Q, N)``."""
        s = sx.shape[0]
        x = torch.cat([sx, qx])
        h = self.base_trunk(x)  # (S+Q, D): batch statistics over the episode
        head = named_params(self.head)
        if not self.fast_weights:
            return forward(self.head, head, h[s:])
        z = self.key_trunk(x)
        # 1. the key layer's task-level fast weights from the representation loss's gradient
        key = named_params(self.key)
        key_fast = {n: self.d(g) for n, g in grad(self._embedding_loss)(key, z[:s], sy).items()}

        def keys(z: Tensor) -> Tensor:
            return forward(self.key, key, z) + forward(self.key, key_fast, z)

        # 2. every support example's fast weights from its loss gradient, keyed in memory
        grads = vmap(grad(self._head_loss), in_dims=(None, 0, 0))(head, h[:s], sy)
        memory = {n: self.g(g) for n, g in grads.items()}  # name -> (S, *shape)
        # 3. the query's fast weights: attention over the memory by cosine of the keys
        r = keys(z)
        cos = F.normalize(r[s:], dim=-1) @ F.normalize(r[:s], dim=-1).T  # (Q, S)
        attention = torch.softmax(self.log_scale.exp() * cos, dim=-1)
        fast = {n: torch.einsum("qs,s...->q...", attention, m) for n, m in memory.items()}
        hq = h[s:]
        hidden = F.relu(
            forward(
                self.head.hidden, {"weight": head["hidden.weight"], "bias": head["hidden.bias"]}, hq
            )
        )
        hidden = hidden + F.relu(
            torch.einsum("qod,qd->qo", fast["hidden.weight"], hq) + fast["hidden.bias"]
        )
        slow_out = hidden @ head["output.weight"].T + head["output.bias"]
        fast_out = torch.einsum("qno,qo->qn", fast["output.weight"], hidden) + fast["output.bias"]
        return slow_out + fast_out

    def _logits(self, batch: EpisodeBatch) -> Tensor:
        if num_ways(batch) > self.num_classes:
            raise ValueError(
                f"this MetaNet has {self.num_classes} outputs, the episodes are "
                f"{num_ways(batch)}-way; train it for that N"
            )
        return vmap(self._episode)(batch.support_x, batch.support_y, batch.query_x)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.query_y.reshape(-1))
        self._outer_step(loss)
        return self._metrics(loss, logits, batch.query_y)

    def predict(self, batch: EpisodeBatch) -> Tensor:
        with torch.no_grad():  # torch.func.grad still computes the meta-information inside
            return self._logits(batch)[..., : num_ways(batch)]
