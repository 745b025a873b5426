"""Backbones for few-shot learning: the 4-block conv net and the sinusoid MLP.

Every model is written so that :func:`torch.func.functional_call`, ``vmap`` over tasks and
second-order gradients all work: normalisation uses the statistics of the batch it is given
(:class:`BatchStatNorm2d`), never running averages. That is MAML's own setting (Finn et al.
2017 use batch statistics at meta-test time too: transductive over a task's query set), and
it sidesteps ``torch.nn.BatchNorm2d``, whose in-place running-stat updates do not compose with
``vmap`` and whose fused kernel lacks a double-backward under ``vmap``.

References:
    Vinyals et al. 2016, "Matching Networks for One Shot Learning" (the 4-block conv net).
    Finn, Abbeel, Levine 2017 (MAML): strided variant for Omniglot, 40-40 MLP for sinusoids.
    Snell, Swersky, Zemel 2017 (Prototypical Networks): the max-pooled conv net as embedding.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "BatchStatNorm2d", "Conv4", "conv4_embedding_dim"]


class BatchStatNorm2d(nn.Module):
    """Batch normalisation with the current batch's statistics only (no running averages).

    ``y = γ (x − mean) / sqrt(var + ε) + β`` with mean and (biased) variance over
    ``(batch, height, width)`` per channel (Ioffe & Szegedy 2015). Written with plain tensor
    ops so that it vectorises over tasks with ``vmap`` (each task normalised by its own
    statistics) and has second derivatives.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]


def _block(c_in: int, c_out: int, pool: str) -> nn.Sequential:
    if pool == "max":
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            BatchStatNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), BatchStatNorm2d(c_out), nn.ReLU()
    )


def conv4_embedding_dim(image_shape: tuple[int, int, int], hidden: int, pool: str) -> int:
    """Length of :class:`Conv4`'s flattened features for ``(C, H, W)`` images."""
    _, h, w = image_shape
    for _ in range(4):
        h, w = (h // 2, w // 2) if pool == "max" else ((h + 1) // 2, (w + 1) // 2)
    return hidden * h * w


class Conv4(nn.Module):
    """Four blocks of 3×3 conv (``hidden`` filters) → batch-stat norm → ReLU → 2× downsample.

    ``pool="max"`` downsamples by 2×2 max-pooling (Vinyals et al.; Snell et al.),
    ``pool="stride"`` by stride-2 convolutions (Finn et al.'s Omniglot net; cheaper). With
    ``num_classes`` a linear head maps the flattened features to logits; with None the model
    is an embedding (Prototypical and Matching Networks).

    Input ``(B, C, H, W)`` floats; output ``(B, num_classes)`` or ``(B, embedding_dim)``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = 5,
        hidden: int = 64,
        pool: str = "max",
    ) -> None:
        super().__init__()
        if pool not in ("max", "stride"):
            raise ValueError(f"pool must be 'max' or 'stride', got {pool!r}")
        c = image_shape[0]
        self.features = nn.Sequential(
            _block(c, hidden, pool),
            _block(hidden, hidden, pool),
            _block(hidden, hidden, pool),
            _block(hidden, hidden, pool),
            nn.Flatten(),
        )
        self.embedding_dim = conv4_embedding_dim(image_shape, hidden, pool)
        if self.embedding_dim == 0:
            raise ValueError(f"images of shape {image_shape} are too small for 4 blocks")
        self.head = None if num_classes is None else nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)
        return z if self.head is None else self.head(z)

    def forward_tasks(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Every task's network on its own images in one pass, without ``vmap``.

        ``params``: this module's parameters by name, each with a leading task dimension
        ``B``; ``x``: ``(B, M, C, H, W)``. Returns ``(B, M, out)``, the same as
        ``vmap(lambda p, x: functional_call(self, p, x))(params, x)``.

        The tasks are folded into the channels: ``(B, M, C, H, W) → (M, B·C, H, W)``, each
        convolution one ``conv2d`` with ``groups=B`` (task ``b``'s filters see only task
        ``b``'s channels), each normalisation one fused ``batch_norm`` in training mode over
        the ``B·C`` channels -- which normalises every (task, channel) by the statistics of
        that task's batch, as :class:`BatchStatNorm2d` does per task -- and the head a batched
        matrix product. ``vmap`` lowers the convolutions to the same grouped ``conv2d`` but
        the normalisation to a dozen element-wise ops over the whole activation, which
        dominate on a CPU (benchmarks/fewshot_vmap.md).
        """
        b, m = x.shape[:2]
        z = x.transpose(0, 1).reshape(m, b * x.shape[2], *x.shape[3:])
        for i in range(4):
            block = self.features[i]
            assert isinstance(block, nn.Sequential)
            conv, norm = block[0], block[1]
            assert isinstance(conv, nn.Conv2d) and isinstance(norm, BatchStatNorm2d)
            w = params[f"features.{i}.0.weight"]
            z = F.conv2d(
                z,
                w.reshape(-1, *w.shape[2:]),
                params[f"features.{i}.0.bias"].reshape(-1),
                stride=conv.stride,
                padding=conv.padding,
                groups=b,
            )
            z = F.batch_norm(
                z,
                None,
                None,
                params[f"features.{i}.1.weight"].reshape(-1),
                params[f"features.{i}.1.bias"].reshape(-1),
                training=True,
                eps=norm.eps,
            )
            z = F.relu(z)
            if len(block) == 4:
                z = F.max_pool2d(z, 2)
        # (M, B·C, h, w) → (B, M, C·h·w): each task's flattened features, as nn.Flatten
        z = z.reshape(m, b, -1).transpose(0, 1)
        if self.head is None:
            return z
        return torch.baddbmm(
            params["head.bias"].unsqueeze(1), z, params["head.weight"].transpose(1, 2)
        )


class MLP(nn.Module):
    """Fully connected ReLU net, ``1 → 40 → 40 → 1`` by default (Finn et al.'s sinusoid net)."""

    def __init__(self, sizes: tuple[int, ...] = (1, 40, 40, 1)) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
