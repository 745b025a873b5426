"""Issue #7, guarantee 6: long runs stay bounded. Many small meta-iterations of each agent,
with logging and checkpoints on; the resident memory and the per-iteration time at the end
of the run must match those after warm-up (no growth from logs, caches, or autograd graphs
kept alive). Slow: about two to three minutes on two cores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.testing import soak, tally

#: Iterations per agent (a few thousand is what a leak of a graph per iteration shows in).
SOAK_ITERATIONS = {"maml-trpo": 600, "reptile-rl": 600, "rl2": 1500, "fewshot": 3000}
#: Allowed RSS growth from after warm-up to the end, and per-iteration slow-down (medians).
MAX_GROWTH_MB = 20.0
MAX_SLOWDOWN = 2.5


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
    t_early, t_late = flat(result["iter_s"])
    assert t_late <= MAX_SLOWDOWN * t_early, f"{agent}: {t_early:.4f} -> {t_late:.4f} s/iter"
