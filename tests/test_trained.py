"""metarl.agents.load: every registered agent's run adapts, acts, evaluates and exports the
same way, and its evaluation is `metarl evaluate`'s, number for number."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import metarl
import metarl.agents
from metarl.agents import agent_names
from metarl.cli import main
from metarl.evaluation import AdaptationCurve

NAV = "metarl/Navigation2D-v0"
_MAML = ["--preset", "quick", "--num-iterations", "1", "--meta-batch-size", "2",
         "--episodes-per-task", "2", "--hidden-sizes", "8"]  # fmt: skip
_PPO = ["--preset", "quick", "--num-iterations", "1", "--n-envs", "2", "--n-steps", "50",
        "--batch-size", "50", "--n-epochs", "1", "--hidden-sizes", "8"]  # fmt: skip

#: name -> `metarl train` arguments of a tiny 2D-navigation run (a second or two each)
RUNS: dict[str, list[str]] = {
    "maml-trpo": ["--agent", "maml-trpo", *_MAML],
    "meta-sgd": ["--agent", "maml-trpo", *_MAML, "--learn-inner-lr"],
    "reptile-rl": ["--agent", "reptile-rl", *_MAML],
    "rl2": ["--agent", "rl2", "--preset", "quick", "--num-iterations", "1", "--num-trials", "4"],
    "varibad": [
        "--agent",
        "varibad",
        "--env",
        NAV,
        "--num-iterations",
        "1",
        "--num-trials",
        "4",
        "--episodes-per-trial",
        "2",
        "--horizon",
        "20",
        "--hidden-sizes",
        "8",
    ],
    "pretrained": ["--agent", "pretrained", *_PPO],
    "random-init": ["--agent", "random-init", "--preset", "quick", "--hidden-sizes", "8"],
    "oracle": ["--agent", "oracle", *_PPO],
    "pearl": [
        "--agent",
        "pearl",
        "--preset",
        "quick",
        "--num-iterations",
        "1",
        "--num-train-tasks",
        "5",
        "--num-train-steps-per-itr",
        "2",
        "--hidden-sizes",
        "8",
        "--encoder-hidden-sizes",
        "8",
    ],
}


def test_every_registered_agent_has_a_tiny_run_here() -> None:
    assert {args[1] for args in RUNS.values()} == set(agent_names())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, args in RUNS.items():
        assert main(["train", *args, "--run-dir", str(root / name)]) == 0, name
        out[name] = root / name
    return out


def _adapt_kwargs(name: str) -> dict[str, int]:
    return {} if name in ("rl2", "pearl", "varibad") else {"episodes": 2}


@pytest.mark.parametrize("name", list(RUNS))
def test_load_adapt_act(runs: dict[str, Path], name: str) -> None:
    policy = metarl.agents.load(runs[name])
    assert policy.env_id == NAV
    task = policy.tasks("test")[0]
    adapted = policy.adapt(task, steps=1, **_adapt_kwargs(name))
    one = adapted.act(np.array([0.1, -0.2], dtype=np.float32))
    adapted.reset()  # a new episode (RL²: back to the adapted memory; others: nothing)
    batch = adapted.act(np.zeros((5, 2)))
    assert one.shape == (2,) and batch.shape == (5, 2)
    assert np.all(np.abs(batch) <= 0.1 + 1e-7)  # clipped to the action space, as the env gets it
    # Deterministic: the same action for the same observation, in a batch or alone.
    adapted.reset()
    np.testing.assert_allclose(adapted.act(np.zeros(2)), batch[0], rtol=0, atol=1e-6)
    adapted.reset()
    sampled = adapted.act(np.zeros((5, 2)), deterministic=False)
    assert sampled.shape == (5, 2)
    if name == "oracle":
        assert adapted.steps == 0 and adapted.returns == []  # it is told the task
    else:
        assert adapted.steps == 1 and len(adapted.returns) == 1
    # An env of the family with its task set names the same task.
    env = metarl.make(NAV)
    env.reset(options={"task": task})
    assert policy.adapt(env, steps=0).task == task
    env.close()


@pytest.mark.parametrize("name", ["maml-trpo", "meta-sgd", "reptile-rl", "pretrained"])
def test_gradient_adaptation_is_the_evaluation_step(runs: dict[str, Path], name: str) -> None:
    """One step changes the policy; zero steps leave it as trained; the same seed gives the
    same adapted policy."""
    policy = metarl.agents.load(runs[name])
    task = policy.tasks("test")[1]
    obs = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 2))
    before = policy.adapt(task, steps=0).act(obs)
    after = policy.adapt(task, steps=1, episodes=2, seed=3).act(obs)
    again = policy.adapt(task, steps=1, episodes=2, seed=3).act(obs)
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(after, again)
    bigger = policy.adapt(task, steps=1, episodes=2, seed=3, lr=0.5).act(obs)
    assert not np.allclose(after, bigger)


def test_pearl_adapts_its_latent(runs: dict[str, Path]) -> None:
    policy = metarl.agents.load(runs["pearl"])
    assert policy.adapts_by == "episodes"
    task = policy.tasks("test")[0]
    obs = np.zeros((3, 2))
    blank = policy.adapt(task, steps=0)
    assert blank.steps == 0 and blank.returns == []
    adapted = policy.adapt(task, steps=2, seed=1)
    assert len(adapted.returns) == 2
    again = policy.adapt(task, steps=2, seed=1)
    np.testing.assert_array_equal(adapted.act(obs), again.act(obs))  # seeded
    assert not np.allclose(blank.act(obs), adapted.act(obs))  # z from the posterior
    with pytest.raises(ValueError, match="one per unit"):
        policy.adapt(task, steps=1, episodes=3)


def test_rl2_adapts_its_memory(runs: dict[str, Path]) -> None:
    policy = metarl.agents.load(runs["rl2"])
    task = policy.tasks("test")[0]
    obs = np.zeros((3, 2))
    blank = policy.adapt(task, steps=0)
    assert blank.steps == 0 and blank.returns == []
    adapted = policy.adapt(task, steps=2)
    assert len(adapted.returns) == 2
    assert not np.allclose(blank.act(obs), adapted.act(obs))  # acts from what it remembers


def _trial_steps(trials: Any, obs_size: int, episode: int) -> list[tuple[Any, ...]]:
    """(observation, action, reward, done) of each step of ``episode`` (0-based) of a
    one-task trial, read back from what the trial recorded."""
    starts = [0, *(int(t) for t in np.flatnonzero(trials.inputs[:, 0, -1].numpy() > 0.5))]
    t0 = starts[episode]
    t1 = starts[episode + 1] if episode + 1 < len(starts) else trials.inputs.shape[0]
    steps = []
    for t in range(t0, t1):
        done = t == t1 - 1
        steps.append((trials.inputs[t, 0, :obs_size].numpy(), trials.actions[t, 0].numpy(),
                      float(trials.rewards[t, 0]), done))  # fmt: skip
    return steps


def test_rl2_act_carries_its_memory_as_the_evaluation_trial(runs: dict[str, Path]) -> None:
    """After adapting on n episodes, act/observe step by step gives the actions of episode
    n + 1 of the evaluation protocol's trial (same task and seed), given its observations
    and rewards: drawn, as the trial draws them, from the generator adaptation continued.
    (The most likely action is the trial's head at the first step; after it a deterministic
    episode is another trajectory, its memory holding other actions.)"""
    policy = metarl.agents.load(runs["rl2"])
    rl2 = policy.rl2  # type: ignore[attr-defined]
    task, n, seed = policy.tasks("test")[2], 2, 7
    trials = rl2.collect([task], n + 1, seed=seed)  # what evaluate runs, one episode more
    steps = _trial_steps(trials, rl2.policy.obs_size, n)
    assert len(steps) > 2
    adapted = policy.adapt(task, steps=n, seed=seed)
    np.testing.assert_allclose(adapted.returns, trials.episode_returns[:n, 0].numpy())
    heads = trials.heads[-len(steps) :, 0].numpy()
    for obs, action, reward, done in steps:
        got = adapted.act(obs, deterministic=False)
        np.testing.assert_allclose(got, np.clip(action, -0.1, 0.1), rtol=0, atol=1e-6)
        adapted.observe(reward, done)
    # A new episode starts again from the adapted memory.
    adapted.reset()
    first = steps[0][0]
    np.testing.assert_allclose(adapted.act(first), np.clip(heads[0], -0.1, 0.1), atol=1e-6)


def test_rl2_act_needs_the_reward_of_its_last_action(runs: dict[str, Path]) -> None:
    rl2 = metarl.agents.load(runs["rl2"])
    adapted = rl2.adapt(rl2.tasks("test")[0])
    with pytest.raises(ValueError, match="act first"):
        adapted.observe(0.0, False)
    adapted.act(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"call observe\(reward, done\)"):
        adapted.act(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one per row of the last act's batch"):
        adapted.observe([0.0, 1.0], False)
    adapted.observe([0.0, 1.0, -1.0], False)
    with pytest.raises(ValueError, match="keep the batch size within an episode"):
        adapted.act(np.zeros((2, 2)))
    adapted.reset()
    assert adapted.act(np.zeros((2, 2))).shape == (2, 2)
    # The other policies hold no memory: observe and reset do nothing.
    other = metarl.agents.load(runs["maml-trpo"]).adapt(adapted.task, steps=0)
    a = other.act(np.zeros(2))
    other.observe(1.0, True)
    np.testing.assert_array_equal(other.act(np.zeros(2)), a)


@pytest.mark.parametrize("name", list(RUNS))
def test_policy_evaluate_is_metarl_evaluate(runs: dict[str, Path], name: str, capsys) -> None:
    d = runs[name]
    args = ["--steps", "1", "--seeds", "0", "1", "--max-tasks", "2", "--episodes", "2"]
    assert main(["evaluate", str(d), *args]) == 0
    capsys.readouterr()
    cli = AdaptationCurve.load(d / "eval_test.json")
    policy = metarl.agents.load(d)
    curve = policy.evaluate(steps=1, seeds=(0, 1), max_tasks=2, episodes=2)
    assert isinstance(curve, AdaptationCurve)
    assert curve.unit == cli.unit and curve.agent == cli.agent
    np.testing.assert_array_equal(curve.returns, cli.returns)
    # Given tasks explicitly: the same numbers for the same tasks.
    given = policy.evaluate(policy.tasks("test")[:2], steps=1, seeds=(0, 1), episodes=2)
    np.testing.assert_array_equal(given.returns, cli.returns)


@pytest.mark.parametrize("name", ["maml-trpo", "rl2", "varibad", "oracle", "random-init"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_same_actions(runs: dict[str, Path], name: str, fmt: str, tmp_path):
    policy = metarl.agents.load(runs[name])
    adapted = policy.adapt(policy.tasks("test")[0], steps=1, **_adapt_kwargs(name))
    rng = np.random.default_rng(1)
    obs = rng.uniform(-0.5, 0.5, (7, 2)).astype(np.float32)
    if fmt == "torchscript":
        path = adapted.export(tmp_path / "policy.pt")
        module = torch.jit.load(str(path))

        def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
            out = module(*(torch.as_tensor(v) for v in inputs.values()))
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    else:
        onnx = pytest.importorskip("onnx")
        from onnx.reference import ReferenceEvaluator

        path = adapted.export(tmp_path / "policy.onnx", format="onnx")
        evaluator = ReferenceEvaluator(onnx.load(str(path)))

        def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(evaluator.run(None, inputs))

    if not adapted.stateful:
        expected = adapted.act(obs)
        got = run({"obs": obs})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        return
    # RL²: the export is one step from any memory; started from the memory written beside
    # it and fed back its outputs, it gives the adapted policy's actions through an episode.
    saved = np.load(path.with_name(path.stem + ".memory.npz"))
    memory = {k: np.repeat(saved[k], len(obs), axis=0) for k in ("hidden", "prev_action",
              "prev_reward", "done")}  # fmt: skip
    adapted.reset()
    for t in range(4):
        x = rng.uniform(-0.5, 0.5, (7, 2)).astype(np.float32) if t else obs
        expected = adapted.act(x)
        action, memory["hidden"], memory["prev_action"] = run({"obs": x, **memory})
        assert action.shape == expected.shape
        np.testing.assert_allclose(action, expected, rtol=0, atol=1e-5)
        reward = rng.normal(size=len(obs)).astype(np.float32)
        adapted.observe(reward, False)
        memory["prev_reward"], memory["done"] = reward, np.zeros(len(obs), np.float32)


def test_bad_input_gets_one_clear_line(runs: dict[str, Path], tmp_path) -> None:
    maml = metarl.agents.load(runs["maml-trpo"])
    task = maml.tasks("test")[0]
    adapted = maml.adapt(task, steps=0)
    with pytest.raises(ValueError, match=r"observations have shape \(2,\).*got shape \(3,\)"):
        adapted.act(np.zeros(3))
    with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
        adapted.act(np.zeros((4, 3)))
    from metarl.envs.mujoco.locomotion import VelocityTask

    with pytest.raises(ValueError, match=r"trained on metarl/Navigation2D-v0.*VelocityTask"):
        maml.adapt(VelocityTask(velocity=1.0))
    with pytest.raises(ValueError, match="env is metarl/BernoulliBandit-K5-v0"):
        maml.adapt(metarl.make("metarl/BernoulliBandit-K5-v0"))
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        maml.adapt(task, steps=-1)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        maml.adapt(task, episodes=0)
    with pytest.raises(ValueError, match="format must be one of torchscript, onnx"):
        adapted.export(tmp_path / "x", format="tflite")
    rl2 = metarl.agents.load(runs["rl2"])
    with pytest.raises(ValueError, match="rl2 adapts by episodes, not gradient steps; drop lr"):
        rl2.adapt(task, lr=0.1)
    with pytest.raises(ValueError, match="give their number as steps="):
        rl2.adapt(task, episodes=5)
    with pytest.raises(ValueError, match="drop lrs"):
        metarl.agents.load(runs["oracle"]).evaluate(lrs=(0.1,))
    with pytest.raises(FileNotFoundError):
        metarl.agents.load(tmp_path / "no-run")


def test_import_metarl_stays_light_and_load_is_lazy(tmp_path: Path) -> None:
    """`import metarl` imports no agent, `import metarl.agents` only the registry; `load`
    imports the trained-policy module on first use."""
    import subprocess

    code = ("import sys, metarl; assert 'metarl.agents' not in sys.modules; "
            "import metarl.agents; assert 'metarl.agents.trained' not in sys.modules; "
            f"metarl.agents.load({str(tmp_path / 'no-run')!r})")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode != 0 and "no-run" in out.stderr  # reached load, which refused it
    assert not hasattr(metarl, "load")  # the core gives no agent's policy


DOC = Path(__file__).resolve().parent.parent / "docs" / "using-a-trained-policy.md"


def _doc_blocks() -> list[str]:
    return DOC.read_text().split("```python\n")[1:]


def _docs_example() -> str:
    """The docs page's first Python block: load, adapt, act, evaluate, export."""
    return _doc_blocks()[0].split("```", 1)[0]


@pytest.mark.parametrize("name", list(RUNS))
def test_docs_example_runs_for_every_agent(runs: dict[str, Path], name: str, tmp_path, monkeypatch):
    """The docs' block, as written, on each agent's run (its evaluation made small)."""
    code = _docs_example()
    small = "policy.evaluate(steps=1, seeds=(0,), max_tasks=2, episodes=2)"
    assert "policy.evaluate(steps=3)" in code and '"runs/quick"' in code
    code = code.replace("policy.evaluate(steps=3)", small)
    code = code.replace('"runs/quick"', repr(str(runs[name])))
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["action"].shape == (2,)  # type: ignore[attr-defined]
    assert (tmp_path / "nav-adapted.pt").is_file()
    assert isinstance(scope["curve"], AdaptationCurve)
    # The episode loop that follows runs every policy, RL²'s with its memory carried.
    loop = _doc_blocks()[1].split("```", 1)[0]
    exec(compile(loop, str(DOC), "exec"), scope)
    assert scope["done"] is True
