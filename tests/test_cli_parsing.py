"""Issue #19: configs and the command line on tyro — typed ``--help`` from the field docs,
defaults < preset < command line, aliases, and every kind of bad command line as one line
with exit code 2."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from metarl.cli import main
from metarl.cli.parsing import CommandLineError, flags_given, parse, print_help
from metarl.runs.config import ConfigError, RunConfig, option


@dataclass
class ToyConfig(RunConfig):
    """A config with one of each kind of field."""

    lr: float = option(0.1, "inner step size", low=0.0, low_open=True)
    meta_batch_size: int = option(20, "tasks per meta-batch", low=1)
    hidden_sizes: tuple[int, ...] = option((100, 100), "hidden layer widths", low=1)
    first_order: bool = option(False, "drop second-order terms")
    nonlinearity: str = option("relu", "activation", choices=("relu", "tanh"))
    init_from: str | None = option(None, "a run to start from")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"lr": 0.05, "meta_batch_size": 40, "hidden_sizes": (64, 64)}
    }


def _parse(argv: list[str], preset: str | None = None) -> ToyConfig:
    cfg, rest = parse(ToyConfig, argv, prog="toy", preset=preset)
    assert rest == []
    return cfg


def test_defaults_preset_then_command_line() -> None:
    assert _parse([]) == ToyConfig()
    cfg = _parse([], preset="paper")
    assert (cfg.lr, cfg.meta_batch_size, cfg.hidden_sizes) == (0.05, 40, (64, 64))
    cfg = _parse(["--lr", "0.2", "--hidden-sizes", "8", "8", "8"], preset="paper")
    assert (cfg.lr, cfg.meta_batch_size, cfg.hidden_sizes) == (0.2, 40, (8, 8, 8))
    cfg = _parse(["--first-order", "--env", "metarl/AntVel-v0", "--nonlinearity", "tanh"])
    assert cfg.first_order and cfg.env_id == "metarl/AntVel-v0" and cfg.nonlinearity == "tanh"
    assert _parse(["--env=metarl/AntVel-v0", "--no-tensorboard"]).tensorboard is False
    # tensorboard: None (when installed) unless --tensorboard or --no-tensorboard says
    assert _parse([]).tensorboard is None and _parse(["--tensorboard"]).tensorboard is True
    assert _parse(["--tensorboard", "False", "--lr", "0.2"]).tensorboard is False
    assert _parse(["--init-from", "runs/a"]).init_from == "runs/a"
    # What is not the config's comes back, in order.
    _, rest = parse(ToyConfig, ["--seed", "3", "--other", "x"], prog="toy")
    assert rest == ["--other", "x"]


def test_flags_given_tells_explicit_values_from_defaults() -> None:
    argv = ["--seed", "0", "--env=x", "--no-first-order", "--lr", "0.1"]
    assert flags_given(ToyConfig, argv) == {"seed", "env_id", "first_order", "lr"}


def test_help_shows_every_field_doc_and_the_preset_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_help(ToyConfig, prog="toy", default=ToyConfig.from_preset("paper"))
    text = " ".join(capsys.readouterr().out.split())
    assert "--meta-batch-size INT" in text and "tasks per meta-batch" in text
    assert "(default: 40)" in text  # the preset's value, what the run would get
    assert "--first-order, --no-first-order" in text


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--meta-batch-size", "abc"], CommandLineError, r"--meta-batch-size takes INT: .*'abc'"),
        (["--lr"], CommandLineError, "--lr needs a value"),
        (["--hidden-sizes", "a"], CommandLineError, "--hidden-sizes takes"),
        (["--hidden-sizes", "--lr", "1"], CommandLineError, "--hidden-sizes needs at least one"),
        (["--lr", "-1"], ConfigError, r"ToyConfig.lr \(--lr\) must be > 0.0, got -1.0"),
        (["--nonlinearity", "gelu"], ConfigError, "must be one of relu, tanh"),
    ],
)
def test_bad_values_are_one_exception_with_the_option(
    argv: list[str], error: type[Exception], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(error, match=message) as info:
        parse(ToyConfig, argv, prog="toy")
    assert "\n" not in str(info.value)
    assert capsys.readouterr().err == ""  # nothing drawn: the caller prints one line


def test_an_unknown_preset_is_named() -> None:
    with pytest.raises(ConfigError, match="no preset 'nope'; presets: paper"):
        parse(ToyConfig, [], prog="toy", preset="nope")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--agent", "maml-trpo", "--seed"], "--seed needs a value"),
        (["train", "--agent", "maml-trpo", "--seed", "x"], "--seed takes INT"),
        (["train", "--agent", "maml-trpo", "--preset", "nope"], "no preset 'nope'; presets:"),
        (["train", "--agent", "maml-trpo", "--first-order", "x"], "unrecognized option"),
        (["evaluate"], "missing RUN_DIR"),
        (["evaluate", "r", "--tasks", "val"], "--tasks must be one of test, train; got 'val'"),
        (["evaluate", "r", "--seeds", "x"], "--seeds takes"),
        (["evaluate", "r", "--nope"], r"unrecognized argument\(s\): --nope"),
        (["benchmark", "--agents", "rl2"], "missing --envs"),
        (["check-env"], "missing TARGET"),
        (["check-env", "x", "--steps", "1.5"], "--steps takes INT"),
        (["envs", "--json", "yes"], "unrecognized argument"),
        (["evaluate", "r", "--episodes", "x"], r"--episodes takes \{None\}\|INT: no type"),
        (["fewshot"], "say what to do: metarl fewshot train"),
        (["fewshot", "nope"], "no command 'nope'"),
        (["fewshot", "train", "--learner", "nope"], "no few-shot learner named 'nope'"),
        (["fewshot", "train", "--preset", "nope"], "no few-shot preset 'nope'"),
        (["fewshot", "train", "--learner", "maml", "--seed"], "--seed needs a value"),
        (["fewshot", "train", "--num-iterations", "x"], "--num-iterations takes INT"),
        (
            ["fewshot", "train", "--learner", "maml", "--meta-step", "0.5"],
            "--meta-step is an option of reptile, not of maml",
        ),
        (
            ["fewshot", "train", "--preset", "maml-sinusoid", "--no-transductive"],
            "--no-transductive is an option of reptile, not of maml",
        ),
        (["fewshot", "train", "--nope"], r"unrecognized option\(s\) for maml: --nope"),
        (
            ["fewshot", "train", "--learner", "maml", "--preset", "reptile-omniglot-5w1s"],
            "preset 'reptile-omniglot-5w1s' is reptile's, not maml's",
        ),
        (["fewshot", "train", "--pool", "avg"], "must be one of max, stride"),
        (["fewshot", "train", "--num-eval-episodes", "0"], "--num-eval-episodes must be >= 1"),
        (["fewshot", "train", "--resume"], "--resume needs --run-dir"),
        (["fewshot", "evaluate"], "missing RUN_DIR"),
        (["fewshot", "evaluate", "r", "--checkpoint", "x"], "must be one of latest, best"),
        (["fewshot", "evaluate", "r", "--num-ways", "x"], "--num-ways takes"),
        (["fewshot", "evaluate", "r", "--nope"], r"unrecognized argument\(s\): --nope"),
        (["fewshot", "presets", "x"], r"unrecognized argument\(s\): x"),
    ],
)
def test_bad_command_lines_are_one_line_with_exit_code_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"metarl {argv[0]}: error: "), err
    assert re.search(message, err), err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_train_help_lists_the_agents_presets_and_typed_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--agent", "maml-trpo", "--preset", "quick", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rl2" in out and "quick env_id=metarl/Navigation2D-v0" in out
    assert "--inner-lr FLOAT" in out and "(default: 30)" in out  # quick's num_iterations
    assert main(["train", "--help"]) == 0
    assert "`metarl train --agent AGENT --help`" in capsys.readouterr().out


def test_command_help_shows_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR" in out and "--num-threads INT" in out and "(default: 1)" in out
    assert "--import MODULE_OR_FILE.py" in out


def test_fewshot_train_reads_the_learner_config_through_tyro() -> None:
    """defaults < preset < command line, the learner's class chosen by --learner or the
    preset, with the same values as the config built in Python."""
    from metarl.cli.args import FewShotTrainArgs
    from metarl.cli.fewshot import train_config
    from metarl.fewshot.configs import FewShotConfig, MAMLConfig, ReptileConfig

    args, rest = parse(FewShotTrainArgs, ["--preset", "maml-sinusoid", "--num-iterations", "7",
                                          "--no-vectorize", "--run-dir", "r"],
                       prog="x", flags_only=True)  # fmt: skip
    assert (args.preset, args.run_dir) == ("maml-sinusoid", "r")
    assert rest == ["--num-iterations", "7", "--no-vectorize"]
    cfg = train_config(args, rest)
    assert cfg == FewShotConfig.from_preset("maml-sinusoid", num_iterations=7, vectorize=False)
    assert isinstance(cfg, MAMLConfig) and cfg.inner_lr == 0.01 and cfg.meta_batch_size == 25
    cfg = train_config(FewShotTrainArgs(learner="reptile"), ["--meta-step", "0.5"])
    assert cfg == ReptileConfig(meta_step=0.5)
    assert train_config(FewShotTrainArgs(), []) == MAMLConfig()


def test_fewshot_help_shows_the_learner_options_with_the_preset_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["fewshot", "train", "--preset", "reptile-omniglot-5w1s", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--num-eval-episodes INT" in out and "(default: 600)" in out  # the run's options
    assert "--meta-step FLOAT" in out and "initial outer step" in out  # reptile's own
    assert "(default: 100000)" in out  # the preset's num_iterations
    assert main(["fewshot", "train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "protonet" in out and "`metarl fewshot train --learner NAME --help`" in out
    assert main(["fewshot", "--help"]) == 0
    assert "presets" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fewshot", "evaluate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR" in out and "--checkpoint {latest,best}" in out
