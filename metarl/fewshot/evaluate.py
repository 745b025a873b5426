"""Few-shot evaluation: accuracy (or MSE) over held-out episodes, mean ± 95% CI, JSON.

As in the papers (Finn et al. 2017; Snell et al. 2017): ``num_episodes`` (600) episodes of
the held-out split, drawn by a seeded sampler, the learner adapts to each support set, and the
per-episode query accuracy is averaged; the interval is the 95% confidence interval of that
mean over episodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from metarl.evaluation import mean_ci95
from metarl.fewshot.data import EpisodeBatch
from metarl.fewshot.learner import Learner, accuracy, is_classification
from metarl.runs.rundir import write_atomic

__all__ = ["evaluate", "evaluate_episodes", "write_json"]


class Sampler(Protocol):
    def sample(self, num_tasks: int, rng: np.random.Generator) -> EpisodeBatch: ...


def _score(learner: Learner, batch: EpisodeBatch) -> np.ndarray:
    """Per-episode accuracy (classification) or query MSE (regression)."""
    pred = learner.predict(batch)
    if is_classification(batch.query_y):
        return accuracy(pred, batch.query_y).cpu().numpy()
    return ((pred - batch.query_y) ** 2).mean(dim=(1, 2)).cpu().numpy()


def evaluate_episodes(
    learner: Learner, batches: Iterable[EpisodeBatch], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Score ``learner`` on given episodes (e.g. Lake et al.'s 20 one-shot runs)."""
    scores: list[np.ndarray] = []
    metric = "accuracy"
    start = time.perf_counter()
    learner.eval()
    for batch in batches:
        metric = "accuracy" if is_classification(batch.query_y) else "mse"
        scores.append(_score(learner, batch.to(device)))
    per_episode = np.concatenate(scores)
    mean, ci = mean_ci95(per_episode)
    return {
        "metric": metric,
        "mean": float(mean),
        "ci95": float(ci),
        "num_episodes": len(per_episode),
        "wall_clock_s": time.perf_counter() - start,
        "per_episode": per_episode.tolist(),
    }


def evaluate(
    learner: Learner,
    sampler: Sampler,
    num_episodes: int = 600,
    batch_size: int = 25,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Mean query accuracy (or MSE) over ``num_episodes`` seeded episodes with a 95% CI.

    The same ``seed`` gives the same episodes, so learners are compared on identical tasks.
    """
    if num_episodes < 1 or batch_size < 1:
        raise ValueError(
            f"num_episodes and batch_size must be positive, got {num_episodes}, {batch_size}"
        )
    rng = np.random.default_rng(seed)

    def batches() -> Iterable[EpisodeBatch]:
        done = 0
        while done < num_episodes:
            b = min(batch_size, num_episodes - done)
            yield sampler.sample(b, rng)
            done += b
            if progress is not None:
                progress(b)

    out = evaluate_episodes(learner, batches(), device)
    out["seed"] = seed
    return out


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write ``result`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
