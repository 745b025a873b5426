"""Meta-World through metarl's task API (optional extra; CI installs it, see .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip(
    "metaworld",
    reason='the optional Meta-World extra is absent: pip install -e ".[metaworld]" && '
    "pip install --no-deps metaworld==3.1.1",
)

from metarl.envs import meta_world
from metarl.stepping.checks import check_env
from metarl.tasks import TaskError

# Registration happens in a subprocess: registered here, the 52 ids would join every test
# that is parameterised over metarl.family_ids(). In-process tests build the env directly.


def _ml1(env_name: str = "reach-v3") -> gym.Env:
    return gym.wrappers.TimeLimit(meta_world.MetaWorldEnv("ML1", env_name), 500)


def _ml10() -> gym.Env:
    return gym.wrappers.TimeLimit(meta_world.MetaWorldEnv("ML10", None), 500)


def test_registration_is_explicit_and_import_stays_light() -> None:
    code = (
        "import sys, gymnasium as gym, metarl;"
        "assert 'metaworld' not in sys.modules, 'import metarl imported Meta-World';"
        "from metarl.envs import meta_world;"
        "ids = meta_world.register(); assert meta_world.register() == ids;"
        "env = gym.make('metarl/MetaWorld-ML1-reach-v3-v0'); env.reset(seed=0);"
        "assert env.spec.max_episode_steps == 500;"
        "print(len(ids), 'metarl/MetaWorld-ML10-v0' in ids, 'metarl/MetaWorld-ML45-v0' in ids)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["52", "True", "True"], out.stderr[-2000:]


@pytest.mark.parametrize("make", [_ml1, _ml10], ids=["ML1-reach", "ML10"])
def test_meta_world_passes_every_check(make: object) -> None:
    # Gymnasium and SB3 checkers, determinism, task sensitivity, splits, batched vs single.
    results = check_env(make, steps=20)
    assert [(r.name, r.message) for r in results if not r.ok] == []


def test_ml10_has_its_own_held_out_task_types_and_reports_success() -> None:
    env = _ml10()
    dist = env.unwrapped.task_distribution
    train, test = dist.split("train"), dist.split("test")
    assert len(train) == 500 and len(test) == 250
    train_types = {t.env_name for t in train}
    test_types = {t.env_name for t in test}
    assert len(train_types) == 10 and len(test_types) == 5 and not train_types & test_types
    task = test[-1]  # a held-out task type
    obs, _ = env.reset(seed=0, options={"task": task})
    assert obs.shape == (39,)
    _, r, _, _, info = env.step(np.zeros(4, dtype=np.float32))
    assert np.isfinite(r) and "success" in info and info["is_success"] in (True, False)


def test_ml1_goals_differ_between_tasks_and_foreign_tasks_are_refused() -> None:
    env = _ml1()
    reach = env.unwrapped.task_distribution
    push = meta_world.MetaWorldDistribution("ML1", "push-v3")
    assert len(set(reach.split("train")) | set(reach.split("test"))) == 100
    with pytest.raises(TaskError, match="is not a task of MetaWorld-ML1-reach-v3"):
        env.reset(options={"task": push.split("train")[0]})


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    meta_world.import_metaworld.cache_clear()
    monkeypatch.setitem(sys.modules, "metaworld", None)
    try:
        with pytest.raises(ImportError, match="pip install --no-deps metaworld"):
            meta_world.import_metaworld()
    finally:
        monkeypatch.undo()
        meta_world.import_metaworld.cache_clear()
        meta_world.import_metaworld()


# -- from the metarl command -------------------------------------------------------------------
REACH = "metarl/MetaWorld-ML1-reach-v3-v0"
# Real training cut to seconds: one iteration of tiny batches on 20-step episodes.
TINY_CLI = {
    "maml-trpo": ["--num-iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "2",
                  "--hidden-sizes", "8", "--horizon", "20"],
    "reptile-rl": ["--num-iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "2",
                   "--hidden-sizes", "8", "--horizon", "20"],
    "rl2": ["--num-iterations", "1", "--num-trials", "4", "--episodes-per-trial", "2",
            "--hidden-size", "8", "--max-episode-steps", "20", "--num-minibatches", "1"],
}  # fmt: skip


def _metarl(*args: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-m", "metarl.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _train_and_evaluate(agent: str, env_id: str, cwd) -> str:
    _metarl("train", "--agent", agent, "--env", env_id, *TINY_CLI[agent], "--device", "cpu",
            "--no-tensorboard", "--run-dir", "run", cwd=cwd)  # fmt: skip
    return _metarl("evaluate", "run", "--max-tasks", "2", "--episodes", "2", "--seeds", "0",
                   "--steps", "1", cwd=cwd)  # fmt: skip


def test_ml1_reach_from_the_command_line(tmp_path) -> None:
    rows = json.loads(_metarl("envs", "--json", cwd=tmp_path))
    ids = {r["id"]: r for r in rows}
    assert ids[REACH]["num_train"] == 50 and "metarl/MetaWorld-ML10-v0" in ids
    out = _train_and_evaluate("maml-trpo", REACH, tmp_path)
    assert "k=1:" in out and "success" in out  # the success rate, printed
    _metarl("benchmark", "--agents", "rl2", "--envs", REACH, "--seeds", "0", "--preset",
            "none", "--steps", "1", "--max-tasks", "2", "--episodes", "2", "--set",
            *(f"rl2.{k.lstrip('-').replace('-', '_')}={v}"
              for k, v in zip(TINY_CLI["rl2"][::2], TINY_CLI["rl2"][1::2], strict=True)),
            "rl2.device=cpu", "rl2.tensorboard=false", "--out", "rep", cwd=tmp_path)  # fmt: skip
    entry = json.loads((tmp_path / "rep" / "report.json").read_text())["entries"][0]
    assert entry["env_id"] == REACH and len(entry["success_rate"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["maml-trpo", "reptile-rl", "rl2"])
@pytest.mark.parametrize("env_id", [REACH, "metarl/MetaWorld-ML1-push-v3-v0",
                                    "metarl/MetaWorld-ML1-pick-place-v3-v0",
                                    "metarl/MetaWorld-ML10-v0"])  # fmt: skip
def test_every_agent_on_ml1_and_ml10_from_the_command_line(tmp_path, agent, env_id) -> None:
    assert "success" in _train_and_evaluate(agent, env_id, tmp_path)
