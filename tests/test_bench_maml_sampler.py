"""scripts/bench_maml_sampler.py end to end on one timed iteration per sampler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_maml_sampler_benchmark_reports_both_samplers_and_no_gpu_figure(tmp_path: Path) -> None:
    path = ROOT / "scripts" / "bench_maml_sampler.py"
    spec = importlib.util.spec_from_file_location("bench_maml_sampler", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "maml_sampler"
    assert script.main(["--iterations", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())["results"]
    for name in ("torch", "native"):
        (row,) = res[name]["all"]
        assert row["iteration_s"] >= row["sample_s"] > 0 and row["outer_s"] > 0
    md = out.with_suffix(".md").read_text()
    assert "not measured: no GPU" in md and "load average" in md
    with pytest.raises(SystemExit):
        script.main(["--iterations", "0", "--out", str(out)])
