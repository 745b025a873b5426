"""Supervised few-shot learning on metarl's functional core.

Data (:mod:`~metarl.fewshot.data`): sinusoid regression tasks, Omniglot with the fixed
1200/423 split, any ``class/image`` folder, seeded N-way K-shot episodes. Backbones
(:mod:`~metarl.fewshot.models`). One file per learner: :mod:`~metarl.fewshot.maml` (MAML,
first-order MAML), :mod:`~metarl.fewshot.metasgd`, :mod:`~metarl.fewshot.reptile`,
:mod:`~metarl.fewshot.protonet`, :mod:`~metarl.fewshot.matching`,
:mod:`~metarl.fewshot.mann`, :mod:`~metarl.fewshot.metanet` (Meta Networks),
:mod:`~metarl.fewshot.baseline` (pretrain + fine-tune). One config per learner
(:mod:`~metarl.fewshot.configs`); mini-ImageNet's split files (:mod:`~metarl.fewshot.miniimagenet`).
Evaluation over held-out episodes with a 95% CI (:mod:`~metarl.fewshot.evaluate`).
"""

from metarl.fewshot.baseline import PretrainFinetune
from metarl.fewshot.data import (
    EpisodeBatch,
    EpisodeSampler,
    ImageClasses,
    SinusoidTasks,
    image_folder,
    lake_one_shot_runs,
    omniglot,
)
from metarl.fewshot.evaluate import evaluate
from metarl.fewshot.learner import Learner
from metarl.fewshot.maml import MAML
from metarl.fewshot.mann import MANN
from metarl.fewshot.matching import MatchingNet
from metarl.fewshot.metanet import MetaNet
from metarl.fewshot.metasgd import MetaSGD
from metarl.fewshot.miniimagenet import mini_imagenet
from metarl.fewshot.models import MLP, BatchStatNorm2d, Conv4
from metarl.fewshot.protonet import ProtoNet
from metarl.fewshot.reptile import Reptile

__all__ = [
    "MAML",
    "MANN",
    "MLP",
    "BatchStatNorm2d",
    "Conv4",
    "EpisodeBatch",
    "EpisodeSampler",
    "ImageClasses",
    "Learner",
    "MatchingNet",
    "MetaNet",
    "MetaSGD",
    "PretrainFinetune",
    "ProtoNet",
    "Reptile",
    "SinusoidTasks",
    "evaluate",
    "image_folder",
    "lake_one_shot_runs",
    "mini_imagenet",
    "omniglot",
]
