"""A memory-augmented neural network (MANN, Santoro et al. 2016) for N-way K-shot episodes.

An LSTM controller reads and writes an external memory ``M`` (``memory_size × memory_dim``)
with least-recently-used access (LRUA). At step ``t`` the input is the image ``x_t`` and the
*previous* step's one-hot label ``y_{t−1}``, so the label of an image arrives one step after
it: the net must bind the two in memory and recall the binding when the class reappears.
Per read head, from the controller state ``h_t`` (Santoro et al. Sec. 3.1–3.2):

- key ``k_t = tanh(W_k h_t)`` and gate ``α_t = σ(W_α h_t)``;
- write weights ``w^w_t = α_t w^r_{t−1} + (1 − α_t) w^lu_{t−1}``;
  the least used location is zeroed, then ``M_t(i) = M_{t−1}(i) + w^w_t(i) k_t``;
- read weights ``w^r_t = softmax_i(cos(k_t, M_t(i)))``, read ``r_t = Σ_i w^r_t(i) M_t(i)``;
- usage ``w^u_t = γ w^u_{t−1} + w^r_t + w^w_t``; ``w^lu_t`` marks the ``n`` least used
  locations (``n`` = number of read heads); here head ``j`` gets the ``j``-th least used
  one, so every head's write weights sum to one (the paper leaves this detail open).

The output is ``softmax(W_o [h_t, r_t])``. An episode is the support set in random order
(each prediction before its label is seen is trained, as in the paper), then every query
image is answered from the state after the support set, in parallel, so no query sees another
and the result is comparable with the other learners' N-way K-shot accuracy.

References:
    Santoro, Bartunov, Botvinick, Wierstra, Lillicrap 2016, "Meta-Learning with
    Memory-Augmented Neural Networks", ICML (LSTM 200 units, 128 × 40 memory, 4 read heads,
    γ = 0.95).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, num_ways

__all__ = ["MANN"]


@dataclass
class _State:
    h: Tensor  # (B, H) controller hidden
    c: Tensor  # (B, H) controller cell
    memory: Tensor  # (B, Nm, Dm)
    read: Tensor  # (B, R, Dm) last reads
    w_read: Tensor  # (B, R, Nm)
    usage: Tensor  # (B, Nm)

    def expand(self, q: int) -> _State:
        """Repeat every episode's state ``q`` times: ``(B, ...) → (B*q, ...)``."""
        return _State(*(t.repeat_interleave(q, dim=0) for t in vars(self).values()))


class MANN(Learner):
    """Santoro et al.'s MANN over flattened images (see the module docstring)."""

    name = "mann"

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: int = 200,
        memory_size: int = 128,
        memory_dim: int = 40,
        num_reads: int = 4,
        gamma: float = 0.95,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden, self.memory_size, self.memory_dim = hidden, memory_size, memory_dim
        self.num_reads, self.gamma = num_reads, gamma
        self.controller = nn.LSTMCell(input_dim + num_classes + num_reads * memory_dim, hidden)
        self.keys = nn.Linear(hidden, num_reads * memory_dim)
        self.gates = nn.Linear(hidden, num_reads)
        self.output = nn.Linear(hidden + num_reads * memory_dim, num_classes)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def initial_state(self, batch_size: int, device: torch.device) -> _State:
        z = torch.zeros
        r, nm, dm = self.num_reads, self.memory_size, self.memory_dim
        return _State(
            z(batch_size, self.hidden, device=device),
            z(batch_size, self.hidden, device=device),
            torch.full((batch_size, nm, dm), 1e-6, device=device),
            z(batch_size, r, dm, device=device),
            z(batch_size, r, nm, device=device),
            z(batch_size, nm, device=device),
        )

    def step(self, state: _State, x: Tensor, prev_label: Tensor) -> tuple[Tensor, _State]:
        """One time step: ``x`` ``(B, D)``, ``prev_label`` ``(B, N)`` one-hot → logits."""
        b = x.shape[0]
        inp = torch.cat([x, prev_label, state.read.reshape(b, -1)], -1)
        h, c = self.controller(inp, (state.h, state.c))
        key = torch.tanh(self.keys(h)).view(b, self.num_reads, self.memory_dim)
        alpha = torch.sigmoid(self.gates(h))[..., None]  # (B, R, 1)
        # least-used weights from the previous usage: the n smallest entries, one per head
        lu_idx = torch.topk(-state.usage, self.num_reads, dim=-1).indices  # (B, R)
        w_lu = F.one_hot(lu_idx, self.memory_size).to(x.dtype)  # (B, R, Nm)
        w_write = alpha * state.w_read + (1 - alpha) * w_lu  # (B, R, Nm)
        # zero the single least used location, then write every head's key
        least = F.one_hot(lu_idx[:, 0], self.memory_size).to(x.dtype)[..., None]
        memory = state.memory * (1 - least) + w_write.transpose(1, 2) @ key
        sim = F.cosine_similarity(key[:, :, None], memory[:, None], dim=-1, eps=1e-8)
        w_read = torch.softmax(sim, dim=-1)  # (B, R, Nm)
        read = w_read @ memory  # (B, R, Dm)
        usage = self.gamma * state.usage + w_read.sum(1) + w_write.sum(1)
        logits = self.output(torch.cat([h, read.reshape(b, -1)], -1))
        return logits, _State(h, c, memory, read, w_read, usage)

    def _forward(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Support logits ``(B, S, N)`` in the shuffled order, its labels, query logits."""
        b, s = batch.support_y.shape
        q = batch.query_y.shape[1]
        if num_ways(batch) > self.num_classes:
            raise ValueError(f"this MANN has {self.num_classes} outputs, the episodes are wider")
        order = torch.stack([torch.randperm(s) for _ in range(b)]).to(batch.support_x.device)
        flat = batch.support_x.reshape(b, s, -1)
        sx = torch.gather(flat, 1, order[..., None].expand(b, s, flat.shape[-1]))  # (B, S, D)
        sy = torch.gather(batch.support_y, 1, order)
        onehot = F.one_hot(sy, self.num_classes).to(sx.dtype)
        state = self.initial_state(b, sx.device)
        prev = torch.zeros_like(onehot[:, 0])
        support_logits = []
        for t in range(s):
            logits, state = self.step(state, sx[:, t], prev)
            support_logits.append(logits)
            prev = onehot[:, t]
        qx = batch.query_x.reshape(b * q, -1)
        query_logits, _ = self.step(state.expand(q), qx, prev.repeat_interleave(q, dim=0))
        return torch.stack(support_logits, 1), sy, query_logits.view(b, q, -1)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        support_logits, sy, query_logits = self._forward(batch)
        n = self.num_classes
        loss = F.cross_entropy(query_logits.reshape(-1, n), batch.query_y.reshape(-1))
        loss = loss + F.cross_entropy(support_logits.reshape(-1, n), sy.reshape(-1))
        self._outer_step(loss)
        return self._metrics(loss, query_logits, batch.query_y)

    @torch.no_grad()
    def predict(self, batch: EpisodeBatch) -> Tensor:
        return self._forward(batch)[2][..., : num_ways(batch)]
