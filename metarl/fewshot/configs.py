"""One typed config per few-shot learner, on a base that holds what every run shares.

:class:`FewShotConfig` holds the settings of every few-shot run (the data, N-way K-shot
episodes, the meta-batch, the schedule, the seed, the device, logging, model selection on a
validation split); each learner's subclass adds only its own options, declared with
:func:`metarl.runs.config.option` (their docs are ``metarl fewshot train --learner NAME --help``),
and keeps its papers' presets. :data:`LEARNER_CONFIGS` maps a learner's name to its class.

``FewShotConfig.from_dict`` and ``FewShotConfig.from_preset`` called on the base pick the
learner's class (from the ``learner`` key, or from the class that owns the preset), and a
``config.json`` written when one flat config held every learner's options still loads:
:meth:`FewShotConfig.upgrade` drops the options of other learners (which that learner never
read) and turns the ``None`` that meant "the learner's default" into that default.

Example:
    >>> cfg = FewShotConfig.from_preset("maml-sinusoid", num_iterations=3)
    >>> type(cfg).__name__, cfg.inner_lr, cfg.learner
    ('MAMLConfig', 0.01, 'maml')
    >>> config_class("protonet").from_dict({"num_ways": 20}).pool
    'max'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from metarl.fewshot.data import default_omniglot_path
from metarl.runs.config import MAX_SEED, Config, ConfigError, option, tensorboard_option

__all__ = [
    "LEARNERS",
    "LEARNER_CONFIGS",
    "BaselineConfig",
    "FOMAMLConfig",
    "FewShotConfig",
    "MAMLConfig",
    "MANNConfig",
    "MatchingConfig",
    "MetaNetConfig",
    "MetaSGDConfig",
    "ProtoNetConfig",
    "ReptileConfig",
    "all_presets",
    "config_class",
    "learner_of_option",
    "learner_of_preset",
]

C = TypeVar("C", bound="FewShotConfig")

#: Every few-shot learner's name, in the order ``metarl fewshot train --help`` lists them.
LEARNERS = (
    "maml",
    "fomaml",
    "metasgd",
    "reptile",
    "protonet",
    "matching",
    "mann",
    "metanet",
    "baseline",
)
#: The datasets: Omniglot, sinusoid regression, an image folder, mini-ImageNet's split files.
DATASETS = ("omniglot", "sinusoid", "folder", "miniimagenet", "mnist", "digits")
CLASSIFIERS_ONLY = ("protonet", "matching", "mann", "metanet")

#: The options of the one flat config that held every learner's (config.json files written
#: before the split hold all of them; each learner read only its own).
_LEGACY_OPTIONS = frozenset(
    {
        "meta_lr",
        "inner_lr",
        "num_inner_steps",
        "num_eval_steps",
        "meta_step",
        "meta_step_final",
        "inner_batch_size",
        "transductive",
        "full_context",
        "pool",
        "vectorize",
    }
)


def _check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def _meta_lr() -> Any:
    return option(1e-3, "outer step size (Adam)", low=0.0, low_open=True)


def _pool(default: str) -> Any:
    return option(
        default,
        "Conv4 downsampling: max (2×2 max-pooling) or stride (stride-2 convolutions)",
        choices=("max", "stride"),
    )


@dataclass
class FewShotConfig(Config):
    """What every few-shot run has; a learner's config (:data:`LEARNER_CONFIGS`) adds its own
    options. Build one with ``config_class(name)(...)``, ``FewShotConfig.from_preset(...)``
    or ``FewShotConfig.from_dict(...)``."""

    learner: str = option("maml", "the meta-learner", choices=LEARNERS)
    dataset: str = option(
        "omniglot",
        "omniglot, sinusoid, folder (an image folder <root>/<split>/<class>/<image>), "
        "miniimagenet (Ravi & Larochelle's train.csv / val.csv / test.csv over <root>/images/), "
        "mnist (the IDX files in --data-path; digits 0-4 train, 5-9 test) or digits "
        "(scikit-learn's 8x8 digits, the same split, no download)",
        choices=DATASETS,
    )
    data_path: str = option(
        default_omniglot_path(),
        "Omniglot's folder (images_background/, images_evaluation/ or their zips; default "
        "$METARL_OMNIGLOT, else ../shared/data/omniglot), the image "
        "folder's root for --dataset folder (its train/, val/ and test/ sub-folders), or "
        "mini-ImageNet's root (the three CSV files and images/) for --dataset miniimagenet",
    )
    omniglot_split: str = option(
        "vinyals",
        "Omniglot's characters: vinyals (1200 train / 423 test pooled from both halves, the "
        "few-shot papers') or lake (train on images_background's 964, test on "
        "images_evaluation's 659: Lake et al.'s protocol, needed for a clean --lake-runs score)",
        choices=("vinyals", "lake"),
    )
    num_ways: int = option(5, "N of the N-way test episodes", low=2)
    num_shots: int = option(1, "K: support examples per class (sinusoid: points per task)", low=1)
    train_ways: int | None = option(
        None, "N of training episodes (Prototypical Networks train 60-way)", low=2
    )
    num_query: int = option(15, "query examples per class in training episodes", low=1)
    eval_query: int = option(15, "query examples per class in test episodes", low=1)
    meta_batch_size: int = option(32, "episodes per meta-iteration", low=1)
    num_iterations: int = option(
        60_000, "meta-iterations (outer updates)", low=1, may_change_on_resume=True
    )
    image_size: int = option(28, "side of the square images", low=4)
    val_every: int = option(
        0,
        "every this many iterations, evaluate on --num-val-episodes episodes of the validation "
        "split and keep the best checkpoint as best.pt (0: no validation)",
        low=0,
    )
    num_val_episodes: int = option(
        100, "validation episodes per --val-every evaluation (the same ones each time)", low=1
    )
    seed: int = option(0, "seed of every random number generator of the run", low=0, high=MAX_SEED)
    device: str = option(
        "auto", "auto, cpu, cuda or cuda:N", check=_check_device, may_change_on_resume=True
    )
    checkpoint_every: int = option(
        500, "checkpoint every this many iterations", low=1, may_change_on_resume=True
    )
    log_every: int = option(50, "log metrics every this many iterations", low=1)
    tensorboard: bool | None = tensorboard_option()

    def validate(self) -> None:
        if type(self) is FewShotConfig:
            raise ConfigError(
                "FewShotConfig holds only the shared options: build a learner's config, e.g. "
                "config_class('maml')(...), FewShotConfig.from_preset(...) or "
                "FewShotConfig.from_dict({'learner': ...})"
            )
        super().validate()
        if self.dataset == "sinusoid" and self.learner in CLASSIFIERS_ONLY:
            raise ConfigError(
                f"{self.learner} is a classifier; --dataset sinusoid (regression) works with "
                "maml, fomaml, metasgd, reptile and baseline"
            )

    # -- which class ------------------------------------------------------------------------
    @classmethod
    def upgrade(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` (e.g. a run's config.json) in this class's terms: a config written when
        one flat config held every learner's options loses the other learners' options, and
        a ``None`` that meant "the learner's default" becomes that default."""
        out = dict(data)
        own = {f.name: f for f in fields(cls)}
        for key in list(out):
            if key in _LEGACY_OPTIONS and key not in own:
                del out[key]
            elif key in own and out[key] is None and own[key].default is not None:
                default = own[key].default
                if default is not dataclasses.MISSING:
                    out[key] = default
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict; on the base class the ``learner`` key picks the class."""
        target: type[FewShotConfig] = cls
        if cls is FewShotConfig:
            target = config_class(str(data.get("learner", "maml")))
        elif "learner" in data and data["learner"] not in _names(cls):
            owner = data["learner"]
            raise ConfigError(
                f"{cls.__name__} is the config of {cls.learner_name()}, not of {owner!r}: use "
                f"config_class({owner!r}) (--learner {owner})"
            )
        values = {"learner": target.learner_name(), **target.upgrade(data)}
        return super(FewShotConfig, target).from_dict(values)  # type: ignore[return-value]

    @classmethod
    def from_preset(cls: type[C], preset: str | None = None, **overrides: Any) -> C:
        """Defaults, the preset, then ``overrides``; on the base class the preset (or the
        ``learner`` override) picks the learner's class."""
        if cls is not FewShotConfig:
            return super().from_preset(preset, **overrides)
        if preset is not None:
            target = config_class(learner_of_preset(preset))
            if "learner" in overrides and overrides["learner"] != target.learner_name():
                raise ConfigError(
                    f"preset {preset!r} is {target.learner_name()}'s, not "
                    f"{overrides['learner']}'s; drop --learner or pick one of its presets"
                )
            overrides = {k: v for k, v in overrides.items() if k != "learner"}
            return target.from_preset(preset, **overrides)  # type: ignore[return-value]
        return cls.from_dict(overrides)

    @classmethod
    def learner_name(cls) -> str:
        """The learner this class configures."""
        default = cls.__dataclass_fields__["learner"].default
        return str(default)


def _names(cls: type[FewShotConfig]) -> tuple[str, ...]:
    choices = cls.__dataclass_fields__["learner"].metadata.get("choices") or ()
    return tuple(choices)


def _learner(name: str) -> Any:
    return option(name, "the meta-learner", choices=(name,))


@dataclass
class MAMLConfig(FewShotConfig):
    """MAML (Finn et al. 2017): inner gradient steps from a meta-learned initialisation."""

    learner: str = _learner("maml")
    meta_lr: float = _meta_lr()
    inner_lr: float = option(0.4, "inner step size α", low=0.0, low_open=True)
    num_inner_steps: int = option(1, "inner gradient steps in meta-training", low=0)
    num_eval_steps: int | None = option(
        None,
        "inner steps at test time (None: as in training for sinusoids, 3 for images as in "
        "Finn et al.)",
        low=0,
    )
    pool: str = _pool("stride")
    hidden: int = option(
        64, "Conv4 filters per layer (Finn et al.: 64 on Omniglot, 32 on mini-ImageNet)", low=1
    )
    vectorize: bool = option(
        True,
        "vectorise the meta-batch (Conv4: the tasks folded into grouped convolutions, other "
        "models: vmap; False: a Python loop over tasks)",
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Finn et al. 2017, Sec. 5.1 and App. A.1: 70k iterations, batch 25, α = 0.01.
        "maml-sinusoid": {
            "dataset": "sinusoid",
            "num_shots": 10,
            "num_query": 10,
            "eval_query": 10,
            "meta_batch_size": 25,
            "num_iterations": 70_000,
            "inner_lr": 0.01,
            "num_inner_steps": 1,
            "num_eval_steps": 1,
        },
        # Finn et al. 2017, App. A.1: Omniglot α = 0.4, 1 step (3 at test), batch 32,
        # K query examples per class in training.
        "maml-omniglot-5w1s": {"num_query": 1},
        "maml-omniglot-5w5s": {"num_shots": 5, "num_query": 5},
        "maml-omniglot-20w1s": {
            "num_ways": 20,
            "num_query": 1,
            "meta_batch_size": 16,
            "inner_lr": 0.1,
            "num_inner_steps": 5,
            "num_eval_steps": 5,
        },
        # Finn et al. 2017, App. A.1 / Sec. 5.2: mini-ImageNet 84×84, Conv4 with 32 filters
        # (max-pooled), α = 0.01, 5 steps in training and 10 at test, meta-batch 4 (1-shot)
        # and 2 (5-shot), 15 queries per class, 60k iterations, model selection on val.
        "maml-miniimagenet-5w1s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "hidden": 32,
            "pool": "max",
            "inner_lr": 0.01,
            "num_inner_steps": 5,
            "num_eval_steps": 10,
            "meta_batch_size": 4,
            "val_every": 500,
        },
        "maml-miniimagenet-5w5s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "num_shots": 5,
            "hidden": 32,
            "pool": "max",
            "inner_lr": 0.01,
            "num_inner_steps": 5,
            "num_eval_steps": 10,
            "meta_batch_size": 2,
            "val_every": 500,
        },
    }


@dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML (Finn et al. 2017, Sec. 5.2): MAML's options, no second-order terms."""

    learner: str = _learner("fomaml")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fomaml-omniglot-5w1s": {"num_query": 1},
    }


@dataclass
class MetaSGDConfig(MAMLConfig):
    """Meta-SGD (Li et al. 2017): MAML with a learned inner rate per parameter (--inner-lr
    initialises them)."""

    learner: str = _learner("metasgd")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Li et al. 2017: one inner step, learned rates, batch 32.
        "metasgd-omniglot-5w1s": {"num_query": 1, "num_eval_steps": 1},
    }


@dataclass
class ReptileConfig(FewShotConfig):
    """Reptile (Nichol et al. 2018): inner Adam, an annealed outer step ε, transduction."""

    learner: str = _learner("reptile")
    inner_lr: float = option(1e-3, "inner Adam's step size", low=0.0, low_open=True)
    num_inner_steps: int = option(5, "inner Adam steps in meta-training", low=0)
    num_eval_steps: int = option(50, "inner Adam steps at test time", low=0)
    inner_batch_size: int = option(10, "inner mini-batch", low=1)
    meta_step: float = option(1.0, "initial outer step ε", low=0.0, high=1.0)
    meta_step_final: float = option(0.0, "final outer step ε", low=0.0, high=1.0)
    transductive: bool = option(True, "classify the query set as one batch")
    pool: str = _pool("max")
    hidden: int = option(64, "Conv4 filters per layer", low=1)

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Nichol et al. 2018 (supervised-reptile's o15t run): 10 train shots, batch 5,
        # 100k iterations, transductive.
        "reptile-omniglot-5w1s": {
            "num_query": 9,
            "meta_batch_size": 5,
            "num_iterations": 100_000,
            "inner_lr": 1e-3,
            "num_inner_steps": 5,
            "num_eval_steps": 50,
        },
    }


_PROTO_OMNIGLOT = {"train_ways": 60, "num_query": 5, "meta_batch_size": 1, "num_iterations": 20_000}


@dataclass
class ProtoNetConfig(FewShotConfig):
    """Prototypical Networks (Snell et al. 2017): a Conv4 embedding, Adam."""

    learner: str = _learner("protonet")
    meta_lr: float = _meta_lr()
    pool: str = _pool("max")
    hidden: int = option(64, "Conv4 filters per layer", low=1)

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Snell et al. 2017: 60-way training episodes, 5 queries, one episode per update.
        "protonet-omniglot-5w1s": dict(_PROTO_OMNIGLOT),
        "protonet-omniglot-5w5s": {**_PROTO_OMNIGLOT, "num_shots": 5},
        "protonet-omniglot-20w1s": {**_PROTO_OMNIGLOT, "num_ways": 20},
        # Snell et al. 2017, Sec. 3.2: mini-ImageNet 30-way (1-shot) and 20-way (5-shot)
        # training episodes with 15 queries, Conv4 of 64 filters, Adam 1e-3 halved every 2000
        # episodes, early stopping on the validation split (the iteration budget is not
        # stated; 40k here is a guess, the best validation checkpoint is what is tested).
        "protonet-miniimagenet-5w1s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "train_ways": 30,
            "meta_batch_size": 1,
            "num_iterations": 40_000,
            "val_every": 500,
        },
        "protonet-miniimagenet-5w5s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "num_shots": 5,
            "train_ways": 20,
            "meta_batch_size": 1,
            "num_iterations": 40_000,
            "val_every": 500,
        },
    }


@dataclass
class MatchingConfig(FewShotConfig):
    """Matching Networks (Vinyals et al. 2016), optionally with full-context embeddings."""

    learner: str = _learner("matching")
    meta_lr: float = _meta_lr()
    full_context: bool = option(False, "full-context embeddings (Vinyals et al., App. A)")
    pool: str = _pool("max")
    hidden: int = option(64, "Conv4 filters per layer", low=1)

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "matching-omniglot-5w1s": {"num_query": 5},
        # Vinyals et al. 2016, Sec. 4.1.2: mini-ImageNet (Ravi & Larochelle's split as
        # reported in Ravi & Larochelle 2017, Table 1), Conv4 of 64 filters, full-context
        # embeddings; the meta-batch and query counts are not stated (guessed: 4, 15).
        "matching-miniimagenet-5w1s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "full_context": True,
            "meta_batch_size": 4,
            "val_every": 500,
        },
        "matching-miniimagenet-5w5s": {
            "dataset": "miniimagenet",
            "data_path": "miniimagenet",
            "image_size": 84,
            "num_shots": 5,
            "full_context": True,
            "meta_batch_size": 4,
            "val_every": 500,
        },
    }


@dataclass
class MANNConfig(FewShotConfig):
    """A memory-augmented neural network (Santoro et al. 2016) over flattened images."""

    learner: str = _learner("mann")
    meta_lr: float = _meta_lr()

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Santoro et al. 2016: batch 16 (their episodes: 10 instances per class).
        "mann-omniglot-5w1s": {"num_query": 5, "meta_batch_size": 16, "num_iterations": 100_000},
    }


@dataclass
class MetaNetConfig(FewShotConfig):
    """Meta Networks (Munkhdalai & Yu 2017): fast weights from the support set's gradients."""

    learner: str = _learner("metanet")
    meta_lr: float = _meta_lr()
    hidden: int = option(64, "Conv4 filters per layer of both networks", low=1)
    fc_size: int = option(
        64, "width of the base learner's fast-weight-augmented hidden layer", low=1
    )
    key_size: int = option(64, "size of the meta learner's memory keys (representations)", low=1)
    generator_size: int = option(
        20, "hidden width of the coordinate-wise fast weight generators g and d", low=1
    )
    fast_weights: bool = option(
        True, "use fast weights (False: the same networks with slow weights only, an ablation)"
    )
    pool: str = _pool("max")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Munkhdalai & Yu 2017, Sec. 4.1: Omniglot 5-way and 20-way 1-shot. The meta-batch,
        # query count and iteration budget are not stated there (guessed: one episode of 15
        # queries per class per update for 5-way, 5 for 20-way; 20k updates).
        "metanet-omniglot-5w1s": {"meta_batch_size": 1, "num_iterations": 20_000},
        "metanet-omniglot-20w1s": {
            "num_ways": 20,
            "num_query": 5,
            "eval_query": 5,
            "meta_batch_size": 1,
            "num_iterations": 20_000,
        },
    }


@dataclass
class BaselineConfig(FewShotConfig):
    """Pretrain + fine-tune: supervised pretraining on every training class, then
    fine-tuning on each support set."""

    learner: str = _learner("baseline")
    meta_lr: float = _meta_lr()
    inner_lr: float | None = option(
        None, "fine-tuning step size (None: 0.01 for sinusoids, 0.1 for images)", low=0.0
    )
    num_eval_steps: int | None = option(
        None, "fine-tuning steps at test time (None: 1 for sinusoids, 50 for images)", low=0
    )
    pool: str = _pool("max")
    hidden: int = option(64, "Conv4 filters per layer", low=1)

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "baseline-sinusoid": {
            "dataset": "sinusoid",
            "num_shots": 10,
            "num_query": 10,
            "eval_query": 10,
            "meta_batch_size": 25,
            "num_iterations": 70_000,
            "inner_lr": 0.01,
            "num_eval_steps": 1,
        },
        "baseline-omniglot-5w1s": {
            "num_query": 5,
            "meta_batch_size": 8,
            "inner_lr": 0.1,
            "num_eval_steps": 50,
        },
    }


#: learner name -> its config class.
LEARNER_CONFIGS: dict[str, type[FewShotConfig]] = {
    "maml": MAMLConfig,
    "fomaml": FOMAMLConfig,
    "metasgd": MetaSGDConfig,
    "reptile": ReptileConfig,
    "protonet": ProtoNetConfig,
    "matching": MatchingConfig,
    "mann": MANNConfig,
    "metanet": MetaNetConfig,
    "baseline": BaselineConfig,
}


def config_class(learner: str) -> type[FewShotConfig]:
    """The config class of ``learner``; a clear error naming the learners otherwise."""
    try:
        return LEARNER_CONFIGS[learner]
    except KeyError:
        raise ConfigError(
            f"no few-shot learner named {learner!r}; learners: {', '.join(LEARNERS)}"
        ) from None


def all_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every preset: name -> (learner, its overrides)."""
    return {
        name: (learner, values)
        for learner, cls in LEARNER_CONFIGS.items()
        for name, values in cls.presets.items()
    }


def learner_of_preset(preset: str) -> str:
    """The learner whose class holds ``preset``."""
    presets = all_presets()
    if preset not in presets:
        raise ConfigError(
            f"no few-shot preset {preset!r}; presets: {', '.join(sorted(presets))} "
            "(`metarl fewshot presets` lists their settings)"
        )
    return presets[preset][0]


def learner_of_option(name: str) -> list[str]:
    """The learners whose config has the field ``name``."""
    return [
        learner for learner, cls in LEARNER_CONFIGS.items() if name in {f.name for f in fields(cls)}
    ]
