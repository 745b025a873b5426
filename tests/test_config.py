from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from metarl.cli.parsing import parse
from metarl.runs.config import Config, ConfigError, RunConfig, option


@dataclass
class ToyConfig(RunConfig):
    """A config with one of each kind of field."""

    lr: float = option(0.1, "inner step size", low=0.0, low_open=True)
    meta_batch_size: int = option(20, "tasks per meta-batch", low=1)
    hidden_sizes: tuple[int, ...] = option((100, 100), "hidden layer widths", low=1)
    first_order: bool = option(False, "drop second-order terms")
    nonlinearity: str = option("relu", "activation", choices=("relu", "tanh"))

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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -0.1}, "lr (--lr) must be > 0.0"),
        ({"lr": 0.0}, "must be > 0.0"),
        ({"meta_batch_size": 0}, "meta_batch_size (--meta-batch-size) must be >= 1"),
        ({"meta_batch_size": 2.5}, "must be an integer"),
        ({"hidden_sizes": (64, 0)}, "must be >= 1"),
        ({"nonlinearity": "gelu"}, "must be one of relu, tanh"),
        ({"device": "tpu"}, "must be auto, cpu, cuda"),
        ({"seed": -1}, "must be >= 0"),
        ({"first_order": "yes"}, "must be true or false"),
    ],
)
def test_bad_values_are_refused_with_the_option_name(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ToyConfig(**changes)


def test_unknown_keys_and_presets() -> None:
    with pytest.raises(ConfigError, match="unknown ToyConfig option"):
        ToyConfig.from_dict({"lr": 0.1, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="no preset 'nope'; presets: paper"):
        ToyConfig.from_preset("nope")


def test_round_trip_and_differences() -> None:
    cfg = ToyConfig(lr=0.3, hidden_sizes=(5,))
    assert ToyConfig.from_dict(cfg.to_dict()) == cfg
    # Iterations and device may change when a run is resumed; the rest may not.
    assert cfg.differences(cfg.replace(num_iterations=7, device="cpu")) == {}
    assert set(cfg.differences(cfg.replace(lr=0.2, seed=3))) == {"lr", "seed"}


def test_config_base_has_no_fields() -> None:
    assert Config().to_dict() == {}
