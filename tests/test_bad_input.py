"""Issue #7, guarantee 5 at the command line: unknown ids, wrong types, out-of-range values,
bad dataset paths and missing run directories get one clear line and exit code 2 — no
traceback, and no run directory left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metarl.cli import main
from metarl.testing import tally

MAML = ["train", "--agent", "maml-trpo", "--num-iterations", "1"]
REPTILE = ["train", "--agent", "reptile-rl", "--num-iterations", "1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--agent", "nope"], "no agent named 'nope'. Agents: maml-trpo"),
        ([*MAML, "--env", "metarl/Nope-v0"], "no task family registered as 'metarl/Nope-v0'"),
        ([*MAML, "--meta-batch-size", "0"], r"meta_batch_size \(--meta-batch-size\) must be >= 1"),
        ([*MAML, "--inner-lr", "-0.1"], r"inner_lr \(--inner-lr\) must be > 0.0"),
        ([*MAML, "--inner-lr", "nan"], "must be a number, got NaN"),
        ([*MAML, "--max-kl", "0"], "must be > 0.0"),
        ([*MAML, "--gamma", "1.5"], "must be <= 1.0"),
        ([*MAML, "--device", "tpu"], "must be auto, cpu, cuda"),
        ([*MAML, "--backend", "subprocess", "--worker-timeout", "0"], "must be > 0.0"),
        ([*MAML, "--no-such-option", "3"], "unrecognized option"),
        ([*REPTILE, "--env", "metarl/Nope-v0"], "no task family registered as 'metarl/Nope-v0'"),
        (
            [*REPTILE, "--outer-step-size", "1.5"],
            r"outer_step_size \(--outer-step-size\) must be <= 1",
        ),
        (
            [*REPTILE, "--num-adapt-steps", "0"],
            r"num_adapt_steps \(--num-adapt-steps\) must be >= 1",
        ),
        ([*REPTILE, "--inner-lr", "inf"], r"inner_lr \(--inner-lr\) must be a finite number"),
        ([*REPTILE, "--backend", "subprocess", "--num-workers", "0"], "must be >= 1"),
        ([*REPTILE, "--max-kl", "0.1"], "unrecognized option"),
        (["train", "--agent", "rl2", "--lr", "-1"], r"RL2Config.lr \(--lr\) must be > 0.0"),
        (
            ["train", "--agent", "rl2", "--num-trials", "6", "--num-minibatches", "4"],
            r"num_trials \(6\) must be a multiple of num_minibatches \(4\)",
        ),
        (["train", "--agent", "pretrained", "--batch-size", "7"], "multiple of batch_size 7"),
        (["train", "--agent", "oracle", "--learning-rate", "inf"], "must be a finite number"),
        (["train", "--agent", "random-init", "--hidden-sizes", "0"], "must be >= 1, got 0"),
        (["evaluate", "/no/such/run"], "not a run directory"),
        (["check-env", "metarl/Nope-v0"], "Nope"),
        (["fewshot", "train", "--learner", "maml", "--meta-lr", "-1"], "must be > 0.0"),
        (
            ["fewshot", "train", "--dataset", "folder", "--data-path", "/no/such/dir"],
            "has no train/ sub-folder",
        ),
        (
            ["fewshot", "train", "--dataset", "omniglot", "--data-path", "/no/such/dir"],
            "Omniglot path '/no/such/dir' does not exist",
        ),
    ],
)
def test_bad_command_lines_get_one_clear_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    if argv[0] == "train" or argv[:2] == ["fewshot", "train"]:
        argv = [*argv, "--run-dir", str(tmp_path / "run")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    tally("bad command line refused")


def test_a_corrupted_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split in ("train", "test"):
        for c in range(5):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            (d / "x.png").write_bytes(b"not an image")
    code = main(["fewshot", "train", "--dataset", "folder", "--data-path",
                 str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "x.png is not a readable image" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
