"""Meta-SGD: MAML with a learned inner step size for every parameter entry.

``θ'_i = θ − α ∘ ∇_θ L_support_i(θ)`` where ``α`` has the shape of ``θ`` and is meta-learned
with ``θ`` by the same outer Adam update (Li et al. 2017, Alg. 1). One inner step, as in the
paper; everything else is :class:`~metarl.fewshot.maml.MAML`.

References:
    Li, Zhou, Chen, Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metarl.fewshot.maml import MAML
from metarl.learning.functional import LearningRate

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """:class:`MAML` whose inner rate ``α`` is a learned tensor per parameter.

    ``inner_lr`` is the initial value of every entry of ``α``.
    """

    name = "metasgd"

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, **kwargs: object) -> None:
        super().__init__(model, inner_lr=inner_lr, **kwargs)  # type: ignore[arg-type]

    def _build_extra(self) -> None:
        # ParameterDict keys cannot hold '.', so parameter names are stored with '/'.
        self.rates = nn.ParameterDict(
            {
                n.replace(".", "/"): nn.Parameter(torch.full_like(p, self.inner_lr))
                for n, p in self.model.named_parameters()
            }
        )

    def inner_rates(self) -> LearningRate:
        rates: dict[str, Tensor] = {k.replace("/", "."): v for k, v in self.rates.items()}
        return rates
