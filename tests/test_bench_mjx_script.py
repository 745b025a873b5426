"""scripts/bench_mujoco_mjx.py ends within its time limit, whatever MJX's compile takes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from metarl.envs.mujoco import mjx_batched

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not mjx_batched.available(), reason='the mjx extra is not installed (pip install -e ".[mjx]")'
)


def _script() -> ModuleType:
    path = ROOT / "scripts" / "bench_mujoco_mjx.py"
    spec = importlib.util.spec_from_file_location("bench_mujoco_mjx", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_measurement_that_outlives_the_limit_is_stopped_and_reported(tmp_path: Path) -> None:
    # 3 s cannot hold a child's imports, native steps and MJX's compile of HalfCheetah (tens
    # of seconds): the child is killed and the report says so instead of waiting for it.
    out = tmp_path / "mjx"
    argv = ["--families", "HalfCheetahVel", "--num-envs", "2", "--steps", "2",
            "--max-seconds", "3", "--out", str(out)]  # fmt: skip
    assert _script().main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (r,) = report["results"]
    assert r["status"].startswith("stopped after 3 s")
    assert report["meta"]["max_seconds"] == 3
    md = out.with_suffix(".md").read_text()
    assert "stopped after 3 s" in md and "load average" in md


def test_bad_limits_are_refused() -> None:
    with pytest.raises(SystemExit):
        _script().main(["--max-seconds", "0"])
    with pytest.raises(SystemExit):
        _script().main(["--steps", "0"])
