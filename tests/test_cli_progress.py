"""Issue #21, the first hour at the command line: the training loop's header and lines (the
right range, every agent's seconds, never written onto the progress bar), ``metarl evaluate
--num-threads``, its progress bar and success rate, the missing-TensorBoard line and the
evaluation plot's labels."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl import runs
from metarl.cli import main
from metarl.evaluation import AdaptationCurve, curve_caption, curve_figure, progress_bar
from metarl.runs import Run
from metarl.runs.config import RunConfig
from metarl.runs.training import Trainer, iteration_range, train_loop

NAV = "metarl/Navigation2D-v0"
_MAML = ["--agent", "maml-trpo", "--preset", "quick", "--num-iterations", "1",
         "--meta-batch-size", "2", "--episodes-per-task", "2", "--hidden-sizes", "8",
         "--no-tensorboard"]  # fmt: skip


class _Counter(Trainer):
    """A trainer that learns nothing: the loop's lines are the point."""

    def __init__(self) -> None:
        self.total = 0

    def iteration(self, it: int) -> dict[str, float]:
        self.total += it
        return {"total": float(self.total)}

    def progress(self, stats: Mapping[str, float]) -> str:
        return f"total {stats['total']:.0f}"

    def state(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.total = int(state["total"])


def _count(tmp_path: Path, num_iterations: int, log: Any, **kwargs: Any) -> None:
    cfg = RunConfig(num_iterations=num_iterations, tensorboard=False)
    train_loop(cfg, tmp_path / "run", "counter", lambda c, d, r: _Counter(), log=log, **kwargs)


class _Terminal(io.StringIO):
    """What a terminal receives, byte for byte."""

    def isatty(self) -> bool:
        return True


def test_the_header_names_the_iterations_that_run() -> None:
    assert iteration_range(0, 3) == "iterations 0..2 of 3"
    assert iteration_range(5, 10) == "iterations 5..9 of 10"  # resumed at 5
    assert iteration_range(0, 1) == "iteration 0 of 1"
    assert iteration_range(3, 3) == "no iterations left of 3"


def test_every_line_names_its_iteration_and_its_seconds(tmp_path: Path) -> None:
    lines: list[str] = []
    _count(tmp_path, 3, lines.append)
    assert "counter on metarl/Navigation2D-v0: iterations 0..2 of 3, run dir" in lines[0]
    # Iteration 0, then every tenth and the last, each with the loop's own timing.
    assert [line.split(":")[0] for line in lines[1:]] == ["iteration 0", "iteration 2"]
    for line in lines[1:]:
        assert re.fullmatch(r"iteration \d: total \d, \d+\.\d\d s", line), line


def test_rl2_lines_show_the_seconds_of_each_iteration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--agent", "rl2", "--preset", "quick", "--num-iterations", "1",
            "--num-trials", "4", "--no-tensorboard",
            "--run-dir", str(tmp_path / "rl2")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "iteration 0 of 1, " in out
    assert re.search(r"^iteration 0: trial return .*\), \d+\.\d\d s$", out, re.M), out


def test_lines_are_written_above_the_progress_bar_never_onto_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)  # a terminal: the loop draws a bar there
    _count(tmp_path, 12, lambda m: print(m, file=screen, flush=True))
    text = screen.getvalue()
    assert "counter:" in text and "12/12" in text  # the bar was drawn
    shown = [row.split("\r")[-1] for row in text.split("\n")]  # what each row shows
    for it in (0, 10, 11):
        row = next(r for r in shown if f"iteration {it}:" in r)
        assert row.startswith(f"iteration {it}:"), repr(row)
    assert any(r.startswith("counter on ") for r in shown)


def test_the_bar_is_closed_before_an_error_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Failing(_Counter):
        def iteration(self, it: int) -> dict[str, float]:
            if it == 1:
                raise RuntimeError("boom")
            return super().iteration(it)

    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    cfg = RunConfig(num_iterations=3, tensorboard=False)
    with pytest.raises(RuntimeError, match="boom"):
        train_loop(cfg, tmp_path / "run", "counter", lambda c, d, r: Failing())
    assert screen.getvalue().endswith("\n")  # what follows starts on a line of its own


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("first-hour") / "maml"
    assert main(["train", *_MAML, "--run-dir", str(path)]) == 0
    return path


def test_evaluate_num_threads_reaches_torch_and_prints_the_success_rate(
    maml_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    argv = ["evaluate", str(maml_run), "--num-threads", "3", "--max-tasks", "2",
            "--seeds", "0", "--episodes", "2", "--steps", "1"]  # fmt: skip
    assert main(argv) == 0
    assert asked == [3]
    out = capsys.readouterr().out
    # 2D navigation defines success (info["is_success"]): one rate per point of the curve.
    assert re.search(r"k=0: .* success rate \d\.\d\d ± ", out), out
    assert re.search(r"k=1: .* success rate \d\.\d\d ± ", out), out
    assert "(checkpoint of iteration 1)" in out
    asked.clear()
    assert main([*argv[:2], "--num-threads", "0", *argv[4:]]) == 0
    assert asked == []  # 0: torch's default threads, left alone


def test_evaluate_refuses_negative_threads(
    maml_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(maml_run), "--num-threads", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--num-threads must be >= 0" in err


def test_evaluation_progress_bar_counts_the_work(
    maml_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    argv = ["evaluate", str(maml_run), "--max-tasks", "2", "--seeds", "0", "1",
            "--episodes", "2", "--steps", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "maml-trpo: 2 tasks" in screen.getvalue()
    # 2 seeds × (1 step + the point before it); the last redraw depends on tqdm's clock
    assert "0/4" in screen.getvalue()
    # Off a terminal nothing is drawn.
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress_bar(3, "x") as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_missing_tensorboard_is_said_once_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    monkeypatch.setattr(runs, "_warned_no_tensorboard", False)
    cfg = RunConfig(num_iterations=1, tensorboard=True)
    for name in ("a", "b"):
        Run.create(tmp_path / name, "counter", cfg).close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "tensorboard package is not installed" in err
    assert "pip install tensorboard" in err and "leave --tensorboard out" in err
    assert not (tmp_path / "a" / "tensorboard").exists()
    # Not asked for (false), or left to the default (None: when installed): nothing said.
    for name, value in (("c", False), ("d", None)):
        monkeypatch.setattr(runs, "_warned_no_tensorboard", False)
        Run.create(tmp_path / name, "counter", cfg.replace(tensorboard=value)).close()
        assert capsys.readouterr().err == ""
        assert not (tmp_path / name / "tensorboard").exists()
    assert RunConfig().tensorboard is None


def test_tensorboard_by_default_when_the_package_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    made: list[str] = []

    class SummaryWriter:  # stands in for the installed package's writer
        def __init__(self, path: str) -> None:
            made.append(path)

        def close(self) -> None:
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    for name, value in (("auto", None), ("on", True), ("off", False)):
        Run.create(
            tmp_path / name, "counter", RunConfig(num_iterations=1, tensorboard=value)
        ).close()
    assert made == [str(tmp_path / "auto" / "tensorboard"), str(tmp_path / "on" / "tensorboard")]
    assert capsys.readouterr().err == ""


def test_the_plot_labels_its_band_and_says_what_it_averages() -> None:
    rng = np.random.default_rng(0)
    curve = AdaptationCurve("maml-trpo", NAV, "gradient steps", rng.normal(size=(2, 5, 4)),
                            meta={"iterations": 7})  # fmt: skip
    assert curve_caption(curve) == "checkpoint of iteration 7, 5 test tasks × 2 seeds"
    fig = curve_figure([curve], f"maml-trpo on {NAV}\n{curve_caption(curve)}")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["maml-trpo", "95% CI"]
    assert "checkpoint of iteration 7, 5 test tasks × 2 seeds" in ax.get_title()
    other = AdaptationCurve("rl2", NAV, "episodes", rng.normal(size=(1, 1, 4)))
    assert curve_caption(other) == "1 test task × 1 seed"  # no checkpoint recorded
    two = curve_figure([curve, other])
    assert [t.get_text() for t in two.axes[0].get_legend().get_texts()] == [
        "maml-trpo",
        "95% CI",
        "rl2",
    ]


def test_a_run_evaluation_plot_has_the_caption(
    maml_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metarl.evaluation as evaluation

    titles: list[str] = []
    real = evaluation.plot_curves

    def spy(curves: list[AdaptationCurve], path: Any, title: str = "") -> Path:
        titles.append(title)
        return real(curves, path, title)

    monkeypatch.setattr(evaluation, "plot_curves", spy)
    argv = ["evaluate", str(maml_run), "--max-tasks", "3", "--seeds", "0", "1",
            "--episodes", "2", "--steps", "1"]  # fmt: skip
    assert main(argv) == 0
    assert titles == [f"maml-trpo on {NAV}\ncheckpoint of iteration 1, 3 test tasks × 2 seeds"]
