"""Long runs stay bounded. Many small meta-iterations of each agent, with logging and
checkpoints on; the resident memory at the end of the run must match that after warm-up (no
growth from logs, caches, or autograd graphs kept alive). The per-iteration times are recorded
for the reliability report, not asserted (a loaded machine would fail a timing check). Slow:
about two to three minutes on two cores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.testing import rss_bytes, tally

#: Iterations per agent (a few thousand is what a leak of a graph per iteration shows in).
SOAK_ITERATIONS = {"maml-trpo": 600, "reptile-rl": 600, "rl2": 1500, "fewshot": 3000}
#: Allowed RSS growth from after warm-up to the end (medians).
MAX_GROWTH_MB = 20.0


def soak(agent: str, iterations: int, run_dir: Path) -> dict[str, list[float]]:
    """Train ``agent`` (``maml-trpo``, ``reptile-rl``, ``rl2`` or ``fewshot``) for
    ``iterations`` small iterations with logging and checkpoints on, recording after every
    iteration the RSS (MB) and the iteration's wall-clock time (s):
    ``{"rss_mb": [...], "iter_s": [...]}``."""
    rss: list[float] = []
    stamps: list[float] = [time.perf_counter()]

    def record() -> None:
        rss.append(rss_bytes() / 2**20)
        stamps.append(time.perf_counter())

    if agent in ("maml-trpo", "reptile-rl"):
        from metarl.agents import get_agent

        module = get_agent(agent)
        cfg = module.CONFIG(
            num_iterations=iterations, meta_batch_size=4, episodes_per_task=4,
            hidden_sizes=(16, 16), horizon=20, checkpoint_every=10, tensorboard=False,
        )  # fmt: skip
        inner = module.meta_step

        def step(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            record()
            return out

        setattr(module, "meta_step", step)  # noqa: B010  (a module from the registry)
        try:
            module.train(cfg, run_dir)
        finally:
            setattr(module, "meta_step", inner)  # noqa: B010
    elif agent == "rl2":
        from metarl.agents import rl2
        from metarl.runs.training import train_loop

        rl2_cfg = rl2.RL2Config(env_id="metarl/BernoulliBandit-K5-v0", max_episode_steps=10,
                                num_trials=16, hidden_size=16, num_minibatches=2,
                                update_epochs=1, num_iterations=iterations,
                                checkpoint_every=10, tensorboard=False)  # fmt: skip

        class Recorded(rl2.RL2):
            def iteration(self, it: int) -> dict[str, float]:
                out = super().iteration(it)
                record()
                return out

        train_loop(rl2_cfg, run_dir, rl2.AGENT, lambda cfg, device, resume: Recorded(cfg))
    elif agent == "fewshot":
        from metarl.fewshot import train as fewshot_train

        fs_cfg = fewshot_train.FewShotConfig.from_preset(
            "maml-sinusoid", num_iterations=iterations, meta_batch_size=4, checkpoint_every=10,
            log_every=1, tensorboard=False, device="cpu",
        )  # fmt: skip
        build = fewshot_train.build_learner

        def build_learner(*args: Any, **kwargs: Any) -> Any:
            learner = build(*args, **kwargs)
            step = learner.meta_train_step

            def meta_train_step(*a: Any, **k: Any) -> Any:
                out = step(*a, **k)
                record()
                return out

            learner.meta_train_step = meta_train_step  # type: ignore[method-assign]
            return learner

        fewshot_train.build_learner = build_learner
        try:
            fewshot_train.train(fs_cfg, run_dir, num_eval_episodes=2)
        finally:
            fewshot_train.build_learner = build
    else:
        raise ValueError(f"soak knows maml-trpo, reptile-rl, rl2 and fewshot, not {agent!r}")
    return {"rss_mb": rss, "iter_s": list(np.diff(stamps[: len(rss) + 1]))}


def flat(values: list[float]) -> tuple[float, float]:
    """Medians of the window after warm-up (10-20% of the run) and of the last 10%."""
    n = len(values)
    early = values[n // 10 : n // 5]
    late = values[-max(n // 10, 1) :]
    return float(np.median(early)), float(np.median(late))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flat_helper_sees_growth() -> None:
    """The check can fail: a leak of 0.1 MB per iteration over 1000 is caught."""
    leaking = [100 + 0.1 * i for i in range(1000)]
    early, late = flat(leaking)
    assert late - early > MAX_GROWTH_MB


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("agent", list(SOAK_ITERATIONS))
def test_memory_and_iteration_time_stay_flat(agent: str, tmp_path: Path) -> None:
    result = soak(agent, SOAK_ITERATIONS[agent], tmp_path / "run")
    early, late = flat(result["rss_mb"])
    t_early, t_late = flat(result["iter_s"])
    tally("soak", agent=agent, iterations=len(result["rss_mb"]), rss_start_mb=result["rss_mb"][0],
          rss_early_mb=early, rss_end_mb=late, rss_max_mb=max(result["rss_mb"]),
          iter_s_early=t_early, iter_s_end=t_late)  # fmt: skip
    assert len(result["rss_mb"]) == SOAK_ITERATIONS[agent]
    early, late = flat(result["rss_mb"])
    assert late - early <= MAX_GROWTH_MB, f"{agent}: RSS {early:.1f} -> {late:.1f} MB"
