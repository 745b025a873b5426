from __future__ import annotations

import json
import os
import pickle
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.runs import (
    CheckpointError,
    Run,
    RunMismatchError,
    capture_rng_state,
    progress,
    resolve_device,
    restore_rng_state,
)
from metarl.runs.config import RunConfig, option
from metarl.testing import tally


@dataclass
class Cfg(RunConfig):
    lr: float = option(0.1, "step size", low=0.0, low_open=True)


def test_run_directory_layout_and_metrics(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(num_iterations=3, tensorboard=False))
    run.log(0, {"return": -1.5, "kl": torch.tensor(0.01)})
    run.log(1, {"return": -1.0, "kl": 0.02, "step_size": 0.5})  # a new column appears
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == ["0", "1"]
    assert rows[0]["step_size"] == "" and float(rows[1]["step_size"]) == 0.5
    record = Run.read_record(tmp_path / "r")
    assert record["agent"] == "toy" and record["config"]["num_iterations"] == 3
    with pytest.raises(FileExistsError, match="--resume"):
        Run.create(tmp_path / "r", "toy", Cfg())


def test_checkpoint_round_trip_restores_rng_streams(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    rng = np.random.default_rng(5)
    gen = torch.Generator().manual_seed(7)
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    params = {"w": torch.randn(3, 2), "log_std": torch.zeros(2)}
    run.save_checkpoint(
        4,
        {"params": params, "opt": {"step": 3, "hist": [1.0, 2.0]}, "arr": np.arange(3.0)},
        generators={"tasks": rng, "env": gen},
    )
    expected = _draw(rng, gen)
    # Scramble everything, then load.
    random.seed(9)
    np.random.seed(9)  # noqa: NPY002
    torch.manual_seed(9)
    rng2, gen2 = np.random.default_rng(0), torch.Generator().manual_seed(0)
    ckpt = Run.resume(tmp_path / "r", "toy", Cfg()).load_checkpoint({"tasks": rng2, "env": gen2})
    got = _draw(rng2, gen2)
    assert ckpt["iteration"] == 4
    assert torch.equal(ckpt["state"]["params"]["w"], params["w"])
    assert ckpt["state"]["opt"] == {"step": 3, "hist": [1.0, 2.0]}
    np.testing.assert_array_equal(ckpt["state"]["arr"], np.arange(3.0))
    assert got[0] == expected[0] and got[1] == expected[1] and got[3] == expected[3]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[4], expected[4])


def _draw(rng: np.random.Generator, gen: torch.Generator) -> tuple:
    legacy = np.random.random()  # noqa: NPY002 (the global state is what is tested)
    return (random.random(), legacy, torch.rand(1), rng.random(), torch.rand(1, generator=gen))


def test_capture_restore_rng_without_a_run() -> None:
    state = capture_rng_state()
    a = (random.random(), torch.rand(2))
    restore_rng_state(state)
    b = (random.random(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_non_finite_checkpoint_is_refused_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    run.save_checkpoint(1, {"w": torch.ones(2)})
    before = run.checkpoint_path.read_bytes()
    with pytest.raises(CheckpointError, match=r"non-finite values in params\.w"):
        run.save_checkpoint(2, {"params": {"w": torch.tensor([1.0, float("nan")])}})
    with pytest.raises(CheckpointError, match="loss"):
        run.save_checkpoint(2, {"loss": float("inf")})
    assert run.checkpoint_path.read_bytes() == before
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_crafted_pickle_is_refused(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    with run.checkpoint_path.open("wb") as f:
        torch.save({"iteration": 1, "state": {}, "rng": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        Run.resume(tmp_path / "r", "toy", Cfg()).load_checkpoint()


def test_resume_refuses_another_agent_or_config(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(lr=0.1, tensorboard=False))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Run.resume(tmp_path / "r", "toy", Cfg(lr=0.1))
    run.save_checkpoint(1, {"w": torch.ones(1)})
    with pytest.raises(RunMismatchError, match="made by agent 'toy', not 'other'"):
        Run.resume(tmp_path / "r", "other", Cfg(lr=0.1))
    with pytest.raises(RunMismatchError, match=r"lr: run has 0\.1, asked for 0\.2"):
        Run.resume(tmp_path / "r", "toy", Cfg(lr=0.2))
    with pytest.raises(RunMismatchError, match="env_id"):
        Run.resume(tmp_path / "r", "toy", Cfg(env_id="metarl/AntVel-v0"))
    # More iterations or another device are fine.
    Run.resume(tmp_path / "r", "toy", Cfg(lr=0.1, num_iterations=999, device="cpu"))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.resume(tmp_path / "nothing", "toy", Cfg())


def test_resume_refuses_a_config_json_edited_after_the_checkpoint(tmp_path: Path) -> None:
    """config.json is where `metarl train --resume` reads a run's settings from; the checkpoint
    records the settings it was made under, so an edit (by hand) is caught, not continued."""
    run = Run.create(tmp_path / "r", "toy", Cfg(lr=0.1, num_iterations=4, tensorboard=False))
    run.log(0, {"x": 0.0})
    run.save_checkpoint(1, {"w": torch.ones(1)})
    before = {f.name: f.read_bytes() for f in run.path.iterdir()}
    record = Run.read_record(run.path)
    record["config"]["lr"] = 0.5  # by hand
    (run.path / "config.json").write_text(json.dumps(record))
    edited = Cfg.from_dict(Run.read_record(run.path)["config"])  # what the CLI would build
    resumed = Run.resume(run.path, "toy", edited)  # agrees with config.json
    with pytest.raises(RunMismatchError) as info:
        resumed.load_checkpoint()
    text = str(info.value)
    assert "lr: checkpoint 0.1, now 0.5" in text and "config.json edited" in text
    assert "put these values back" in text and "num_iterations" in text  # what may change
    after = {f.name: f.read_bytes() for f in run.path.iterdir()}
    assert {k: v for k, v in after.items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"
    }  # the refused resume touched nothing (metrics not truncated, checkpoint kept)
    # Fields marked may_change_on_resume may be edited; so may an edit that is put back.
    record["config"]["lr"], record["config"]["num_iterations"] = 0.1, 9
    (run.path / "config.json").write_text(json.dumps(record))
    cfg = Cfg.from_dict(Run.read_record(run.path)["config"])
    assert Run.resume(run.path, "toy", cfg).load_checkpoint()["iteration"] == 1
    tally("edited config.json refused on resume", agent="toy")


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    for i in range(3):
        run.log(i, {"x": float(i)})
    run.save_checkpoint(2, {"w": torch.ones(1)})  # iterations 0 and 1 are done
    run.log(2, {"x": 2.0})  # lost with an interruption; redone after resume
    Run.resume(tmp_path / "r", "toy", Cfg()).load_checkpoint()
    assert [r["iteration"] for r in run.metrics()] == ["0", "1"]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA GPU.*--device cpu"):
            resolve_device("cuda")


def test_progress_is_quiet_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()
    assert list(progress(range(3), total=3, desc="x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
