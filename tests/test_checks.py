"""`metarl check-env`: passes the example task family, and catches deliberately broken envs
with a message that says what to fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metarl.cli import main
from metarl.stepping.checks import CheckResult, check_env, load_target

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "scripts" / "example_task_family.py"

BROKEN = textwrap.dedent(
    """
    from dataclasses import dataclass

    import numpy as np
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    import metarl


    @dataclass(frozen=True)
    class MassTask:
        mass: float


    dist = metarl.BoxTaskDistribution("Mass", MassTask, low={"mass": 0.5}, high={"mass": 2.0})

    # set_task that does nothing: the task never reaches the simulation.
    IgnoresTask = metarl.make_task_env(PendulumEnv, dist, lambda env, task: None)


    class NoisyPendulum(PendulumEnv):
        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed, options=options)
            self.state = self.state + np.random.default_rng().normal(size=2)  # unseeded
            return self._get_obs(), info


    # A reset that is not a function of its seed.
    NonDeterministic = metarl.make_task_env(
        NoisyPendulum, dist, lambda env, task: setattr(env, "m", task.mass)
    )

    NotATaskEnv = PendulumEnv


    class Overlapping(metarl.BoxTaskDistribution):
        def _draw_splits(self, seed):
            train, test = super()._draw_splits(seed)
            return train, test[:-1] + (train[0],)


    overlapping = Overlapping("Overlap", MassTask, low={"mass": 0.5}, high={"mass": 2.0})
    """
)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken_envs.py"
    path.write_text(BROKEN)
    return path


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_the_example_family_passes_every_check() -> None:
    results = check_env(load_target(f"{EXAMPLE}:PendulumDynamics"), steps=30)
    assert [r.name for r in results if not r.ok] == []
    assert {"task sensitivity", "determinism", "batched vs single (generic)"} <= {
        r.name for r in results
    }
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready for metarl" in out.stdout and "per training task" in out.stdout


def test_a_registered_family_with_a_native_backend_is_checked_on_it() -> None:
    results = _by_name(check_env("metarl/HopperRandParams-v0", steps=20))
    assert results["batched vs single (mujoco)"].ok
    assert all(r.ok for r in results.values())


def test_set_task_that_does_nothing_is_caught(broken: Path) -> None:
    results = _by_name(check_env(load_target(f"{broken}:IgnoresTask"), steps=30))
    bad = results["task sensitivity"]
    assert bad.ok is False and "does not reach the simulation" in bad.message
    assert results["determinism"].ok


def test_non_deterministic_reset_is_caught(broken: Path) -> None:
    results = _by_name(check_env(load_target(f"{broken}:NonDeterministic"), steps=30))
    assert results["determinism"].ok is False
    assert "self.np_random" in results["determinism"].message


def test_not_a_task_env_and_overlapping_splits_are_caught(broken: Path) -> None:
    (api,) = check_env(load_target(f"{broken}:NotATaskEnv"))
    assert api.ok is False and "make_task_env" in api.message
    (splits,) = check_env(load_target(f"{broken}:overlapping"))
    assert splits.ok is False and "in both train and test" in splits.message


def test_cli_report_and_exit_codes(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-env", f"{broken}:IgnoresTask", "--steps", "20"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  task sensitivity" in out and "fix the 1 failure(s) above" in out
    assert main(["check-env", "metarl/Navigation2D-v0"]) == 0
    assert "ready for metarl" in capsys.readouterr().out
    assert main(["check-env", f"{broken}:Nope"]) == 2
    assert "has no attribute 'Nope'" in capsys.readouterr().err
    assert main(["check-env", "no.such.module:X"]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["check-env", "not-an-id"]) == 2
    assert main(["check-env", "missing/file.py:X"]) == 2
