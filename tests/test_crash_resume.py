"""Issue #7, guarantee 1: crash-safe, exact resume, for every agent and learner with a run
directory. Training runs as a real process (``metarl train`` for MAML-TRPO, Reptile-RL, RL²
and the PPO baselines,
``metarl fewshot train`` for each few-shot learner), is SIGKILLed at random moments and
inside a checkpoint write, and is resumed with ``--resume``; the final checkpoint (parameters,
optimiser state, RNG states) equals an uninterrupted run's bit for bit on the CPU, the logged
metrics too, and the checkpoint on disk is loadable after every kill.

The kill points are chosen by progress (a number of rows in metrics.csv, then a random
delay), so they land inside iterations, between them and inside saves; a test hook
(``METARL_TEST_KILL_IN_CHECKPOINT_WRITE=N``) makes the process SIGKILL itself halfway through
writing its N-th checkpoint, the window an atomic save must survive.

Fast set: MAML-TRPO (a kill inside a write, random kills), Reptile-RL, RL², PEARL (whose
checkpoints hold its replay buffers), VariBAD and few-shot MAML (a kill inside a write). Slow
set: random kills for one job of each kind, more write positions, every few-shot learner, the
SB3 baselines (pretrained, oracle; random-init trains nothing).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.runs import load_checkpoint_file
from metarl.testing import tally

#: Iterations of every job: one checkpoint per iteration, so every kill has one to lose.
ITERATIONS = 8
#: Timings and throughput differ between runs; everything else logged must not.
TIMING_COLUMNS = {"sample_s", "adapt_s", "outer_s", "curvature_s", "line_search_s", "update_s",
                  "vae_s", "iteration_s", "env_steps_per_s", "wall_clock_s"}  # fmt: skip
_HOOK = "METARL_TEST_KILL_IN_CHECKPOINT_WRITE"


@dataclass(frozen=True)
class Job:
    """A tiny training run as a command line: ``fresh(run_dir, data)`` starts it,
    ``resume(run_dir)`` continues it; ``agent`` is the name its checkpoints carry."""

    agent: str
    fresh: Callable[[Path, Path], list[str]]
    resume: Callable[[Path], list[str]]
    needs_images: bool = False


def _train(*args: str) -> list[str]:
    return [sys.executable, "-m", "metarl.cli", "train", *args]


def _rl_job(agent: str, *extra: str) -> Job:
    """MAML-TRPO and Reptile-RL: a tiny 2D-navigation meta-training."""
    return _train_job(
        agent, "--env", "metarl/Navigation2D-v0", "--meta-batch-size", "3",
        "--episodes-per-task", "3", "--hidden-sizes", "8", "--horizon", "20", *extra,
    )  # fmt: skip


def _train_job(agent: str, *extra: str) -> Job:
    args = ["--agent", agent, "--num-iterations", str(ITERATIONS), "--checkpoint-every", "1",
            "--no-tensorboard", "--seed", "3", *extra]  # fmt: skip
    return Job(
        agent,
        lambda run_dir, _: _train(*args, "--run-dir", str(run_dir)),
        lambda run_dir: _train("--resume", str(run_dir)),
    )


def _fewshot(*args: str) -> list[str]:
    return [sys.executable, "-m", "metarl.cli", "fewshot", "train", *args,
            "--num-eval-episodes", "3"]  # fmt: skip


def _fewshot_job(learner: str) -> Job:
    common = ["--learner", learner, "--num-iterations", str(ITERATIONS), "--checkpoint-every",
              "1", "--log-every", "1", "--meta-batch-size", "2", "--seed", "3",
              "--device", "cpu", "--no-tensorboard"]  # fmt: skip
    if learner in ("maml", "fomaml", "metasgd", "reptile", "baseline"):  # regression
        data: list[str] = ["--dataset", "sinusoid", "--num-shots", "5", "--num-query", "5",
                           "--eval-query", "5"]  # fmt: skip
        if learner == "reptile":
            data += ["--inner-batch-size", "5"]
        images = False
    else:  # classifiers: a tiny image folder
        data = ["--dataset", "folder", "--image-size", "16", "--num-ways", "3",
                "--num-query", "1", "--eval-query", "2"]  # fmt: skip
        images = True

    def fresh(run_dir: Path, root: Path) -> list[str]:
        where = ["--data-path", str(root)] if images else []
        return _fewshot(*common, *data, *where, "--run-dir", str(run_dir))

    return Job("fewshot", fresh, lambda run_dir: _fewshot("--resume", "--run-dir", str(run_dir)),
               needs_images=images)  # fmt: skip


FEWSHOT_LEARNERS = ("maml", "fomaml", "metasgd", "reptile", "protonet", "matching", "mann",
                    "metanet", "baseline")  # fmt: skip
#: The SB3 baselines' PPO (pretrained; oracle with the task in the observation).
_PPO = ("--preset", "quick", "--n-envs", "2", "--n-steps", "20", "--batch-size", "20",
        "--n-epochs", "1", "--hidden-sizes", "8", "--horizon", "10")  # fmt: skip
JOBS = {
    "maml-trpo": _rl_job("maml-trpo"),
    "reptile-rl": _rl_job("reptile-rl", "--num-adapt-steps", "2"),
    "rl2": _train_job(
        "rl2",
        "--env",
        "metarl/BernoulliBandit-K5-v0",
        "--max-episode-steps",
        "10",
        "--num-trials",
        "8",
        "--hidden-size",
        "8",
        "--num-minibatches",
        "2",
    ),
    "pearl": _train_job(
        "pearl",
        "--preset",
        "quick",
        "--horizon",
        "10",
        "--num-train-tasks",
        "4",
        "--num-tasks-sample",
        "2",
        "--hidden-sizes",
        "8",
        "--encoder-hidden-sizes",
        "8",
        "--num-initial-steps",
        "10",
        "--num-steps-prior",
        "10",
        "--num-extra-rl-steps-posterior",
        "10",
        "--num-train-steps-per-itr",
        "3",
        "--replay-size",
        "60",
        "--meta-batch",
        "3",
        "--batch-size",
        "8",
    ),
    "varibad": _train_job(
        "varibad",
        "--num-trials",
        "4",
        "--num-minibatches",
        "2",
        "--episodes-per-trial",
        "2",
        "--hidden-sizes",
        "8",
        "--encoder-hidden",
        "8",
        "--vae-batch-num-trajs",
        "4",
    ),
    "pretrained": _train_job("pretrained", *_PPO),
    "oracle": _train_job("oracle", *_PPO),
    **{f"fewshot-{name}": _fewshot_job(name) for name in FEWSHOT_LEARNERS},
}


def _tiny_image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(4):
            d = root / split / f"{split}-class{c}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(_HOOK, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the machine is shared
    if cache is not None:
        env["METARL_CACHE"] = str(cache)
    env.update(extra)
    return env


def _run(args: list[str], cache: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(cache, **env), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _equal(a: Any, b: Any, where: str = "") -> None:
    """Deep equality of checkpoint payloads, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs from the uninterrupted run"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


Final = tuple[dict[str, Any], list[dict[str, Any]]]


def _final(job: Job, run_dir: Path) -> Final:
    """The last checkpoint (state and RNG states) and the logged metrics, timings left out."""
    payload = load_checkpoint_file(run_dir / "checkpoint.pt", agent=job.agent)
    assert payload["iteration"] == ITERATIONS
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]
    assert len(rows) == ITERATIONS
    return {"state": payload["state"], "rng": payload["rng"]}, rows


_REFERENCES: dict[str, Final] = {}


@pytest.fixture
def reference(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_root: Path,
    cache_dir: Path,
) -> Callable[[str], Final]:  # fmt: skip
    """``reference(job_name)``: an uninterrupted run's final state (run once per job)."""

    def get(name: str) -> Final:
        if name not in _REFERENCES:
            job = JOBS[name]
            run_dir = tmp_path_factory.mktemp(f"ref-{name}") / "run"
            done = _run(job.fresh(run_dir, data_root), cache_dir)
            assert done.returncode == 0, done.stderr
            _REFERENCES[name] = _final(job, run_dir)
        return _REFERENCES[name]

    return get


def _assert_same(name: str, run_dir: Path, reference: Final) -> None:
    state, rows = _final(JOBS[name], run_dir)
    _equal(state, reference[0], "checkpoint")
    assert rows == reference[1]  # no iteration lost or logged twice
    assert not list(run_dir.glob(".*.tmp"))
    tally("killed run resumed bit-exact", agent=name)


def _rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _kill_after(args: list[str], run_dir: Path, rows: int, delay: float, cache: Path) -> int:
    """Start ``args``; SIGKILL it once metrics.csv has ``rows`` rows plus ``delay`` seconds.
    Returns the exit code (-9 if killed, 0 if it finished first)."""
    proc = subprocess.Popen(args, env=_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while proc.poll() is None and _rows(run_dir) < rows and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode


def _resume_until_done(
    name: str, run_dir: Path, kills: list[tuple[int, float]], data: Path, cache: Path
) -> int:
    """Start the run, then kill and resume it at each ``(rows, delay)``; finish it.
    Returns how many kills hit a live process."""
    job, hit = JOBS[name], 0

    def command() -> list[str]:
        if (run_dir / "checkpoint.pt").exists():
            return job.resume(run_dir)
        return _fresh_over(job, run_dir, data)

    for rows, delay in kills:
        code = _kill_after(command(), run_dir, rows, delay, cache)
        hit += code == -signal.SIGKILL
        tally("random SIGKILL", agent=name, hit=code == -signal.SIGKILL)
        if (run_dir / "checkpoint.pt").exists():  # loadable after every kill
            load_checkpoint_file(run_dir / "checkpoint.pt", agent=job.agent)
    done = _run(command(), cache)
    assert done.returncode == 0, done.stderr
    return hit


def _fresh_over(job: Job, run_dir: Path, data: Path) -> list[str]:
    """A fresh start where a killed one left a run directory without a checkpoint (cleared
    here as a user would: ``metarl fewshot train`` has no --overwrite)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return job.fresh(run_dir, data)


def _killed_inside_write(
    name: str, write: int, run_dir: Path, data: Path, cache: Path, reference: Final
) -> None:
    """The ``write``-th checkpoint save dies halfway; resume (or restart) and compare."""
    job = JOBS[name]
    died = _run(job.fresh(run_dir, data), cache, **{_HOOK: str(write)})
    assert died.returncode == -signal.SIGKILL, died.stderr
    tally("SIGKILL inside a checkpoint write", agent=name)
    assert list(run_dir.glob(".checkpoint.pt.*.tmp")), "the write was not interrupted"
    if write == 1:  # no checkpoint yet: resume says so, a fresh start works
        again = _run(job.resume(run_dir), cache)
        assert again.returncode != 0 and "no checkpoint yet" in again.stderr, again.stderr
        done = _run(_fresh_over(job, run_dir, data), cache)
    else:  # the previous checkpoint, whole
        payload = load_checkpoint_file(run_dir / "checkpoint.pt", agent=job.agent)
        assert payload["iteration"] == write - 1
        done = _run(job.resume(run_dir), cache)
    assert done.returncode == 0, done.stderr
    _assert_same(name, run_dir, reference)


FAST_WRITE_KILLS = ["maml-trpo", "reptile-rl", "rl2", "pearl", "varibad", "fewshot-maml"]


@pytest.mark.parametrize("name", FAST_WRITE_KILLS)
def test_killed_inside_a_checkpoint_write_then_resumed_is_bit_exact(
    name: str, reference: Callable[[str], Final], tmp_path: Path, data_root: Path,
    cache_dir: Path,
) -> None:  # fmt: skip
    _killed_inside_write(name, 3, tmp_path / "run", data_root, cache_dir, reference(name))


def test_killed_at_a_random_moment_then_resumed_is_bit_exact(
    reference: Callable[[str], Final], tmp_path: Path, data_root: Path, cache_dir: Path
) -> None:
    rng = random.Random(0)
    kills = sorted((rng.randint(1, ITERATIONS - 2), rng.uniform(0.0, 0.15)) for _ in range(2))
    run_dir = tmp_path / "run"
    assert _resume_until_done("maml-trpo", run_dir, kills, data_root, cache_dir) >= 1
    _assert_same("maml-trpo", run_dir, reference("maml-trpo"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "seed"),
    [("maml-trpo", 1), ("reptile-rl", 0), ("rl2", 0), ("pearl", 0), ("varibad", 0),
     ("pretrained", 0),
     ("fewshot-maml", 0),
     ("fewshot-protonet", 0)],
)  # fmt: skip
def test_many_random_kills_then_resumed_is_bit_exact(
    name: str, seed: int, reference: Callable[[str], Final], tmp_path: Path, data_root: Path,
    cache_dir: Path,
) -> None:  # fmt: skip
    rng = random.Random(100 + seed)
    kills = sorted((rng.randint(0, ITERATIONS - 1), rng.uniform(0.0, 0.3)) for _ in range(3))
    run_dir = tmp_path / "run"
    assert _resume_until_done(name, run_dir, kills, data_root, cache_dir) >= 1
    _assert_same(name, run_dir, reference(name))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "write"),
    [("maml-trpo", 1), ("maml-trpo", 4), ("maml-trpo", ITERATIONS), ("reptile-rl", 1),
     ("rl2", ITERATIONS), ("varibad", ITERATIONS), ("pretrained", 5), ("oracle", 5),
     ("fewshot-maml", 1),
     *((f"fewshot-{n}", 5) for n in FEWSHOT_LEARNERS if n != "maml")],
)  # fmt: skip
def test_killed_inside_any_checkpoint_write_then_resumed_is_bit_exact(
    name: str, write: int, reference: Callable[[str], Final], tmp_path: Path, data_root: Path,
    cache_dir: Path,
) -> None:  # fmt: skip
    _killed_inside_write(name, write, tmp_path / "run", data_root, cache_dir, reference(name))
