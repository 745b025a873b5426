from __future__ import annotations

import json
import subprocess
import sys

import pytest

import metarl
from metarl.cli import main


def test_envs_lists_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    for env_id in metarl.family_ids():
        assert env_id in out
    assert "goal position" in out and "1000/40" in out


def test_envs_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    nav = next(r for r in rows if r["id"] == "metarl/Navigation2D-v0")
    assert nav["num_test"] == 40 and nav["horizon"] == 100 and "numpy" in nav["backends"]


def test_console_script_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"metarl {metarl.__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "envs" in out.stdout


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
