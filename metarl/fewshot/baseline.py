"""Pretrain + fine-tune: the transfer baseline that meta-learning has to beat.

Meta-training is ordinary supervised learning on everything the training split offers:
classification over all training classes (the dataset-wide class of every episode image,
``EpisodeBatch.classes``), or, for regression, one network fitted to the pooled points of
all tasks (Finn et al. 2017's "pretrained" sinusoid baseline, Fig. 2). At test time the
network is fine-tuned on each support set by ``num_finetune_steps`` of gradient descent:
for classification a fresh N-way linear head (zero-initialised) on the frozen features
(``finetune="head"``, the Baseline of Chen et al. 2019) or features and head together
(``finetune="all"``); for regression all parameters.

References:
    Finn, Abbeel, Levine 2017 (MAML), Sec. 5.1 and Fig. 2: the pretrained baseline.
    Chen, Liu, Kira, Wang, Huang 2019, "A Closer Look at Few-shot Classification" (Baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, is_classification, num_ways, task_loss
from metarl.learning.functional import Params, adapt_func, forward, named_params

__all__ = ["PretrainFinetune"]


class PretrainFinetune(Learner):
    """The transfer baseline.

    Args:
        model: for classification a network with a ``features`` sub-module (the embedding,
            e.g. :class:`~metarl.fewshot.models.Conv4`) and a ``head`` with one output per
            training class; for regression any network.
        lr: Adam's step size in pretraining.
        finetune_lr: gradient-descent step size when fine-tuning on a support set.
        num_finetune_steps: fine-tuning steps per test episode.
        finetune: ``"head"`` (classification only) or ``"all"``.
    """

    name = "baseline"

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        finetune_lr: float = 0.1,
        num_finetune_steps: int = 50,
        finetune: str = "head",
    ) -> None:
        super().__init__()
        if finetune not in ("head", "all"):
            raise ValueError(f"finetune must be 'head' or 'all', got {finetune!r}")
        self.model = model
        self.finetune_lr = finetune_lr
        self.num_finetune_steps = num_finetune_steps
        self.finetune = finetune
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        if is_classification(batch.query_y):
            if batch.classes is None:
                raise ValueError("pretraining a classifier needs EpisodeBatch.classes")
            x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
            y = torch.cat(
                [
                    torch.gather(batch.classes, 1, batch.support_y),
                    torch.gather(batch.classes, 1, batch.query_y),
                ],
                1,
            ).flatten()
            logits = self.model(x)
            if logits.shape[-1] <= int(y.max()):
                raise ValueError(
                    f"the pretraining head has {logits.shape[-1]} outputs but class "
                    f"{int(y.max())} occurs; give the model one output per training class"
                )
            loss = F.cross_entropy(logits, y)
            self._outer_step(loss)
            return {
                "loss": float(loss.detach()),
                "accuracy": float((logits.argmax(-1) == y).float().mean()),
            }
        x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
        loss = task_loss(self.model(x), y)
        self._outer_step(loss)
        return {"loss": float(loss.detach())}

    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        steps = self.num_finetune_steps if num_steps is None else num_steps
        params = {n: p.detach() for n, p in named_params(self.model).items()}
        if not is_classification(batch.query_y):

            def loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
                return task_loss(forward(self.model, p, x), y)

            def regress(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
                p = adapt_func(loss, params, sx, sy, num_steps=steps, lr=self.finetune_lr)
                return forward(self.model, p, qx)

            return vmap(regress)(batch.support_x, batch.support_y, batch.query_x).detach()

        features: nn.Module = self.model.features  # type: ignore[assignment]
        n = num_ways(batch)
        d = int(self.model.head.in_features)  # type: ignore[union-attr, arg-type]
        feat = {k[len("features.") :]: v for k, v in params.items() if k.startswith("features.")}
        head = {
            "weight": torch.zeros(n, d, device=batch.support_x.device),
            "bias": torch.zeros(n, device=batch.support_x.device),
        }
        s = batch.support_x.shape[1]

        def logits(p: Params, x: Tensor, all_x: Tensor) -> Tensor:
            # Features of the support and query together (batch statistics per episode, as
            # for every learner here); logits for the rows of ``x``'s positions.
            f = forward(features, {k[2:]: v for k, v in p.items() if k.startswith("f.")}, all_x)
            return f @ p["h.weight"].T + p["h.bias"]

        start = {**{f"f.{k}": v for k, v in feat.items()}, **{f"h.{k}": v for k, v in head.items()}}

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
            all_x = torch.cat([sx, qx])
            if self.finetune == "head":
                z = forward(features, feat, all_x)

                def head_loss(h: Params, zs: Tensor, y: Tensor) -> Tensor:
                    return F.cross_entropy(zs @ h["weight"].T + h["bias"], y)

                h = adapt_func(head_loss, head, z[:s], sy, num_steps=steps, lr=self.finetune_lr)
                return z[s:] @ h["weight"].T + h["bias"]

            def all_loss(p: Params, y: Tensor) -> Tensor:
                return F.cross_entropy(logits(p, sx, all_x)[:s], y)

            p = adapt_func(all_loss, start, sy, num_steps=steps, lr=self.finetune_lr)
            return logits(p, qx, all_x)[s:]

        with torch.no_grad():
            return vmap(one_task)(batch.support_x, batch.support_y, batch.query_x)
