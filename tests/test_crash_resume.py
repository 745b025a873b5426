"""Issue #7, guarantee 1: crash-safe, exact resume. ``metarl train`` runs as a real process,
is SIGKILLed at random moments and inside a checkpoint write, and is resumed with
``--resume``; the final parameters equal an uninterrupted run's bit for bit on the CPU, the
logged metrics too, and the checkpoint on disk is loadable after every kill.

The kill points are chosen by progress (a number of rows in metrics.csv, then a random
delay), so they land inside iterations, between them and inside saves; a test hook
(``METARL_TEST_KILL_IN_CHECKPOINT_WRITE=N``) makes the process SIGKILL itself halfway through
writing its N-th checkpoint, the window an atomic save must survive.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from metarl.runs import load_checkpoint_file
from metarl.testing import tally

#: A tiny 2D-navigation run: one checkpoint per iteration, so every kill has one to lose.
ITERATIONS = 8
TRAIN_ARGS = [
    "--agent", "maml-trpo", "--env", "metarl/Navigation2D-v0",
    "--num-iterations", str(ITERATIONS), "--meta-batch-size", "3", "--episodes-per-task", "3",
    "--hidden-sizes", "8", "--horizon", "20", "--checkpoint-every", "1", "--no-tensorboard",
    "--seed", "3",
]  # fmt: skip
#: Timings and throughput differ between runs; everything else logged must not.
TIMING_COLUMNS = {"sample_s", "adapt_s", "outer_s", "iteration_s", "env_steps_per_s"}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "metarl.cli", "train", *args]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(_HOOK, None)
    env.update(extra)
    return env


_HOOK = "METARL_TEST_KILL_IN_CHECKPOINT_WRITE"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=_env(**env), capture_output=True, text=True, timeout=300)


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    payload = load_checkpoint_file(run_dir / "checkpoint.pt", agent="maml-trpo")
    assert payload["iteration"] == ITERATIONS
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]
    return payload["state"]["params"], rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """An uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    done = _run(_cmd(*TRAIN_ARGS, "--run-dir", str(run_dir)))
    assert done.returncode == 0, done.stderr
    return _final(run_dir)


def _assert_same(run_dir: Path, reference: tuple[dict, list]) -> None:
    params, rows = _final(run_dir)
    ref_params, ref_rows = reference
    assert params.keys() == ref_params.keys()
    for k in params:
        assert torch.equal(params[k], ref_params[k]), f"{k} differs from the uninterrupted run"
    assert rows == ref_rows  # no iteration lost or logged twice
    assert not list(run_dir.glob(".*.tmp"))
    tally("killed run resumed bit-exact", agent="maml-trpo")


def _rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _kill_after(args: list[str], run_dir: Path, rows: int, delay: float) -> int:
    """Start ``args``; SIGKILL it once metrics.csv has ``rows`` rows plus ``delay`` seconds.
    Returns the exit code (-9 if killed, 0 if it finished first)."""
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _rows(run_dir) < rows and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode


def _resume_until_done(run_dir: Path, kills: list[tuple[int, float]]) -> int:
    """Start the run, then kill and resume it at each ``(rows, delay)``; finish it.
    Returns how many kills hit a live process."""
    hit = 0
    fresh = _cmd(*TRAIN_ARGS, "--run-dir", str(run_dir))
    for rows, delay in kills:
        started = (run_dir / "checkpoint.pt").exists()
        args = _cmd("--resume", str(run_dir)) if started else [*fresh, "--overwrite"]
        code = _kill_after(args, run_dir, rows, delay)
        hit += code == -signal.SIGKILL
        tally("random SIGKILL", hit=code == -signal.SIGKILL)
        if (run_dir / "checkpoint.pt").exists():  # loadable after every kill
            load_checkpoint_file(run_dir / "checkpoint.pt", agent="maml-trpo")
    started = (run_dir / "checkpoint.pt").exists()
    args = _cmd("--resume", str(run_dir)) if started else [*fresh, "--overwrite"]
    done = _run(args)
    assert done.returncode == 0, done.stderr
    return hit


def test_killed_inside_a_checkpoint_write_then_resumed_is_bit_exact(
    reference: tuple[dict, list], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # The 3rd save dies halfway: checkpoint.pt must still be the 2nd one, whole.
    died = _run(_cmd(*TRAIN_ARGS, "--run-dir", str(run_dir)), **{_HOOK: "3"})
    assert died.returncode == -signal.SIGKILL, died.stderr
    tally("SIGKILL inside a checkpoint write", agent="maml-trpo")
    assert list(run_dir.glob(".checkpoint.pt.*.tmp")), "the write was not interrupted"
    assert load_checkpoint_file(run_dir / "checkpoint.pt")["iteration"] == 2
    done = _run(_cmd("--resume", str(run_dir)))
    assert done.returncode == 0, done.stderr
    _assert_same(run_dir, reference)


def test_killed_at_a_random_moment_then_resumed_is_bit_exact(
    reference: tuple[dict, list], tmp_path: Path
) -> None:
    rng = random.Random(0)
    kills = [(rng.randint(1, ITERATIONS - 2), rng.uniform(0.0, 0.15)) for _ in range(2)]
    kills.sort()
    assert _resume_until_done(tmp_path / "run", kills) >= 1  # at least one kill hit a live run
    _assert_same(tmp_path / "run", reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_many_random_kills_then_resumed_is_bit_exact(
    reference: tuple[dict, list], tmp_path: Path, seed: int
) -> None:
    rng = random.Random(100 + seed)
    kills = sorted((rng.randint(0, ITERATIONS - 1), rng.uniform(0.0, 0.3)) for _ in range(4))
    assert _resume_until_done(tmp_path / "run", kills) >= 1
    _assert_same(tmp_path / "run", reference)


@pytest.mark.slow
@pytest.mark.parametrize("write", [1, 4, ITERATIONS])
def test_killed_inside_any_checkpoint_write_then_resumed_is_bit_exact(
    reference: tuple[dict, list], tmp_path: Path, write: int
) -> None:
    run_dir = tmp_path / "run"
    died = _run(_cmd(*TRAIN_ARGS, "--run-dir", str(run_dir)), **{_HOOK: str(write)})
    assert died.returncode == -signal.SIGKILL
    tally("SIGKILL inside a checkpoint write", agent="maml-trpo")
    if write == 1:  # no checkpoint yet: resume says so, a fresh start works
        again = _run(_cmd("--resume", str(run_dir)))
        assert again.returncode != 0 and "no checkpoint yet" in again.stderr
        done = _run(_cmd(*TRAIN_ARGS, "--run-dir", str(run_dir), "--overwrite"))
    else:
        assert load_checkpoint_file(run_dir / "checkpoint.pt")["iteration"] == write - 1
        done = _run(_cmd("--resume", str(run_dir)))
    assert done.returncode == 0, done.stderr
    _assert_same(run_dir, reference)


_RL2_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from metarl.agents import rl2
    torch.set_num_threads(1)
    cfg = rl2.RL2Config(env_id="metarl/BernoulliBandit-K5-v0", max_episode_steps=10,
                        num_trials=8, hidden_size=8, num_minibatches=2, num_iterations=6)
    rl2.RL2(cfg).train(checkpoint=sys.argv[1], checkpoint_every=1)
    """
)


@pytest.mark.slow
def test_rl2_killed_inside_a_checkpoint_write_then_resumed_is_bit_exact(tmp_path: Path) -> None:
    script = tmp_path / "rl2_train.py"
    script.write_text(_RL2_SCRIPT)
    ref, run = tmp_path / "ref.pt", tmp_path / "run.pt"
    assert _run([sys.executable, str(script), str(ref)]).returncode == 0
    died = _run([sys.executable, str(script), str(run)], **{_HOOK: "4"})
    assert died.returncode == -signal.SIGKILL
    tally("SIGKILL inside a checkpoint write", agent="rl2")
    assert load_checkpoint_file(run, agent="rl2")["iteration"] == 3
    done = _run([sys.executable, str(script), str(run)])  # resumes from the checkpoint
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint_file(ref), load_checkpoint_file(run)
    assert a["iteration"] == b["iteration"] == 6
    for k in a["policy"]:
        assert torch.equal(a["policy"][k], b["policy"][k]), k
    tally("killed run resumed bit-exact", agent="rl2")
