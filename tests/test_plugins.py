"""A user's task family from the `metarl` command, in each of the three ways (MODULE:ENV_ID,
--import, an entry point of group metarl.envs), with the family in a folder outside the
package; run directories that record, and never perform, the import; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metarl.stepping import registry

FAMILY = """
from gymnasium import spaces
from gymnasium.envs.classic_control.pendulum import PendulumEnv

import metarl
from pole_task import PoleTask  # a neighbour of this file, found as running the file would

dist = metarl.BoxTaskDistribution(
    "PoleLength", PoleTask, low={"length": 0.5}, high={"length": 2.0}, num_train=20, num_test=4
)
PendulumLength = metarl.make_task_env(
    PendulumEnv, dist, lambda env, task: setattr(env, "l", task.length)
)


class DictObs(PendulumLength):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Dict({"x": self.observation_space})

    def reset(self, **kw):
        obs, info = super().reset(**kw)
        return {"x": obs}, info

    def step(self, action):
        obs, *rest = super().step(action)
        return ({"x": obs}, *rest)


metarl.register_family("{ID}", PendulumLength, max_episode_steps=10)
metarl.register_family("{ID}-dict", DictObs, max_episode_steps=10)
"""
TASK = """
from dataclasses import dataclass


@dataclass(frozen=True)
class PoleTask:
    length: float
"""
TRAIN = ["--agent", "maml-trpo", "--num-iterations", "1", "--meta-batch-size", "2",
         "--episodes-per-task", "2", "--hidden-sizes", "8", "--device", "cpu",
         "--no-tensorboard"]  # fmt: skip
EVAL = ["--max-tasks", "2", "--episodes", "2", "--seeds", "0", "--steps", "1"]
BENCH = ["--agents", "maml-trpo", "--seeds", "0", "--preset", "none", "--steps", "1",
         "--max-tasks", "2", "--episodes", "2",
         "--set", "maml-trpo.num_iterations=1", "maml-trpo.meta_batch_size=2",
         "maml-trpo.episodes_per_task=2", "maml-trpo.hidden_sizes=[8]", "maml-trpo.device=cpu",
         "maml-trpo.tensorboard=false"]  # fmt: skip


def _family(folder: Path, env_id: str, module: str = "families") -> Path:
    """The user's family: ``folder/module.py`` beside the module it imports."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pole_task.py").write_text(TASK)
    path = folder / f"{module}.py"
    path.write_text(FAMILY.replace("{ID}", env_id))
    return path


def metarl_cmd(*args: object, cwd: Path, pythonpath: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "metarl.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _ok(out: Any) -> str:
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _one_line_error(out: Any, *expected: str) -> str:
    assert out.returncode != 0, out.stdout[-2000:]
    lines = [x for x in out.stderr.splitlines() if x.strip() and "WARN" not in x]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_module_colon_env_id(tmp_path: Path) -> None:
    # Way 1: --env MODULE:ENV_ID imports MODULE, as gymnasium.make does.
    user = tmp_path / "user"
    _family(user, "mine/PoleA-v0")
    spec = "families:mine/PoleA-v0"
    assert "7 of 7 checks passed" in _ok(metarl_cmd("check-env", spec, "--steps", "5", cwd=user))
    # FILE.py:ATTR from elsewhere: the file's folder goes on the path (its neighbour imports).
    out = metarl_cmd("check-env", "user/families.py:PendulumLength", "--steps", "5", cwd=tmp_path)
    assert "7 of 7 checks passed" in _ok(out)
    out = _ok(metarl_cmd("train", *TRAIN, "--env", spec, "--run-dir", "runs/a", cwd=user))
    record = json.loads((user / "runs/a/config.json").read_text())
    here = str((user / "families.py").resolve())
    # The run records the bare id and the --import that works from any directory.
    assert record["config"]["env_id"] == "mine/PoleA-v0" and record["imports"] == [here]
    assert f"metarl evaluate --import {here} runs/a" in out
    # Elsewhere, the run directory alone says what to pass, and imports nothing.
    _one_line_error(
        metarl_cmd("evaluate", user / "runs/a", *EVAL, cwd=tmp_path),
        f"metarl evaluate --import {here} {user / 'runs/a'}",
        "never makes metarl import anything",
    )
    _one_line_error(
        metarl_cmd("train", "--resume", user / "runs/a", "--num-iterations", "2", cwd=tmp_path),
        f"metarl train --import {here} --resume {user / 'runs/a'}",
    )
    out = _ok(metarl_cmd("evaluate", "--import", here, user / "runs/a", *EVAL, cwd=tmp_path))
    assert "k=1" in out
    report = _ok(metarl_cmd("benchmark", *BENCH, "--envs", spec, "--out", "rep", cwd=user))
    assert "mine/PoleA-v0" in report
    assert json.loads((user / "rep/report.json").read_text())["entries"][0]["env_id"] == (
        "mine/PoleA-v0"
    )


def test_import_option_on_every_command(tmp_path: Path) -> None:
    # Way 2: --import FILE.py (or MODULE), from any directory.
    path = _family(tmp_path / "user", "mine/PoleB-v0")
    imp = ["--import", str(path)]
    assert "mine/PoleB-v0" in _ok(metarl_cmd("envs", *imp, cwd=tmp_path))
    assert "7 of 7 checks passed" in _ok(
        metarl_cmd("check-env", *imp, "mine/PoleB-v0", "--steps", "5", cwd=tmp_path)
    )
    _ok(metarl_cmd("train", *imp, *TRAIN, "--env", "mine/PoleB-v0", "--run-dir", "r", cwd=tmp_path))
    assert json.loads((tmp_path / "r/config.json").read_text())["imports"] == [str(path)]
    assert "success" not in _ok(metarl_cmd("evaluate", *imp, "r", *EVAL, cwd=tmp_path))
    _ok(metarl_cmd("train", *imp, "--resume", "r", "--num-iterations", "2", cwd=tmp_path))
    runs = tmp_path / "bench"
    _ok(metarl_cmd("benchmark", *imp, *BENCH, "--envs", "mine/PoleB-v0", "--runs-dir", runs,
                   "--out", tmp_path / "rep", cwd=tmp_path))  # fmt: skip
    # Without the import, benchmark names the one its earlier runs recorded.
    again = ["benchmark", *BENCH, "--envs", "mine/PoleB-v0", "--runs-dir", runs, "--out", "x"]
    _one_line_error(metarl_cmd(*again, cwd=tmp_path), f"pass --import {path}")


def _dist_info(site: Path, entry: str) -> None:
    info = site / "mine_pkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[metarl.envs]\nmine = {entry}\n")


def test_entry_point_of_an_installed_package(tmp_path: Path) -> None:
    # Way 3: a package's entry point (group metarl.envs) makes its families known with no flag.
    site = tmp_path / "site"
    _family(site / "mine_pkg", "mine/PoleC-v0")
    (site / "mine_pkg" / "__init__.py").write_text("")
    # The family module imports its neighbour as a top-level module: put both on the path.
    (site / "pole_task.py").write_text(TASK)
    _dist_info(site, "mine_pkg.families")
    work = tmp_path / "work"
    work.mkdir()
    listing = _ok(metarl_cmd("envs", "--json", cwd=work, pythonpath=site))
    row = next(r for r in json.loads(listing) if r["id"] == "mine/PoleC-v0")
    assert row["source"] == {"entry_point": "mine = mine_pkg.families", "distribution": "mine-pkg"}
    _ok(metarl_cmd("train", *TRAIN, "--env", "mine/PoleC-v0", "--run-dir", "r", cwd=work,
                   pythonpath=site))  # fmt: skip
    record = json.loads((work / "r/config.json").read_text())
    assert record["imports"] == [] and record["env_source"]["distribution"] == "mine-pkg"
    assert "k=1" in _ok(metarl_cmd("evaluate", "r", *EVAL, cwd=work, pythonpath=site))
    _ok(metarl_cmd("benchmark", *BENCH, "--envs", "mine/PoleC-v0", cwd=work, pythonpath=site))
    # The package uninstalled: the run says which package registered its family.
    _one_line_error(metarl_cmd("evaluate", "r", cwd=work), "install the package 'mine-pkg'")


def test_an_entry_point_that_fails_is_one_line_naming_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_pkg.py").write_text("import no_such_dependency\n")
    _dist_info(site, "broken_pkg:register")
    _one_line_error(
        metarl_cmd("envs", cwd=tmp_path, pythonpath=site),
        "entry point 'mine' (broken_pkg:register) of package mine-pkg",
        "No module named 'no_such_dependency'",
    )


def test_a_run_directory_never_imports(tmp_path: Path) -> None:
    # A run directory handed over by someone else names a module that would run code; the
    # real command line (main) is driven four times in one fresh process.
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    runs = []
    for i, env_id in enumerate(("mine/Evil-v0", "evil:mine/Evil-v0")):
        run = tmp_path / f"run{i}"
        run.mkdir()
        record = {"agent": "maml-trpo", "config_class": "MAMLTRPOConfig",
                  "config": {"env_id": env_id}, "imports": ["evil"]}  # fmt: skip
        (run / "config.json").write_text(json.dumps(record))
        runs.append(str(run))
    code = (
        "import sys; from metarl.cli import main; runs = sys.argv[1:];"
        "codes = [main(c) for r in runs for c in (['evaluate', r], ['train', '--resume', r])];"
        "print(codes)"
    )
    out = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)  # fmt: skip
    assert out.stdout.strip() == "[2, 2, 2, 2]" and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("error:") == 4 and out.stderr.count("pass --import evil") == 4
    assert not (tmp_path / "ran").exists()


@pytest.fixture
def forget_families():
    """Families and modules a test registers in this process are gone after it."""
    families, modules = set(registry._FAMILIES), set(sys.modules)
    yield
    for env_id in set(registry._FAMILIES) - families:
        del registry._FAMILIES[env_id]
        registry._SOURCES.pop(env_id, None)
    for name in set(sys.modules) - modules:
        if name in ("families", "pole_task", "broken"):
            del sys.modules[name]


def _main_error(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    from metarl.cli import main

    assert main([str(a) for a in args]) != 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    forget_families: None,
) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('the family is broken')\n")
    _family(tmp_path, "mine/PoleD-v0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    line = _main_error(capsys, "train", "--import", "broken.py", *TRAIN)
    assert "cannot import broken.py: RuntimeError: the family is broken" in line
    line = _main_error(capsys, "check-env", "no_such_module:mine/X-v0")
    assert "cannot import no_such_module: ModuleNotFoundError" in line
    line = _main_error(capsys, "train", *TRAIN, "--env", "families:mine/Other-v0")
    assert "families was imported but registers no task family 'mine/Other-v0'" in line
    assert "it registers: mine/PoleD-v0" in line
    assert "has no attribute 'dist_'" in _main_error(capsys, "check-env", "families.py:dist_")
    line = _main_error(capsys, "check-env", "families.py:PoleTask")
    assert "PoleTask is a class but not a gymnasium.Env" in line
    assert "not a run directory" in _main_error(capsys, "evaluate", "nowhere")
    # A family no agent's policy can act in.
    line = _main_error(capsys, "benchmark", *BENCH, "--envs", "mine/PoleD-v0-dict")
    assert "'maml-trpo' cannot run mine/PoleD-v0-dict: its observations are Dict" in line


def test_meta_world_without_the_extra_says_how_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['metaworld'] = None; from metarl.cli import main;"
        "sys.exit(main(['train', '--agent', 'maml-trpo', '--env', "
        "'metarl/MetaWorld-ML1-reach-v3-v0']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    _one_line_error(out, "metarl/MetaWorld-ML1-reach-v3-v0 needs 'metaworld'", "pip install")


# -- in-process -------------------------------------------------------------------------------
def test_import_plugin_is_idempotent_and_records_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _family(tmp_path, "mine/PoleF-v0", module="pole_f_families")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        first = registry.import_plugin(str(path))
        assert registry.import_plugin(str(path)) is first
        assert registry.family_source("mine/PoleF-v0") == {"import": str(path.resolve())}
        assert registry.run_record("mine/PoleF-v0") == {"imports": [str(path.resolve())]}
        assert registry.run_record("metarl/Navigation2D-v0") == {"imports": []}
        shadow = tmp_path / "other" / "json.py"  # would replace the standard library's
        shadow.parent.mkdir()
        shadow.write_text("")
        with pytest.raises(registry.PluginError, match=r"already imported .* rename the file"):
            registry.import_plugin(str(shadow))
        assert not registry.is_registered("pole_f_families:mine/PoleF-v0")  # never imports
        assert registry.is_registered("mine/PoleF-v0")
    finally:
        for env_id in ("mine/PoleF-v0", "mine/PoleF-v0-dict"):
            registry._FAMILIES.pop(env_id, None)
            registry._SOURCES.pop(env_id, None)
        for name in ("pole_f_families", "pole_task"):
            sys.modules.pop(name, None)


def test_lazy_families_say_what_is_missing() -> None:
    registry.register_lazy("test-lazy/", "no_such_pkg:register", requires="no_such_pkg",
                           install="pip install no-such-pkg")  # fmt: skip
    try:
        with pytest.raises(KeyError, match=r"needs 'no_such_pkg'.*pip install no-such-pkg"):
            registry.family("test-lazy/Thing-v0")
        assert not registry.is_registered("test-lazy/Thing-v0")
    finally:
        del registry._LAZY["test-lazy/"]


def test_a_config_never_holds_a_module() -> None:
    from metarl.runs.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="import my_pkg first"):
        RunConfig(env_id="my_pkg:mine/X-v0")
