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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.fewshot.baseline import PretrainFinetune
from metarl.fewshot.configs import (
    LEARNER_CONFIGS,
    LEARNERS,
    FewShotConfig,
    MAMLConfig,
    MatchingConfig,
    MetaNetConfig,
    MetaSGDConfig,
    ReptileConfig,
    config_class,
)
from metarl.fewshot.data import (
    EpisodeSampler,
    ImageClasses,
    SinusoidTasks,
    image_folder,
    lake_one_shot_runs,
    omniglot,
)
from metarl.fewshot.evaluate import Sampler, evaluate, evaluate_episodes, write_json
from metarl.fewshot.learner import Learner
from metarl.fewshot.maml import MAML
from metarl.fewshot.mann import MANN
from metarl.fewshot.matching import MatchingNet
from metarl.fewshot.metanet import MetaNet
from metarl.fewshot.metasgd import MetaSGD
from metarl.fewshot.miniimagenet import mini_imagenet
from metarl.fewshot.models import MLP, Conv4
from metarl.fewshot.protonet import ProtoNet
from metarl.fewshot.reptile import Reptile
from metarl.numerics import NonFiniteError, check_finite
from metarl.runs import BEST_FILE, Run, resolve_device
from metarl.runs.training import Generators, Trainer, train_loop

__all__ = [
    "LEARNERS",
    "LEARNER_CONFIGS",
    "FewShotConfig",
    "build_learner",
    "config_class",
    "evaluate_run",
    "train",
]

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


#: Validation episodes too (the same ones at every --val-every evaluation).
VAL_SEED_OFFSET = 20_000


# ------------------------------------------------------------------------------- building


def load_split(cfg: FewShotConfig, split: str) -> ImageClasses:
    """The image classes of ``split`` ("train", "val" or "test") for an image data set."""
    if cfg.dataset == "omniglot":
        if split == "val":
            raise ValueError(
                "Omniglot's few-shot protocol has no validation split: drop --val-every (it "
                "needs --dataset miniimagenet, or an image folder with a val/ sub-folder)"
            )
        if cfg.omniglot_split == "lake":
            split = {"train": "background", "test": "evaluation"}[split]
        return omniglot(cfg.data_path, split, image_size=cfg.image_size)
    if cfg.dataset in ("mnist", "digits"):
        from metarl.fewshot.digits import mnist, sklearn_digits

        if cfg.dataset == "digits":
            return sklearn_digits(split, image_size=cfg.image_size)
        return mnist(cfg.data_path, split, image_size=cfg.image_size)
    if cfg.dataset == "miniimagenet":
        return mini_imagenet(cfg.data_path, split, image_size=cfg.image_size)
    root = Path(cfg.data_path).expanduser()
    sub = root / split
    if sub.is_dir():
        return image_folder(sub, image_size=cfg.image_size)
    if split == "val":
        raise FileNotFoundError(
            f"image folder {str(root)!r} has no val/ sub-folder, which --val-every evaluates "
            f"on; add <root>/val/<class>/<image> or drop --val-every"
        )
    raise FileNotFoundError(
        f"image folder {str(root)!r} has no {split}/ sub-folder; expected "
        f"<root>/train/<class>/<image> and <root>/test/<class>/<image> (and val/ for "
        f"--val-every)"
    )


def make_sampler(cfg: FewShotConfig, split: str, data: ImageClasses | None = None) -> Sampler:
    """Episodes of ``split``: training episodes for "train", test-time ones otherwise."""
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
    """The learner ``cfg`` configures, with its backbone (Conv4 for images, MLP for
    sinusoids)."""
    regression = cfg.dataset == "sinusoid"
    c: Any = cfg  # every learner's config but MANN's has pool and hidden

    def backbone(num_outputs: int | None) -> torch.nn.Module:
        if regression:
            return MLP()
        assert image_shape is not None
        return Conv4(image_shape, num_outputs, hidden=c.hidden, pool=c.pool)

    if isinstance(cfg, MAMLConfig):  # MAML, first-order MAML, Meta-SGD
        kwargs: dict[str, Any] = {
            "inner_lr": cfg.inner_lr,
            "num_inner_steps": cfg.num_inner_steps,
            "num_eval_steps": _default(
                cfg.num_eval_steps, cfg.num_inner_steps if regression else 3
            ),
            "meta_lr": cfg.meta_lr,
            "vectorize": cfg.vectorize,
        }
        if isinstance(cfg, MetaSGDConfig):
            return MetaSGD(backbone(cfg.num_ways), **kwargs)
        return MAML(backbone(cfg.num_ways), first_order=cfg.learner == "fomaml", **kwargs)
    if isinstance(cfg, ReptileConfig):
        return Reptile(
            backbone(cfg.num_ways),
            inner_lr=cfg.inner_lr,
            num_inner_steps=cfg.num_inner_steps,
            inner_batch_size=cfg.inner_batch_size,
            num_eval_steps=cfg.num_eval_steps,
            meta_step=cfg.meta_step,
            meta_step_final=cfg.meta_step_final,
            total_iterations=cfg.num_iterations,
            transductive=cfg.transductive,
        )
    if cfg.learner == "protonet":
        return ProtoNet(backbone(None), lr=c.meta_lr)
    if isinstance(cfg, MatchingConfig):
        net = backbone(None)
        return MatchingNet(net, net.embedding_dim, cfg.full_context, lr=cfg.meta_lr)  # type: ignore[arg-type]
    if cfg.learner == "mann":
        assert image_shape is not None
        return MANN(math.prod(image_shape), cfg.num_ways, lr=c.meta_lr)
    if isinstance(cfg, MetaNetConfig):
        assert image_shape is not None
        base, key = backbone(None), backbone(None)
        return MetaNet(
            base,
            key,
            feature_dim=base.embedding_dim,  # type: ignore[arg-type]
            num_ways=cfg.num_ways,
            fc_size=cfg.fc_size,
            key_size=cfg.key_size,
            generator_size=cfg.generator_size,
            fast_weights=cfg.fast_weights,
            lr=cfg.meta_lr,
        )
    if cfg.learner == "baseline":
        return PretrainFinetune(
            backbone(None if regression else num_train_classes),
            lr=c.meta_lr,
            finetune_lr=_default(c.inner_lr, 0.01 if regression else 0.1),
            num_finetune_steps=_default(c.num_eval_steps, 1 if regression else 50),
            finetune="all" if regression else "head",
        )
    raise ValueError(f"no builder for few-shot learner {cfg.learner!r}")


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
        self.val_sampler = make_sampler(cfg, "val") if cfg.val_every else None
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

    def validate(self, it: int) -> dict[str, float] | None:
        """Every ``val_every`` iterations: the mean accuracy (or −MSE) on the same
        ``num_val_episodes`` validation episodes; the loop keeps the best as best.pt."""
        if self.val_sampler is None or (it + 1) % self.cfg.val_every:
            return None
        seed = self.cfg.seed + VAL_SEED_OFFSET
        result = evaluate(self.learner, self.val_sampler, self.cfg.num_val_episodes,
                          seed=seed, device=self.device)  # fmt: skip
        self.learner.train()
        score = result["mean"] if result["metric"] == "accuracy" else -result["mean"]
        return {f"val_{result['metric']}": result["mean"], "val_score": score}

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
    if cfg.val_every and (run.path / BEST_FILE).exists():  # model selection on validation
        return evaluate_run(run.path, num_eval_episodes, device=cfg.device, checkpoint="best")
    return evaluate_run(run.path, num_eval_episodes, learner=trainers[0].learner, cfg=cfg)


def load_run(
    run_dir: str | Path, device: str = "auto", checkpoint: str = "latest"
) -> tuple[FewShotConfig, Learner]:
    """A run's config and its learner with the weights of its ``checkpoint``: ``"latest"``
    (checkpoint.pt) or ``"best"`` (best.pt, the best validation score of a run trained with
    ``val_every``)."""
    if checkpoint not in ("latest", "best"):
        raise ValueError(f"checkpoint must be latest or best, got {checkpoint!r}")
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
    state = run.load_best()["state"] if checkpoint == "best" else run.load_checkpoint()["state"]
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
    checkpoint: str = "latest",
) -> dict[str, Any]:
    """Evaluate a run's learner on ``num_episodes`` held-out episodes; write JSON.

    With ``lake_runs`` also on Lake et al.'s 20 one-shot runs (``all_runs.zip`` in the
    Omniglot folder; a 20-way 1-shot learner). ``num_ways`` / ``eval_query`` change the test
    episodes (another N only for the learners without an N-way output layer: protonet,
    matching; Snell et al. test their 1-shot model 5-way and 20-way).
    """
    if learner is None or cfg is None:
        cfg, learner = load_run(run_dir, device, checkpoint)
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
        "checkpoint": checkpoint,
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
    if out is None:  # the run's own evaluation: its model card shows it
        from metarl.fewshot.model_card import write_model_card

        write_model_card(run_dir)
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
