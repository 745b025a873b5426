"""metarl benchmark: the report from real tiny runs, reuse and resume of runs, bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.cli import main
from metarl.cli.benchmark import BenchmarkError, run_benchmark

NAV = "metarl/Navigation2D-v0"
AGENTS = ["maml-trpo", "reptile-rl", "rl2"]
# Real training, cut to seconds: 2 iterations of tiny batches on 10-step episodes.
TINY = {
    "maml-trpo": {"num_iterations": 2, "meta_batch_size": 2, "episodes_per_task": 2,
                  "hidden_sizes": [8], "horizon": 10, "tensorboard": False},
    "reptile-rl": {"num_iterations": 2, "meta_batch_size": 2, "episodes_per_task": 2,
                   "num_adapt_steps": 2, "hidden_sizes": [8], "horizon": 10,
                   "tensorboard": False},
    "rl2": {"num_iterations": 2, "num_trials": 4, "hidden_size": 8, "max_episode_steps": 10,
            "tensorboard": False},
}  # fmt: skip
EVAL = {"num_steps": 2, "eval_seeds": [0], "episodes_per_step": 2, "max_tasks": 3}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bench(tmp_path: Path, agents=AGENTS, overrides=TINY, **kwargs):
    return run_benchmark(
        agents, [NAV], [0, 1], preset="quick",
        overrides={a: overrides[a] for a in agents}, runs_dir=tmp_path / "runs",
        out=tmp_path / "report", **{**EVAL, **kwargs},
    )  # fmt: skip


def _metrics_sum(run_dir: str, column: str) -> float:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return sum(float(r[column]) for r in csv.DictReader(f))


def test_report_from_tiny_real_runs_then_reuse_and_resume(tmp_path):
    report = _bench(tmp_path)
    out = tmp_path / "report"
    data = json.loads((out / "report.json").read_text())
    assert [e["agent"] for e in data["entries"]] == AGENTS
    for e in data["entries"]:
        assert e["env_id"] == NAV and e["num_units"] == 2
        assert e["unit"] == ("episodes" if e["agent"] == "rl2" else "gradient steps")
        assert len(e["mean"]) == len(e["ci95"]) == 3
        assert e["num_samples"] == 2 * 3  # 2 run seeds × 1 eval seed × 3 tasks
        assert np.isfinite(e["mean"]).all() and all(h > 0 for h in e["ci95"])
        # 2D navigation defines success (the goal reached): a rate per unit, in [0, 1].
        assert len(e["success_rate"]) == 3 and all(0 <= r <= 1 for r in e["success_rate"])
        steps = e["adapt_env_steps_per_task"]
        assert steps[0] == 0 and steps[1] > 0 and steps[2] > steps[1]
        # The curve pools both seeds' runs: its mean is that of the runs' returns.
        runs = e["runs"]
        assert [r["seed"] for r in runs] == [0, 1] and {r["reused"] for r in runs} == {"trained"}
        assert all(r["iterations"] == 2 for r in runs)
        # Meta-training cost is what the runs' metrics.csv say.
        cost = np.mean([_metrics_sum(r["run_dir"], "env_steps") for r in runs])
        assert e["meta_train"]["env_steps"] == pytest.approx(cost) and cost > 0
        assert e["meta_train"]["wall_clock_s"] > 0
        returns = np.asarray(e["curve"]["returns"])
        assert returns.shape == (2, 3, 3)
        np.testing.assert_allclose(returns.reshape(-1, 3).mean(0), e["mean"])
    # RL² spends one episode (10 steps) per unit and task; the gradient agents a batch of
    # episodes (2 × 10 steps) per step.
    rl2 = data["entries"][2]
    assert rl2["adapt_env_steps_per_task"] == [0, 10, 20]
    assert data["entries"][0]["adapt_env_steps_per_task"] == [0, 20, 40]

    md = (out / "report.md").read_text()
    assert f"## {NAV}" in md and "![adaptation curves](report.png)" in md
    header = next(line for line in md.splitlines() if line.startswith("| agent"))
    assert header.split(" | ")[3:7] == ["k=0", "k=1", "k=2", "success k=0 → 2"]
    for a in AGENTS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {a} |"))
        assert f"{rl2['mean'][0]:.2f}" in row if a == "rl2" else "±" in row
    assert (out / "report.png").stat().st_size > 5000
    assert report.families() == [NAV]

    # Again: finished runs are reused as they are (checkpoints untouched), same numbers.
    ckpts = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    again = _bench(tmp_path)
    assert all(r["reused"] == "finished" for e in again.entries for r in e.runs)
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
    for a, b in zip(report.entries, again.entries, strict=True):
        np.testing.assert_array_equal(a.curve.returns, b.curve.returns)

    # More iterations: the runs resume from their checkpoints, not from scratch.
    longer = {**TINY, "rl2": {**TINY["rl2"], "num_iterations": 3}}
    resumed = _bench(tmp_path, agents=["rl2"], overrides=longer)
    assert [r["reused"] for r in resumed.entries[0].runs] == ["resumed", "resumed"]
    assert [r["iterations"] for r in resumed.entries[0].runs] == [3, 3]

    # Other settings in the same runs directory: refused, saying how to go on.
    other = {**TINY, "rl2": {**TINY["rl2"], "num_iterations": 3, "hidden_size": 16}}
    with pytest.raises(BenchmarkError, match=r"other settings.*hidden_size.*--retrain"):
        _bench(tmp_path, agents=["rl2"], overrides=other)
    retrained = _bench(tmp_path, agents=["rl2"], overrides=other, retrain=True)
    assert [r["reused"] for r in retrained.entries[0].runs] == ["trained", "trained"]


class _DictObsNav(gym.Wrapper):
    def __init__(self) -> None:
        super().__init__(gym.make(NAV))
        self.observation_space = gym.spaces.Dict({"pos": self.env.observation_space})


def test_bad_input_is_refused_before_anything_trains(tmp_path):
    from metarl.stepping.registry import _FAMILIES, register_family

    def bench(agents=("rl2",), envs=(NAV,), **kw):
        return run_benchmark(list(agents), list(envs), [0], runs_dir=tmp_path / "runs", **kw)

    with pytest.raises(BenchmarkError, match=r"unknown agent 'maml'.*maml-trpo"):
        bench(agents=["maml"])
    with pytest.raises(BenchmarkError, match=r"unknown task family.*metarl envs"):
        bench(envs=["metarl/Nope-v0"])
    with pytest.raises(BenchmarkError, match="given twice"):
        bench(agents=["rl2", "rl2"])
    with pytest.raises(BenchmarkError, match=r"'rl2' has no preset 'paper'.*--preset rl2=NAME"):
        bench(preset="paper")
    with pytest.raises(BenchmarkError, match=r"'rl2' cannot run.*hidden_size"):
        bench(overrides={"rl2": {"hidden_size": 0}})
    with pytest.raises(BenchmarkError, match="not benchmarked"):
        bench(overrides={"maml-trpo": {}})
    env_id = "metarl-test/DictObsNav-v0"
    register_family(env_id, _DictObsNav, max_episode_steps=10)
    try:
        with pytest.raises(BenchmarkError, match="'rl2' cannot run metarl-test/DictObsNav-v0: "
                           "its observations are Dict"):  # fmt: skip
            bench(envs=[NAV, env_id])
    finally:
        _FAMILIES.pop(env_id)
        gym.registry.pop(env_id)
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_cli_benchmark_writes_the_report_and_explains_bad_input(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["benchmark", "--agents", "rl2", "--envs", NAV, "--seeds", "0", "--preset", "quick",
            "random-init=quick", "--set", "rl2.num_iterations=1", "rl2.num_trials=4",
            "rl2.hidden_size=8", "rl2.max_episode_steps=5", "rl2.tensorboard=false",
            "--runs-dir", str(runs), "--out", str(out), "--steps", "1", "--episodes", "2",
            "--max-tasks", "2", "--note", "tiny runs, one CPU thread"]  # fmt: skip
    argv[2:3] = ["rl2", "random-init"]  # the untrained baseline, from the registry too
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| rl2 | quick | episodes |" in printed
    assert "| random-init | quick | gradient steps |" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["command"].startswith("metarl benchmark --agents rl2 random-init")
    assert [e["num_units"] for e in data["entries"]] == [1, 1]
    assert "**Note:** tiny runs, one CPU thread" in (out / "report.md").read_text()
    assert data["entries"][1]["meta_train"]["env_steps"] is None  # random-init does not train
    assert main(["benchmark", "--agents", "nope", "--envs", NAV]) == 2
    assert "unknown agent 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "--agents", "rl2", "--envs", NAV, "--set", "rl2num=1"]) == 2
    assert "AGENT.OPTION=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nope.seed=1", "--set nope.seed=1: no agent 'nope'; agents: "),
        ("maml-trpo.nope=1", "--set maml-trpo.nope=1: maml-trpo's no option --nope"),
        ("maml-trpo.hidden_sizes=a,b", "maml-trpo's --hidden-sizes takes \\[INT \\[INT"),
        ("maml-trpo.inner_lr=x", "maml-trpo's --inner-lr takes FLOAT: could not convert"),
        ("maml-trpo.num_iterations=1.5", "maml-trpo's --num-iterations takes INT"),
        ("maml-trpo.first_order=maybe", "--first-order takes a boolean \\(true or false\\)"),
        ("maml-trpo.hidden_sizes=0", "hidden_sizes \\(--hidden-sizes\\) must be >= 1, got 0"),
    ],
)
def test_cli_benchmark_set_is_read_with_the_option_type(tmp_path, capsys, item, message):
    argv = ["benchmark", "--agents", "maml-trpo", "--envs", NAV, "--set", item,
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_benchmark_set_values_are_those_train_reads():
    """``--set`` VALUE through the option's type: the CLI's spellings and JSON's alike."""
    from metarl.agents.maml_trpo import MAMLTRPOConfig
    from metarl.cli.parsing import parse_option

    def read(name, value):
        return parse_option(MAMLTRPOConfig, name, value, prog="x")

    assert read("hidden_sizes", "32,32") == read("hidden-sizes", "[32, 32]") == (32, 32)
    assert read("hidden_sizes", "16 8 4") == (16, 8, 4)
    assert read("first_order", "true") is True and read("first_order", "False") is False
    assert read("inner_lr", "0.05") == 0.05 and read("env_id", "metarl/AntVel-v0") == (
        "metarl/AntVel-v0"
    )
    assert read("num_iterations", "7") == 7


def test_eval_points_give_the_held_out_return_against_meta_training_env_steps(tmp_path):
    """eval_points=2: every run is evaluated half-way (trained there, then resumed) and at
    its end; the points' env steps are the runs' metrics.csv up to them; a second call
    reuses them without training, and a point a run went past unrecorded is reported
    missing, not made up."""
    tiny = {"rl2": {**TINY["rl2"], "num_iterations": 4}}
    report = _bench(tmp_path, agents=["rl2"], overrides=tiny, eval_points=2)
    (entry,) = report.entries
    assert [r["reused"] for r in entry.runs] == ["trained", "trained"]
    assert [p["iteration"] for p in entry.progress] == [2, 4]
    half, end = entry.progress
    assert half["num_runs"] == end["num_runs"] == 2
    # Four iterations of equal size: the half-way point spent half the env steps.
    assert end["env_steps"] == pytest.approx(entry.meta_train()["env_steps"])
    assert end["env_steps"] > 0
    assert half["env_steps"] == pytest.approx(end["env_steps"] / 2)
    assert end["curve"] is entry.curve
    # The half-way point is the evaluation of the half-trained run, not the finished one.
    assert not np.array_equal(half["curve"].returns, end["curve"].returns)
    for r in entry.runs:
        with open(Path(r["run_dir"]) / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(row["iteration"]) for row in rows] == [0, 1, 2, 3]  # resumed, not redone
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    progress = data["entries"][0]["progress"]
    assert [p["iteration"] for p in progress] == [2, 4] and len(progress[0]["mean"]) == 3
    np.testing.assert_allclose(progress[0]["mean"], half["curve"].mean())
    raw = np.asarray(data["entries"][0]["progress_curves"][0]["returns"])
    np.testing.assert_array_equal(raw, half["curve"].returns)  # each point's raw returns
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### Held-out return against meta-training env steps" in md
    assert sum(line.startswith("| rl2 | ") for line in md.splitlines()) == 1 + 2

    # The summary page lists the points too, and keeps what is written by hand below its mark.
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "pearl_benchmark_summary.py"
    spec = importlib.util.spec_from_file_location("pearl_benchmark_summary", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    HAND, summarise = script.HAND, script.main

    page = tmp_path / "summary.md"
    page.write_text(f"old\n{HAND}\nread by hand\n")
    assert summarise([str(tmp_path / "report"), "--out", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# RL² on metarl/Navigation2D-v0") and "old" not in text
    assert text.endswith(f"{HAND}\nread by hand\n")
    rows = [line for line in text.splitlines() if line.startswith("| rl2 | 2 | ")]
    assert len(rows) == 1 and f"{half['env_steps']:,.0f}" in rows[0]

    # Again: both points reused, nothing trained or evaluated anew.
    ckpts = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    again = _bench(tmp_path, agents=["rl2"], overrides=tiny, eval_points=2)
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
    np.testing.assert_array_equal(again.entries[0].progress[0]["curve"].returns,
                                  half["curve"].returns)  # fmt: skip

    # A finished run without recorded points (made with eval_points=1): the points it went
    # past are left out, the end is still there.
    other = tmp_path / "other"
    _bench(other, agents=["rl2"], overrides=tiny)
    lines: list[str] = []
    late = _bench(other, agents=["rl2"], overrides=tiny, eval_points=2, log=lines.append)
    assert [p["iteration"] for p in late.entries[0].progress] == [4]
    assert any("no held-out point at iteration 2" in line for line in lines)
    with pytest.raises(BenchmarkError, match="eval_points"):
        _bench(other, agents=["rl2"], overrides=tiny, eval_points=0)
