"""The RL² paper-tables and throughput scripts end to end on tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_paper_tables_script_writes_paired_results(tmp_path, capsys):
    tables_script = _script("rl2_paper_tables")
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = ["--out", str(out), "--runs-dir", str(runs), "--eval-runs", "1", "--tune-tasks", "4"]
    assert tables_script.main([
        "--settings", "bandit-k5-n10", "--iterations", "2", "--baselines", "random", "ucb1",
        "--set", "num_trials=8", "hidden_size=8", "num_minibatches=2", *common,
    ]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())["bandit-k5-n10"]
    assert results["rl2"]["iterations"] == 2
    assert results["rl2"]["config"]["num_trials"] == 8
    assert "gittins" not in results  # only the baselines asked for
    for name in ("rl2", "ucb1", "random"):
        assert len(results[name]["per_task"]) == 100  # the held-out tasks, same order
    assert results["ucb1"]["hyperparameters"]["prior"] == 1.0
    assert results["paper"]["gittins"] == 6.6
    tables = (out / "tables.md").read_text()
    assert "| bandit-k5-n10 |" in tables and "| ucb1 (" in tables
    row = next(line for line in tables.splitlines() if "num_trials=8" in line)
    assert "hidden_size=8" in row  # what differs from the preset is stated
    assert "rl2_paper_tables.py --settings bandit-k5-n10" in tables
    # Bad input is refused with what is allowed.
    for argv, message in (
        (["--set", "lr"], "KEY=VALUE"),
        (["--set", "lr=fast"], "could not convert"),
        (["--set", "lr=-1"], "must be > 0"),
        (["--baselines", "oracle"], "unknown baselines"),
        (["--settings", "bandit-k7"], "unknown settings"),
    ):
        with pytest.raises(SystemExit):
            tables_script.main([*argv, "--iterations", "1", *common])
        assert message in capsys.readouterr().err, argv


def test_paper_tables_bad_override_names_the_fields(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _script("rl2_paper_tables").main(["--set", "lr", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "ent_coef" in err and "gae_lambda" in err
    assert not (tmp_path / "results.json").exists()  # refused before any work


@pytest.mark.parametrize("bad", [["--iterations", "0"], ["--num-trials", "3"]])
def test_throughput_script_refuses_bad_input(tmp_path, bad, capsys):
    with pytest.raises(SystemExit):
        _script("bench_rl2_throughput").main(["--out", str(tmp_path), *bad])
    assert "must be" in capsys.readouterr().err


def test_throughput_script_measures_every_family_and_backend(tmp_path):
    argv = ["--iterations", "1", "--num-trials", "4", "--out", str(tmp_path)]
    assert _script("bench_rl2_throughput").main(argv) == 0
    payload = json.loads((tmp_path / "rl2_throughput.json").read_text())
    rows = {(r["family"], r["backend"]): r for r in payload["results"]}
    assert len(rows) == 6 and {b for _, b in rows} == {"torch", "numpy"}
    for r in rows.values():
        for key in ("collect_steps_per_s", "update_steps_per_s", "iteration_steps_per_s"):
            assert r[key] > 0
    # Every step of a trial is counted: 4 trials × (episodes × horizon) for fixed horizons.
    assert rows[("bandit k=5, n=100", "torch")]["steps_per_iteration"] == 4 * 100
    assert rows[("MDP n=10", "numpy")]["steps_per_iteration"] == 4 * 10 * 10
    md = (tmp_path / "rl2_throughput.md").read_text()
    assert "-core CPU" in md and "no GPU" in md and "--num-trials 4" in md
    assert "python scripts/bench_rl2_throughput.py --iterations 1" in md


def test_mdp_diagnostics_reference_values_and_a_checkpoint(tmp_path, capsys):
    diag = _script("rl2_mdp_diagnostics")
    from metarl.agents import rl2
    from metarl.envs.tabular_mdp import TabularMDPTask

    # Every action leads back to state 0 except action 1 in state 0, which moves to state 1;
    # in state 0 action 0 pays 1, in state 1 action 2 pays 3, everything else 0. Oracle:
    # 0 → 1 (pays 0) then 3 per step = 27; myopic: action 0 in state 0 forever = 10; the best
    # fixed action: action 0 everywhere = 10 (action 1 reaches state 1 and pays 0 there).
    p = np.zeros((10, 5, 10))
    p[:, :, 0] = 1.0
    p[0, 1] = 0.0
    p[0, 1, 1] = 1.0
    p[1, 2] = 0.0
    p[1, 2, 1] = 1.0  # action 2 in state 1 stays there
    r = np.zeros((10, 5))
    r[0, 0], r[1, 2] = 1.0, 3.0
    values = diag.episode_values(TabularMDPTask.from_arrays(p, r))
    assert values == pytest.approx({"oracle": 27.0, "myopic": 10.0, "fixed_action": 10.0})
    # The oracle here always takes action 1 then action 2: its most common action has 27/30.
    assert diag.oracle_modal_share([TabularMDPTask.from_arrays(p, r)], 3, 2, 0) == 0.9

    cfg = rl2.RL2Config(env_id=diag.ENV, episodes_per_trial=3, num_trials=8, hidden_size=8,
                        num_minibatches=2, num_iterations=25, update_epochs=1,
                        tensorboard=False)  # fmt: skip
    run = rl2.train(cfg, tmp_path / "run")
    assert diag.main([str(run.path), "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "oracle" in out and "held-out return per episode" in out
    assert "it   25: trial return" in out  # the training curve, from metrics.csv
    with pytest.raises(SystemExit):
        diag.main([str(tmp_path / "missing")])
    assert "no checkpoint in" in capsys.readouterr().err
