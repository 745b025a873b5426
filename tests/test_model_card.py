"""A run's README.md model card: written at the end of training, refreshed by `metarl
evaluate` with the held-out table (the numbers of eval_test.json), never failing a run."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from metarl.cli import main
from metarl.runs.model_card import RESULTS_END, RESULTS_START, model_card, write_model_card

TINY = ["--preset", "quick", "--num-iterations", "1", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--hidden-sizes", "8", "--no-tensorboard"]  # fmt: skip
EVAL = ["--steps", "2", "--seeds", "0", "1", "--max-tasks", "2", "--episodes", "2"]


def _front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    block = text.split("---\n", 2)[1]
    try:
        import yaml
    except ImportError:  # without pyyaml: the keys, line by line
        keys = [ln.split(":", 1)[0] for ln in block.splitlines() if re.match(r"^[a-z-]+:", ln)]
        return dict.fromkeys(keys)
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("card") / "maml"
    assert main(["train", "--agent", "maml-trpo", *TINY, "--run-dir", str(d)]) == 0
    return d


def test_training_writes_a_card_without_results(run: Path) -> None:
    text = (run / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "metarl"
    tags = meta["tags"]
    if tags is not None:  # parsed
        assert {"reinforcement-learning", "meta-reinforcement-learning", "maml-trpo",
                "Navigation2D-v0"} <= set(tags)  # fmt: skip
    assert "model-index" not in meta  # no metrics before an evaluation
    assert "# maml-trpo on metarl/Navigation2D-v0" in text
    assert "Not evaluated yet" in text and "metarl.agents.load(" in text
    config = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    assert config == json.loads((run / "config.json").read_text())["config"]


def test_evaluate_fills_in_the_eval_json_numbers(run: Path, capsys) -> None:
    assert main(["evaluate", str(run), *EVAL]) == 0
    capsys.readouterr()
    summary = json.loads((run / "eval_test.json").read_text())["summary"]
    text = (run / "README.md").read_text()
    assert (
        "Not evaluated yet" not in text and "![adaptation on held-out tasks](eval_test.png)" in text
    )
    # The table, between its markers: one row per number of steps, eval_test.json's numbers.
    section = text.split(RESULTS_START, 1)[1].split(RESULTS_END, 1)[0]
    rows = [ln for ln in section.splitlines() if re.match(r"^\| \d+ \|", ln)]
    assert len(rows) == len(summary["mean"]) == 3
    for k, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[0]) == k
        assert float(cells[1]) == pytest.approx(summary["mean"][k], abs=5e-4)
        assert float(cells[2].lstrip("± ")) == pytest.approx(summary["ci95"][k], abs=5e-4)
        if "success_rate" in summary:
            assert float(cells[3]) == pytest.approx(summary["success_rate"][k], abs=5e-4)
    # The model-index metrics are the same numbers, as Hugging Face's RL cards write them.
    meta = _front_matter(text)
    if meta["model-index"] is not None:
        (entry,) = meta["model-index"]
        (result,) = entry["results"]
        assert result["dataset"]["type"] == "metarl/Navigation2D-v0"
        metrics = {m["type"]: m["value"] for m in result["metrics"]}
        for k, (m, h) in enumerate(zip(summary["mean"], summary["ci95"], strict=True)):
            value = metrics[f"mean_reward_after_{k}_gradient_steps"]
            mean, half = (float(x) for x in value.split(" +/- "))
            assert mean == pytest.approx(m, abs=5e-4)
            assert half == pytest.approx(h, abs=5e-4) or math.isnan(h)


def test_rl2_card_counts_episodes(tmp_path: Path, capsys) -> None:
    d = tmp_path / "rl2"
    assert main(["train", "--agent", "rl2", "--env-id", "metarl/BernoulliBandit-K5-v0",
                 "--num-iterations", "1", "--num-trials", "4", "--max-episode-steps", "5",
                 "--hidden-size", "4", "--run-dir", str(d)]) == 0  # fmt: skip
    assert main(["evaluate", str(d), "--steps", "1", "--seeds", "0", "--max-tasks", "2",
                 "--episodes", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    text = (d / "README.md").read_text()
    assert "| episodes | mean return | 95% CI |" in text
    tags = _front_matter(text)["tags"]
    assert tags is None or {"rl2", "BernoulliBandit-K5-v0"} <= set(tags)
    assert "adapts to a new task by episodes" in text


def test_a_card_that_cannot_be_written_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import metarl.runs.model_card as mc

    def broken(run_dir: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(mc, "model_card", broken)
    d = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--agent", "maml-trpo", *TINY, "--run-dir", str(d)]) == 0
    assert (d / "checkpoint.pt").is_file() and not (d / "README.md").exists()
    said = [str(w.message) for w in caught if "model card" in str(w.message)]
    assert len(said) == 1 and "disk full" in said[0] and "\n" not in said[0]


def test_card_of_a_directory_with_a_link_at_readme_is_not_written(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"agent": "x", "config": {"env_id": "e/E-v0"}}))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (d / "README.md").symlink_to(victim)
    with pytest.warns(UserWarning, match="symbolic link"):
        assert write_model_card(d) is None
    assert victim.read_text() == "keep"
    assert model_card(d).startswith("---\nlibrary_name: metarl\n")
