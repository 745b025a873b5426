"""Issue #7, guarantee 3: no hang, ever. An env that raises, dies (os._exit, SIGKILL) or never
returns surfaces in bounded time as an error naming the env, the task and the original
traceback; worker processes are reaped; no orphans remain when the trainer itself is killed.

Bounded time is enforced by pytest-timeout (a hang fails the test), not by timing asserts.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import metarl
from metarl.runs import load_checkpoint_file
from metarl.stepping.batched import EnvError
from metarl.stepping.workers import EnvWorkerError, SubprocessBatchedEnv
from metarl.testing import faulty_task, register_faulty_family, tally

FAULTY = register_faulty_family()
#: Two tasks behave, two misbehave (goal x > 0.2): the error must name a misbehaving one.
TASKS = [faulty_task(x) for x in (-0.4, -0.2, 0.1, 0.3)]
BAD_TASK = "GoalTask(goal=(0.3, 0.0))"
#: Faults tried in worker processes (benchmarks/reliability.md counts them).
WORKER_FAULTS = ("raise", "raise_on_reset", "exit", "kill", "hang")
IN_PROCESS_FAULTS = ("raise", "raise_on_reset")


def _drive(batch: metarl.BatchedTaskEnv) -> None:
    batch.reset(TASKS, seeds=0)
    while batch.active.any():
        batch.step(np.zeros((len(TASKS), 2), dtype=np.float32))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", WORKER_FAULTS)
def test_a_faulty_env_in_a_worker_becomes_an_error_and_every_worker_is_reaped(
    fault: str,
) -> None:
    batch = metarl.make_batched(
        FAULTY, 4, backend="subprocess", num_workers=2, timeout=2.0, fault=fault, min_goal_x=0.2
    )
    assert isinstance(batch, SubprocessBatchedEnv)
    pids = [p.pid for p in batch.processes]
    with pytest.raises(EnvWorkerError) as info:
        _drive(batch)
    err = info.value
    text = str(err)
    assert FAULTY in text and err.env_id == FAULTY
    assert BAD_TASK in text and any(repr(t) == BAD_TASK for t in err.tasks)
    assert ("reset" if fault == "raise_on_reset" else "step 3") in text
    expected = {
        "raise": "simulated simulator failure at step 3",
        "raise_on_reset": "simulated reset failure",
        "exit": "exited with code 3",
        "kill": "killed by signal SIGKILL",
        "hang": "did not answer within 2 s",
    }[fault]
    assert expected in text
    if fault.startswith("raise"):  # the original traceback, down to the env's line
        assert err.worker_traceback is not None
        assert "testing.py" in err.worker_traceback and "Traceback" in text
    assert not any(p.is_alive() for p in batch.processes)
    assert not set(pids) & {p.pid for p in mp.active_children()}
    with pytest.raises(RuntimeError, match="closed"):  # a dead batch says so, never hangs
        batch.reset(TASKS, seeds=0)
    batch.close()
    tally("faulty env in a worker surfaced, workers reaped", fault=fault)


@pytest.mark.parametrize("fault", IN_PROCESS_FAULTS)
def test_an_env_that_raises_in_process_names_the_env_task_and_cause(fault: str) -> None:
    batch = metarl.make_batched(FAULTY, 4, backend="generic", fault=fault, min_goal_x=0.2)
    with pytest.raises(EnvError) as info:
        _drive(batch)
    text = str(info.value)
    assert FAULTY in text and BAD_TASK in text
    if fault == "raise":
        assert "step 3 of row 3" in text and info.value.tasks == [TASKS[3]]
    assert isinstance(info.value.__cause__, RuntimeError)  # the original, with its traceback
    assert "simulated" in str(info.value.__cause__)
    tally("faulty env in process surfaced", fault=fault)


@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", "metarl/BernoulliBandit-K5-v0",
                                    "metarl/TabularMDP-S10A5-v0"])  # fmt: skip
def test_the_subprocess_backend_gives_the_in_process_results_row_for_row(env_id: str) -> None:
    n = 6
    tasks = list(metarl.task_distribution(env_id).split("train")[:3]) * 2
    local = metarl.make_batched(env_id, n)
    remote = metarl.make_batched(env_id, n, backend="subprocess", num_workers=3, timeout=30.0)
    try:
        a, _ = local.reset(tasks, seeds=5)
        b, _ = remote.reset(tasks, seeds=5)
        np.testing.assert_array_equal(a, b)
        space = local.single_action_space
        space.seed(0)
        while local.active.any():
            actions = np.stack([space.sample() for _ in range(n)])
            ra = local.step(actions)
            rb = remote.step(actions)
            for x, y in zip(ra[:4], rb[:4], strict=True):
                np.testing.assert_array_equal(x, y)
        assert not remote.active.any()
    finally:
        remote.close()
    assert not any(p.is_alive() for p in remote.processes)


def test_bad_worker_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="num_workers must be an integer >= 1"):
        metarl.make_batched("metarl/Navigation2D-v0", 2, backend="subprocess", num_workers=0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        metarl.make_batched("metarl/Navigation2D-v0", 2, backend="subprocess", timeout=0)
    with pytest.raises(ValueError, match="available: numpy, generic, subprocess"):
        metarl.make_batched("metarl/Navigation2D-v0", 2, backend="nope")


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, metarl
    from metarl.testing import faulty_task, register_faulty_family
    eid = register_faulty_family()
    batch = metarl.make_batched(eid, 4, backend="subprocess", num_workers=2, timeout=600,
                                fault="hang", min_goal_x=0.2)
    print(" ".join(str(p.pid) for p in batch.processes), flush=True)
    batch.reset([faulty_task(x) for x in (-0.4, -0.2, 0.1, 0.3)], seeds=0)
    while True:  # step 3 hangs in one worker; the parent waits (up to 600 s) until killed
        batch.step(np.zeros((4, 2), dtype=np.float32))
    """
)


_ORPHAN_SCRIPT_SB3 = textwrap.dedent(
    """
    import numpy as np
    from stable_baselines3.common.monitor import Monitor
    from metarl.agents.sb3_baselines import MultiTaskEnv
    from metarl.stepping.sb3_vec_env import WorkerVecEnv
    from metarl.testing import register_faulty_family
    eid = register_faulty_family()
    make = lambda: Monitor(MultiTaskEnv(eid, fault="hang", min_goal_x=-1.0))
    venv = WorkerVecEnv([make] * 4, eid, num_workers=2, timeout=600)
    print(" ".join(str(p.pid) for p in venv.processes), flush=True)
    venv.reset()
    while True:  # step 3 hangs; the parent waits (up to 600 s) until killed
        venv.step(np.zeros((4, 2), dtype=np.float32))
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; it only waits for its (new) parent to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["batched", "sb3"])
def test_killing_the_trainer_leaves_no_orphan_workers(kind: str, tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(_ORPHAN_SCRIPT if kind == "batched" else _ORPHAN_SCRIPT_SB3)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(1.0)  # let the hang begin
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "worker processes outlived their parent"
    tally("trainer SIGKILLed, no orphan workers", workers=len(pids), kind=kind)


def _live_children() -> set[int]:
    """Processes (not zombies) whose parent is this one."""
    me, out = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


#: What each fault looks like in the error of a training run (worker timeout 2 s).
RUN_FAULTS = {
    "hang": "did not answer within 2 s",
    "kill": "killed by signal SIGKILL",
    "raise": "simulated simulator failure at step 2",
}


def _check_named_iteration(err: EnvWorkerError, run_dir: Path, agent: str) -> None:
    """The error names the iteration it happened in and the checkpoint kept; that checkpoint
    is the one written after the previous iteration, and no metrics row of the failed
    iteration was logged (nothing was written for it)."""
    text = str(err)
    payload = load_checkpoint_file(run_dir / "checkpoint.pt", agent=agent)
    assert err.iteration is not None and payload["iteration"] == err.iteration
    assert text.startswith(f"iteration {err.iteration}: ")
    assert f"the last good checkpoint ({run_dir / 'checkpoint.pt'}) is kept" in text
    assert isinstance(err.__cause__, EnvWorkerError)  # the original, chained
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == err.iteration


def _train_until_worker_error(
    module: Any, cfg: Any, run_dir: Path, env_id: str, fault: str
) -> EnvWorkerError:
    """Train until the faulty env stops the run; the error names the env, its task and step
    2, carries the fault's message, and no worker outlives the run."""
    before = _live_children()
    with pytest.raises(EnvWorkerError) as info:
        module.train(cfg, run_dir)
    text = str(info.value)
    assert env_id in text and "GoalTask(goal=(" in text and "step 2" in text
    assert RUN_FAULTS[fault] in text
    assert not _live_children() - before, "a worker outlived the failed run"
    return info.value


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("agent", ["maml-trpo", "reptile-rl"])
@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
def test_a_training_run_on_a_faulty_env_stops_with_the_error_and_keeps_its_checkpoint(
    agent: str, fault: str, tmp_path: Path
) -> None:
    """End to end: ``train(..., backend="subprocess")`` on an env that hangs, dies or raises
    in its third iteration stops with an EnvWorkerError naming iteration 2, leaves no worker
    behind and keeps the checkpoint of iteration 2."""
    from metarl.agents import get_agent

    module = get_agent(agent)
    # Two episodes per row per iteration (MAML: inner + validation; Reptile: k = 2): the
    # 5th episode of a row is in iteration 2.
    env_id = register_faulty_family(fault, at_step=2, from_episode=5, min_goal_x=0.0)
    extra = {"num_adapt_steps": 2} if agent == "reptile-rl" else {}
    cfg = module.CONFIG(
        env_id=env_id, num_iterations=6, meta_batch_size=2, episodes_per_task=2,
        hidden_sizes=(8,), horizon=10, checkpoint_every=1, tensorboard=False,
        backend="subprocess", num_workers=2, worker_timeout=2.0, **extra,
    )  # fmt: skip
    err = _train_until_worker_error(module, cfg, tmp_path / "run", env_id, fault)
    assert err.iteration == 2
    _check_named_iteration(err, tmp_path / "run", agent)
    tally("faulty env in a worker surfaced, workers reaped", agent=agent, fault=fault)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
def test_an_rl2_run_on_a_faulty_env_stops_with_the_error_and_keeps_its_checkpoint(
    fault: str, tmp_path: Path
) -> None:
    """RL² with ``backend="subprocess"``: an env that hangs, dies or raises after a few trials
    stops the run with an EnvWorkerError naming the iteration, within the timeout, reaps
    every worker and keeps the last checkpoint."""
    from metarl.agents import get_agent

    module = get_agent("rl2")
    env_id = register_faulty_family(fault, at_step=2, from_episode=5, min_goal_x=0.0)
    cfg = module.CONFIG.from_preset(
        "quick", env_id=env_id, num_iterations=6, num_trials=2, hidden_size=8,
        max_episode_steps=10, episodes_per_trial=2, checkpoint_every=1, tensorboard=False,
        backend="subprocess", num_workers=2, worker_timeout=2.0,
    )  # fmt: skip
    err = _train_until_worker_error(module, cfg, tmp_path / "run", env_id, fault)
    assert err.iteration is not None and 1 <= err.iteration < 6
    _check_named_iteration(err, tmp_path / "run", "rl2")
    tally("faulty env in a worker surfaced, workers reaped", agent="rl2", fault=fault)


# -- the PPO baselines (Stable-Baselines3) -----------------------------------------------------
def _sb3_faulty_venv(fault: str, min_goal_x: float = 0.2, timeout: float = 2.0) -> object:
    from stable_baselines3.common.monitor import Monitor

    from metarl.agents.sb3_baselines import MultiTaskEnv
    from metarl.stepping.sb3_vec_env import WorkerVecEnv

    def make_env() -> Monitor:
        env = MultiTaskEnv(FAULTY, "train", fault=fault, min_goal_x=min_goal_x)
        return Monitor(env, allow_early_resets=True)

    return WorkerVecEnv([make_env] * 4, FAULTY, num_workers=2, timeout=timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", WORKER_FAULTS)
def test_a_faulty_env_in_an_sb3_worker_vec_env_becomes_an_error_and_every_worker_is_reaped(
    fault: str,
) -> None:
    """The SB3 VecEnv of the PPO baselines with ``backend="subprocess"``: an env that raises
    (in step or reset), exits, is killed or hangs stops stepping with an EnvWorkerError naming
    the env, the failing env's task (goal x > 0.2: the faulty ones) and the original traceback
    or exit signal; every worker is reaped."""
    from metarl.stepping.sb3_vec_env import WorkerVecEnv

    venv = _sb3_faulty_venv(fault)
    assert isinstance(venv, WorkerVecEnv)
    pids = [p.pid for p in venv.processes]
    venv.seed(0)
    with pytest.raises(EnvWorkerError) as info:
        venv.reset()
        for _ in range(200):  # 10 episodes of 20 steps per env: faulty tasks come up
            venv.step(np.zeros((4, 2), dtype=np.float32))
    err = info.value
    text = str(err)
    assert FAULTY in text and err.env_id == FAULTY
    assert err.tasks and any(t.goal[0] > 0.2 for t in err.tasks), err.tasks
    assert "GoalTask(goal=(" in text
    expected = {
        "raise": "simulated simulator failure at step 3",
        "raise_on_reset": "simulated reset failure",
        "exit": "exited with code 3",
        "kill": "killed by signal SIGKILL",
        "hang": "did not answer within 2 s",
    }[fault]
    assert expected in text
    if fault.startswith("raise"):  # the env's own traceback, down to its line
        assert err.worker_traceback is not None and "testing.py" in err.worker_traceback
        assert len(err.tasks) == 1  # the one env that raised
    else:
        assert "vector step" in text or "reset" in text
    assert not any(p.is_alive() for p in venv.processes)
    assert not set(pids) & {p.pid for p in mp.active_children()}
    with pytest.raises(RuntimeError, match="closed"):  # a dead VecEnv says so, never hangs
        venv.reset()
    venv.close()
    tally("faulty env in a worker surfaced, workers reaped", fault=fault, vec_env="sb3")


def test_the_subprocess_backend_gives_ppo_the_in_process_results(tmp_path: Path) -> None:
    """WorkerVecEnv steps exactly as SB3's DummyVecEnv: the same PPO run, bit for bit."""
    from metarl.agents import get_agent

    module = get_agent("oracle")  # the task in the observation: MultiTaskEnv's whole path
    params = {}
    for backend in ("auto", "subprocess"):
        cfg = module.CONFIG.from_preset(
            "quick", num_iterations=2, n_envs=3, n_steps=40, batch_size=40, n_epochs=2,
            horizon=15, tensorboard=False, backend=backend, num_workers=2, worker_timeout=30.0,
        )  # fmt: skip
        run = module.train(cfg, tmp_path / backend)
        params[backend] = load_checkpoint_file(run.checkpoint_path, agent="oracle")["state"]
        rows = (run.path / "metrics.csv").read_text().splitlines()
        params[backend]["train_returns"] = [r.split(",")[1] for r in rows[1:]]
    local, remote = params["auto"], params["subprocess"]
    assert local["train_returns"] == remote["train_returns"]
    for k, v in local["params"].items():
        assert torch.equal(v, remote["params"][k]), k
    assert local["num_timesteps"] == remote["num_timesteps"] == 2 * 3 * 40


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("agent", ["pretrained", "oracle"])
@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
def test_a_ppo_baseline_run_on_a_faulty_env_stops_with_the_error_and_keeps_its_checkpoint(
    agent: str, fault: str, tmp_path: Path
) -> None:
    """``metarl train --agent pretrained|oracle --backend subprocess``: multi-task PPO on an
    env that hangs, dies or raises after a few episodes stops with an EnvWorkerError naming
    the env, a faulty task, the iteration and the cause within the timeout, reaps every
    worker and keeps the checkpoint of the previous iteration."""
    from metarl.agents import get_agent

    module = get_agent(agent)
    # Per PPO iteration each env runs 3 episodes (reset, then auto-resets at steps 10 and
    # 20); from its 5th episode on, a task with goal x > 0 misbehaves at its 2nd step.
    env_id = register_faulty_family(fault, at_step=2, from_episode=5, min_goal_x=0.0)
    cfg = module.CONFIG.from_preset(
        "quick", env_id=env_id, num_iterations=8, n_envs=2, n_steps=20, batch_size=20,
        n_epochs=1, horizon=10, hidden_sizes=(8,), checkpoint_every=1, tensorboard=False,
        backend="subprocess", num_workers=2, worker_timeout=2.0,
    )  # fmt: skip
    before = _live_children()
    with pytest.raises(EnvWorkerError) as info:
        module.train(cfg, tmp_path / "run")
    err = info.value
    text = str(err)
    assert env_id in text and "GoalTask(goal=(" in text and "step" in text
    assert any(t.goal[0] > 0.0 for t in err.tasks), err.tasks
    assert RUN_FAULTS[fault] in text
    assert not _live_children() - before, "a worker outlived the failed run"
    assert err.iteration is not None and 1 <= err.iteration < 8
    _check_named_iteration(err, tmp_path / "run", agent)
    tally("faulty env in a worker surfaced, workers reaped", agent=agent, fault=fault)


def test_a_ppo_baseline_env_that_raises_in_process_names_env_task_and_iteration(
    tmp_path: Path,
) -> None:
    """The in-process default (SB3's DummyVecEnv): an env that raises becomes an EnvError
    naming the env, its task and the iteration, chained to the env's own exception."""
    from metarl.agents import get_agent

    module = get_agent("pretrained")
    env_id = register_faulty_family("raise", at_step=2, from_episode=5, min_goal_x=0.0)
    cfg = module.CONFIG.from_preset(
        "quick", env_id=env_id, num_iterations=8, n_envs=2, n_steps=20, batch_size=20,
        n_epochs=1, horizon=10, hidden_sizes=(8,), checkpoint_every=1, tensorboard=False,
    )  # fmt: skip
    with pytest.raises(EnvError) as info:
        module.train(cfg, tmp_path / "run")
    err = info.value
    text = str(err)
    assert env_id in text and "step 2 of task GoalTask(goal=(" in text
    assert err.iteration is not None and text.startswith(f"iteration {err.iteration}: ")
    assert len(err.tasks) == 1 and err.tasks[0].goal[0] > 0.0
    cause = err.__cause__
    assert isinstance(cause, EnvError) and isinstance(cause.__cause__, RuntimeError)
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent="pretrained")
    assert payload["iteration"] == err.iteration
    tally("faulty env in process surfaced", agent="pretrained", fault="raise")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("agent", ["random-init", "pretrained"])
def test_fine_tuning_evaluation_on_a_hanging_env_is_bounded(agent: str, tmp_path: Path) -> None:
    """The baselines' fine-tuning evaluation with ``backend="subprocess"`` steps its envs in
    workers too: a held-out task whose env hangs becomes an error within the timeout."""
    from metarl.agents import get_agent
    from metarl.agents.sb3_baselines import evaluate_finetuning
    from metarl.evaluation import EvalSettings
    from metarl.runs import load_run_policy

    module = get_agent(agent)
    env_id = register_faulty_family("hang", at_step=2, from_episode=1, min_goal_x=0.0)
    run_dir = tmp_path / "run"
    # The policy is trained (or drawn) on a well-behaved family, then evaluated on the
    # faulty one: the fine-tuning is what must not hang.
    base = {"hidden_sizes": (8,), "horizon": 10, "tensorboard": False}
    if agent == "pretrained":
        base.update(num_iterations=1, n_envs=2, n_steps=20, batch_size=20, n_epochs=1)
    module.train(module.CONFIG.from_preset("quick", **base), run_dir)
    policy, params, cfg = load_run_policy(run_dir, agent, module.CONFIG, "cpu")
    cfg = cfg.replace(env_id=env_id, backend="subprocess", num_workers=2, worker_timeout=2.0)

    def load(*_: object) -> tuple:  # the trained policy, evaluated on the faulty family
        return policy, params, cfg

    before = _live_children()
    settings = EvalSettings(num_steps=1, seeds=(0,), episodes_per_step=2, max_tasks=4)
    with pytest.raises(EnvWorkerError) as info:
        evaluate_finetuning(agent, run_dir, load, settings, "test")
    text = str(info.value)
    assert env_id in text and "did not answer within 2 s" in text and "GoalTask(goal=(" in text
    assert not _live_children() - before, "a worker outlived the failed evaluation"
    tally("faulty env in a worker surfaced, workers reaped", agent=agent, fault="hang",
          phase="fine-tuning")  # fmt: skip
