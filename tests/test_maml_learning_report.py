"""scripts/maml_learning.py: the report's verdicts (published bar reached, CI excludes zero,
paired differences) are computed from the curves, both ways."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from metarl.agents.maml_trpo import MAMLTRPOConfig
from metarl.evaluation import AdaptationCurve

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "maml_learning.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("maml_learning", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["maml_learning"] = mod
    spec.loader.exec_module(mod)
    return mod


def _curve(agent: str, before: float, after: float, rng: np.random.Generator) -> dict[str, Any]:
    base = np.array([before, after, after + 1.0, after + 1.5])
    returns = base + rng.normal(0.0, 1.0, size=(3, 40, 4))
    return AdaptationCurve(agent=agent, env_id="metarl/Navigation2D-v0", unit="gradient steps",
                           returns=returns, meta={"lrs": [0.1, 0.05], "episodes_per_step": 40,
                                                  "seeds": [0, 1, 2]}).to_json()  # fmt: skip


def _data(maml_before: float, maml_after: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "name": "nav2d",
        "env_id": "metarl/Navigation2D-v0",
        "config": MAMLTRPOConfig().to_dict(),
        "training": {
            "iterations": 3,
            "wall_clock_s": 60.0,
            "median_iteration_s": 20.0,
            "env_steps": 1e5,
            "first10_pre_adapt_return": -60.0,
            "first10_post_adapt_return": -50.0,
            "last10_pre_adapt_return": -30.0,
            "last10_post_adapt_return": -10.0,
        },
        "training_load": None,
        "note": "",
        "baseline_eval_s": 1.0,
        "baseline_eval_load_before_after": ["1 1 1", "1 1 1"],
        "machine": "test",
        "command": "python scripts/maml_learning.py eval ...",
        "curves": {
            "maml-trpo": _curve("maml-trpo", maml_before, maml_after, rng),
            "random-init": _curve("random-init", -90.0, -85.0, rng),
        },
    }


def test_report_verdicts_follow_the_numbers(script: ModuleType) -> None:
    good = "\n".join(script.section(_data(-30.0, -8.0)))
    assert re.search(r"Ours after 1 step: -[78]\.\d\d ± 0\.\d\d — reaches it\.", good)
    assert "the 95% CI excludes zero." in good
    assert "maml-trpo − random-init after 1 step(s): 77." in good

    bad = "\n".join(script.section(_data(-30.0, -30.0)))
    assert "does **not** reach it." in bad
    assert "does **not** exclude zero." in bad


def test_eval_needs_an_evaluated_maml_run(script: ModuleType, tmp_path: Path) -> None:
    from metarl.runs import Run

    Run.create(tmp_path / "r", "maml-trpo", MAMLTRPOConfig(tensorboard=False)).close()
    args = script.argparse.Namespace(run=str(tmp_path / "r"), threads=1)
    with pytest.raises(SystemExit, match="metarl evaluate"):
        script.cmd_eval(args)
