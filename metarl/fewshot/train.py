"""Few-shot training and evaluation runs: typed config, presets, run directory, resume.

``train(config, run_dir)`` meta-trains one learner on the training split (Omniglot's 1200
characters, sinusoid tasks, or an image folder), logging to ``metrics.csv`` (and
TensorBoard), checkpointing atomically every ``checkpoint_every`` iterations (weights,
optimiser, episode-generator and global RNG states, so a resumed run continues exactly), and
finally evaluates on ``num_eval_episodes`` held-out episodes (``eval.json``: mean ± 95% CI).
``metarl fewshot train|evaluate|presets`` is the command-line face of this module.

Presets carry the papers' settings (Finn et al. 2017; Li et al. 2017; Nichol et al. 2018;
Snell et al. 2017; Vinyals et al. 2016; Santoro et al. 2016); shorten a run with
``--num-iterations``.

Example:
    >>> cfg = FewShotConfig.from_preset("maml-sinusoid", num_iterations=3, tensorboard=False)
    >>> import tempfile
    >>> result = train(cfg, tempfile.mkdtemp() + "/run", num_eval_episodes=10)
    >>> result["metric"]
    'mse'
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from metarl.fewshot.baseline import PretrainFinetune
from metarl.fewshot.data import (
    EpisodeSampler,
    ImageClasses,
    SinusoidTasks,
    default_omniglot_path,
    image_folder,
    lake_one_shot_runs,
    omniglot,
)
from metarl.fewshot.evaluate import Sampler, evaluate, evaluate_episodes, write_json
from metarl.fewshot.learner import Learner
from metarl.fewshot.maml import MAML
from metarl.fewshot.mann import MANN
from metarl.fewshot.matching import MatchingNet
from metarl.fewshot.metasgd import MetaSGD
from metarl.fewshot.models import MLP, Conv4
from metarl.fewshot.protonet import ProtoNet
from metarl.fewshot.reptile import Reptile
from metarl.numerics import NonFiniteError, check_finite
from metarl.runs import Run, resolve_device
from metarl.runs.config import MAX_SEED, Config, option
from metarl.runs.training import Generators, Trainer, train_loop

__all__ = ["LEARNERS", "FewShotConfig", "build_learner", "evaluate_run", "train"]

LEARNERS = ("maml", "fomaml", "metasgd", "reptile", "protonet", "matching", "mann", "baseline")
AGENT = "fewshot"
EVAL_FILE = "eval.json"
#: Lake et al.'s runs are drawings of images_evaluation characters, most of which the
#: 1200-character split trains on (see metarl.fewshot.data).
LAKE_SPLIT_WARNING = (
    "trained on the 1200-character split, which holds 141 of the runs' 200 characters (and "
    "their very drawings): not comparable to Lake et al.; train with --omniglot-split lake "
    "(images_background only) for a clean score"
)
#: Evaluation episodes come from a generator seeded apart from training's.
EVAL_SEED_OFFSET = 10_000


def _check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return None
    return "must be auto, cpu, cuda or cuda:N"


@dataclass
class FewShotConfig(Config):
    """One few-shot meta-training run. ``None`` means the learner's paper default."""

    learner: str = option("maml", "the meta-learner", choices=LEARNERS)
    dataset: str = option(
        "omniglot",
        "omniglot, sinusoid, folder (an image folder <root>/<class>/<image>), mnist (the IDX "
        "files in --data-path; digits 0-4 train, 5-9 test) or digits (scikit-learn's 8x8 "
        "digits, the same split, no download)",
        choices=("omniglot", "sinusoid", "folder", "mnist", "digits"),
    )
    data_path: str = option(
        default_omniglot_path(),
        "Omniglot's folder (images_background/, images_evaluation/ or their zips; default "
        "$METARL_OMNIGLOT, else ../shared/data/omniglot), or the "
        "image folder's root for --dataset folder (its train/ and test/ sub-folders if present)",
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
    meta_lr: float = option(1e-3, "outer step size (Adam)", low=0.0, low_open=True)
    inner_lr: float | None = option(
        None, "inner step size α (MAML, Meta-SGD init, Reptile's inner Adam)", low=0.0
    )
    num_inner_steps: int | None = option(None, "inner steps in meta-training", low=0)
    num_eval_steps: int | None = option(None, "inner / fine-tuning steps at test time", low=0)
    meta_step: float = option(1.0, "Reptile's initial outer step ε", low=0.0, high=1.0)
    meta_step_final: float = option(0.0, "Reptile's final outer step ε", low=0.0, high=1.0)
    inner_batch_size: int = option(10, "Reptile's inner mini-batch", low=1)
    transductive: bool = option(True, "Reptile: classify the query set as one batch")
    full_context: bool = option(False, "Matching Networks: full-context embeddings")
    pool: str | None = option(
        None, "Conv4 downsampling, max or stride (default: stride for MAML-family)"
    )
    image_size: int = option(28, "side of the square images", low=4)
    vectorize: bool = option(
        True,
        "vectorise the meta-batch (Conv4: the tasks folded into grouped convolutions, other "
        "models: vmap; False: a Python loop over tasks)",
    )
    seed: int = option(0, "seed of every random number generator of the run", low=0, high=MAX_SEED)
    device: str = option(
        "auto", "auto, cpu, cuda or cuda:N", check=_check_device, may_change_on_resume=True
    )
    checkpoint_every: int = option(
        500, "checkpoint every this many iterations", low=1, may_change_on_resume=True
    )
    log_every: int = option(50, "log metrics every this many iterations", low=1)
    tensorboard: bool = option(
        True, "TensorBoard logs when tensorboard is installed", may_change_on_resume=True
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Finn et al. 2017, Sec. 5.1 and App. A.1: 70k iterations, batch 25, α = 0.01.
        "maml-sinusoid": {
            "learner": "maml",
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
        "baseline-sinusoid": {
            "learner": "baseline",
            "dataset": "sinusoid",
            "num_shots": 10,
            "num_query": 10,
            "eval_query": 10,
            "meta_batch_size": 25,
            "num_iterations": 70_000,
            "inner_lr": 0.01,
            "num_eval_steps": 1,
        },
        # Finn et al. 2017, App. A.1: Omniglot α = 0.4, 1 step (3 at test), batch 32,
        # K query examples per class in training.
        "maml-omniglot-5w1s": {"learner": "maml", "num_query": 1},
        "fomaml-omniglot-5w1s": {"learner": "fomaml", "num_query": 1},
        "maml-omniglot-5w5s": {"learner": "maml", "num_shots": 5, "num_query": 5},
        "maml-omniglot-20w1s": {
            "learner": "maml",
            "num_ways": 20,
            "num_query": 1,
            "meta_batch_size": 16,
            "inner_lr": 0.1,
            "num_inner_steps": 5,
            "num_eval_steps": 5,
        },
        # Li et al. 2017: one inner step, learned rates, batch 32.
        "metasgd-omniglot-5w1s": {"learner": "metasgd", "num_query": 1, "num_eval_steps": 1},
        # Nichol et al. 2018 (supervised-reptile's o15t run): 10 train shots, batch 5,
        # 100k iterations, transductive.
        "reptile-omniglot-5w1s": {
            "learner": "reptile",
            "num_query": 9,
            "meta_batch_size": 5,
            "num_iterations": 100_000,
            "inner_lr": 1e-3,
            "num_inner_steps": 5,
            "num_eval_steps": 50,
        },
        # Snell et al. 2017: 60-way training episodes, 5 queries, one episode per update.
        "protonet-omniglot-5w1s": {
            "learner": "protonet",
            "train_ways": 60,
            "num_query": 5,
            "meta_batch_size": 1,
            "num_iterations": 20_000,
        },
        "protonet-omniglot-5w5s": {
            "learner": "protonet",
            "num_shots": 5,
            "train_ways": 60,
            "num_query": 5,
            "meta_batch_size": 1,
            "num_iterations": 20_000,
        },
        "protonet-omniglot-20w1s": {
            "learner": "protonet",
            "num_ways": 20,
            "train_ways": 60,
            "num_query": 5,
            "meta_batch_size": 1,
            "num_iterations": 20_000,
        },
        "matching-omniglot-5w1s": {"learner": "matching", "num_query": 5},
        # Santoro et al. 2016: batch 16 (their episodes: 10 instances per class).
        "mann-omniglot-5w1s": {
            "learner": "mann",
            "num_query": 5,
            "meta_batch_size": 16,
            "num_iterations": 100_000,
        },
        "baseline-omniglot-5w1s": {
            "learner": "baseline",
            "num_query": 5,
            "meta_batch_size": 8,
            "inner_lr": 0.1,
            "num_eval_steps": 50,
        },
    }

    def validate(self) -> None:
        super().validate()
        if self.dataset == "sinusoid" and self.learner in ("protonet", "matching", "mann"):
            from metarl.runs.config import ConfigError

            raise ConfigError(
                f"{self.learner} is a classifier; sinusoid regression works with maml, "
                "fomaml, metasgd, reptile and baseline"
            )
        if self.pool is not None and self.pool not in ("max", "stride"):
            from metarl.runs.config import ConfigError

            raise ConfigError(f"FewShotConfig.pool (--pool) must be max or stride, got {self.pool}")


# ------------------------------------------------------------------------------- building


def load_split(cfg: FewShotConfig, split: str) -> ImageClasses:
    """The image classes of ``split`` ("train"/"test") for an image data set."""
    if cfg.dataset == "omniglot":
        if cfg.omniglot_split == "lake":
            split = {"train": "background", "test": "evaluation"}[split]
        return omniglot(cfg.data_path, split, image_size=cfg.image_size)
    if cfg.dataset in ("mnist", "digits"):
        from metarl.fewshot.digits import mnist, sklearn_digits

        if cfg.dataset == "digits":
            return sklearn_digits(split, image_size=cfg.image_size)
        return mnist(cfg.data_path, split, image_size=cfg.image_size)
    root = Path(cfg.data_path).expanduser()
    sub = root / split
    if sub.is_dir():
        return image_folder(sub, image_size=cfg.image_size)
    raise FileNotFoundError(
        f"image folder {str(root)!r} has no {split}/ sub-folder; expected "
        f"<root>/train/<class>/<image> and <root>/test/<class>/<image> (e.g. mini-ImageNet's "
        f"train/ and test/ folders)"
    )


def make_sampler(cfg: FewShotConfig, split: str, data: ImageClasses | None = None) -> Sampler:
    if cfg.dataset == "sinusoid":
        query = cfg.num_query if split == "train" else cfg.eval_query
        return SinusoidTasks(num_shots=cfg.num_shots, num_query=query)
    data = load_split(cfg, split) if data is None else data
    if split == "train":
        return EpisodeSampler(data, cfg.train_ways or cfg.num_ways, cfg.num_shots, cfg.num_query)
    return EpisodeSampler(data, cfg.num_ways, cfg.num_shots, cfg.eval_query)


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def build_learner(
    cfg: FewShotConfig, image_shape: tuple[int, int, int] | None, num_train_classes: int = 0
) -> Learner:
    """The learner ``cfg`` names, with its backbone (Conv4 for images, MLP for sinusoids)."""
    regression = cfg.dataset == "sinusoid"
    name = cfg.learner
    gradient_based = name in ("maml", "fomaml", "metasgd", "reptile")
    pool = _default(cfg.pool, "stride" if gradient_based and name != "reptile" else "max")

    def backbone(num_outputs: int | None) -> torch.nn.Module:
        if regression:
            return MLP()
        assert image_shape is not None
        return Conv4(image_shape, num_outputs, pool=pool)

    if name in ("maml", "fomaml", "metasgd"):
        steps = _default(cfg.num_inner_steps, 1)
        kwargs: dict[str, Any] = {
            "inner_lr": _default(cfg.inner_lr, 0.4),
            "num_inner_steps": steps,
            "num_eval_steps": _default(cfg.num_eval_steps, steps if regression else 3),
            "meta_lr": cfg.meta_lr,
            "vectorize": cfg.vectorize,
        }
        if name == "metasgd":
            return MetaSGD(backbone(cfg.num_ways), **kwargs)
        return MAML(backbone(cfg.num_ways), first_order=name == "fomaml", **kwargs)
    if name == "reptile":
        return Reptile(
            backbone(cfg.num_ways),
            inner_lr=_default(cfg.inner_lr, 1e-3),
            num_inner_steps=_default(cfg.num_inner_steps, 5),
            inner_batch_size=cfg.inner_batch_size,
            num_eval_steps=_default(cfg.num_eval_steps, 50),
            meta_step=cfg.meta_step,
            meta_step_final=cfg.meta_step_final,
            total_iterations=cfg.num_iterations,
            transductive=cfg.transductive,
        )
    if name == "protonet":
        return ProtoNet(backbone(None), lr=cfg.meta_lr)
    if name == "matching":
        net = backbone(None)
        return MatchingNet(net, net.embedding_dim, cfg.full_context, lr=cfg.meta_lr)  # type: ignore[arg-type]
    if name == "mann":
        assert image_shape is not None
        return MANN(math.prod(image_shape), cfg.num_ways, lr=cfg.meta_lr)
    # baseline
    return PretrainFinetune(
        backbone(None if regression else num_train_classes),
        lr=cfg.meta_lr,
        finetune_lr=_default(cfg.inner_lr, 0.01 if regression else 0.1),
        num_finetune_steps=_default(cfg.num_eval_steps, 1 if regression else 50),
        finetune="all" if regression else "head",
    )


# ------------------------------------------------------------------------------- running


class _FewShotTrainer(Trainer):
    """A few-shot learner's meta-training as :func:`metarl.runs.training.train_loop` drives it:
    one meta-batch of episodes per iteration."""

    outer_step = "update"

    def __init__(self, cfg: FewShotConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.rng = np.random.default_rng(cfg.seed)  # the generator seed_everything returns
        # The data first: a bad dataset path must not leave a run directory behind.
        train_data = None if cfg.dataset == "sinusoid" else load_split(cfg, "train")
        self.sampler = make_sampler(cfg, "train", train_data)
        shape = None if train_data is None else train_data.image_shape
        ntrain = 0 if train_data is None else train_data.num_classes
        self.learner = build_learner(cfg, shape, ntrain).to(device)
        self.started = time.perf_counter()

    def begin(self, run: Run, start: int) -> None:
        self.learner.train()
        # A resumed run's wall-clock continues from its last logged row (the metrics after
        # the checkpoint were dropped with the iterations they logged).
        rows = run.metrics() if start else []
        last = float(rows[-1].get("wall_clock_s") or 0.0) if rows else 0.0
        self.started = time.perf_counter() - last

    def iteration(self, it: int) -> dict[str, float]:
        batch = self.sampler.sample(self.cfg.meta_batch_size, self.rng).to(self.device)
        metrics = self.learner.meta_train_step(batch)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteError(
                f"non-finite {', '.join(bad)} ({metrics}); lower the learning rates or check "
                "the data",
                bad[0],
            )
        check_finite("parameters after the update", self.learner.state_dict(),
                     hint="lower --meta-lr or --inner-lr")  # fmt: skip
        return {**metrics, "wall_clock_s": time.perf_counter() - self.started}

    def state(self) -> dict[str, Any]:
        return self.learner.train_state()

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.learner.load_train_state(dict(state))

    def generators(self) -> Generators:
        return {"episodes": self.rng}


def train(
    cfg: FewShotConfig,
    run_dir: str | Path,
    resume: bool = False,
    num_eval_episodes: int = 600,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Meta-train (or resume) a run through :func:`metarl.runs.training.train_loop`, then
    evaluate it on held-out episodes.

    Returns the evaluation result (also written to ``<run_dir>/eval.json``).
    """
    trainers: list[_FewShotTrainer] = []

    def make(cfg: Any, device: torch.device, resume: bool) -> Trainer:
        trainers.append(_FewShotTrainer(cfg, device))
        return trainers[0]

    run = train_loop(cfg, run_dir, AGENT, make, resume=resume, overwrite=overwrite,
                     log_every=cfg.log_every, check_env=False)  # fmt: skip
    return evaluate_run(run.path, num_eval_episodes, learner=trainers[0].learner, cfg=cfg)


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[FewShotConfig, Learner]:
    """A run's config and its learner with the latest checkpoint's weights."""
    record = Run.read_record(run_dir)
    if record["agent"] != AGENT:
        raise ValueError(f"{run_dir} is a {record['agent']} run, not a few-shot run")
    cfg = FewShotConfig.from_dict({**record["config"], "device": device})
    shape, ntrain = None, 0
    if cfg.dataset != "sinusoid":
        data = load_split(cfg, "train")
        shape, ntrain = data.image_shape, data.num_classes
    learner = build_learner(cfg, shape, ntrain).to(resolve_device(device))
    run = Run(Path(run_dir), AGENT, cfg.replace(tensorboard=False))
    state = run.load_checkpoint()["state"]
    learner.load_train_state(state)
    return cfg, learner


def evaluate_run(
    run_dir: str | Path,
    num_episodes: int = 600,
    learner: Learner | None = None,
    cfg: FewShotConfig | None = None,
    device: str = "auto",
    lake_runs: bool = False,
    out: str | Path | None = None,
    num_ways: int | None = None,
    eval_query: int | None = None,
) -> dict[str, Any]:
    """Evaluate a run's learner on ``num_episodes`` held-out episodes; write JSON.

    With ``lake_runs`` also on Lake et al.'s 20 one-shot runs (``all_runs.zip`` in the
    Omniglot folder; a 20-way 1-shot learner). ``num_ways`` / ``eval_query`` change the test
    episodes (another N only for the learners without an N-way output layer: protonet,
    matching; Snell et al. test their 1-shot model 5-way and 20-way).
    """
    if learner is None or cfg is None:
        cfg, learner = load_run(run_dir, device)
    if num_ways is not None and num_ways != cfg.num_ways:
        if cfg.learner not in ("protonet", "matching"):
            raise ValueError(
                f"a {cfg.learner} run has a {cfg.num_ways}-way output layer; it evaluates only "
                f"{cfg.num_ways}-way episodes (another N works for protonet and matching)"
            )
        cfg = cfg.replace(num_ways=num_ways)
    if eval_query is not None:
        cfg = cfg.replace(eval_query=eval_query)
    dev = next(learner.parameters()).device
    sampler = make_sampler(cfg, "test")
    result: dict[str, Any] = {
        "learner": learner.name,
        "dataset": cfg.dataset,
        "split": "test",
        "num_ways": cfg.num_ways,
        "num_shots": cfg.num_shots,
        "num_query": cfg.eval_query,
        "config": cfg.to_dict(),
        "device": str(dev),
    }
    seed = cfg.seed + EVAL_SEED_OFFSET
    result.update(evaluate(learner, sampler, num_episodes, seed=seed, device=dev))
    if lake_runs:
        runs = lake_one_shot_runs(cfg.data_path, cfg.image_size)
        lake = evaluate_episodes(learner, runs, dev)
        result["lake_one_shot_runs"] = {k: v for k, v in lake.items() if k != "per_episode"}
        if cfg.omniglot_split != "lake":
            result["lake_one_shot_runs"]["warning"] = LAKE_SPLIT_WARNING
    run_metrics = Path(run_dir) / "metrics.csv"
    if run_metrics.exists():
        rows = Run(Path(run_dir), AGENT, cfg.replace(tensorboard=False)).metrics()
        if rows:
            result["iterations"] = int(rows[-1]["iteration"]) + 1
            result["train_wall_clock_s"] = float(rows[-1].get("wall_clock_s") or "nan")
    write_json(out if out is not None else Path(run_dir) / EVAL_FILE, result)
    return result


def summary_line(result: dict[str, Any]) -> str:
    mean, ci = result["mean"], result["ci95"]
    if result["metric"] == "accuracy":
        return (
            f"{result['learner']}: {100 * mean:.2f} ± {100 * ci:.2f}% accuracy over "
            f"{result['num_episodes']} held-out {result['num_ways']}-way "
            f"{result['num_shots']}-shot episodes"
        )
    return f"{result['learner']}: MSE {mean:.3f} ± {ci:.3f} over {result['num_episodes']} tasks"
