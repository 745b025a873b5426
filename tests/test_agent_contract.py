"""Every registered agent keeps the agent contract (metarl.agent), and the command line and
the benchmark read what an agent declares instead of probing its functions."""

from __future__ import annotations

import inspect
import types

import pytest

from metarl.agent import ADAPTS_BY, Agent, Capabilities
from metarl.agents import agent_names, get_agent, register_agent
from metarl.runs.config import RunConfig

TRAIN = ("resume", "overwrite", "log")


@pytest.mark.parametrize("name", agent_names())
def test_every_registered_agent_keeps_the_contract(name: str) -> None:
    module = get_agent(name)
    assert isinstance(module, Agent)
    assert name == module.AGENT
    assert issubclass(module.CONFIG, RunConfig)
    assert isinstance(module.CAPABILITIES, Capabilities)
    assert module.CAPABILITIES.adapts_by in ADAPTS_BY
    train = inspect.signature(module.train).parameters
    assert list(train)[:2] == ["cfg", "run_dir"]
    assert all(train[k].kind is inspect.Parameter.KEYWORD_ONLY for k in TRAIN), name
    evaluate = inspect.signature(module.evaluate).parameters
    assert list(evaluate) == ["run_dir", "settings", "overrides"], name
    assert evaluate["overrides"].kind is inspect.Parameter.VAR_KEYWORD
    # An agent that does not adapt by gradient steps refuses inner rates before any work.
    if not module.CAPABILITIES.takes_lrs:
        with pytest.raises(ValueError, match="does not adapt by gradient steps"):
            module.evaluate("no-such-run", lrs=(0.1,))
    with pytest.raises(TypeError, match="unknown evaluation setting"):
        module.evaluate("no-such-run", steps=3)
    # metarl.agents.load's hook: the run's policy, to adapt, act with and export.
    hook = inspect.signature(module.trained_policy).parameters
    assert list(hook) == ["run_dir", "device"] and hook["device"].default == "cpu", name


def test_a_module_that_breaks_the_contract_is_refused_with_what_it_lacks() -> None:
    fake = types.ModuleType("metarl_fake_agent")
    fake.AGENT = "fake"  # type: ignore[attr-defined]
    import sys

    sys.modules["metarl_fake_agent"] = fake
    try:
        register_agent("fake", "metarl_fake_agent", "no contract")
        with pytest.raises(TypeError, match=r"CONFIG, CAPABILITIES, train, evaluate"):
            get_agent("fake")
    finally:
        from metarl import agents

        agents._AGENTS.pop("fake", None)
        sys.modules.pop("metarl_fake_agent", None)


def test_capabilities_are_checked_and_read() -> None:
    with pytest.raises(ValueError, match="adapts_by"):
        Capabilities(adapts_by="magic")  # type: ignore[arg-type]
    caps = Capabilities(adapts_by="episodes", unsupported=lambda env: f"no {env}")
    assert not caps.takes_lrs and caps.reason_against("x") == "no x"
    assert Capabilities(adapts_by="gradient steps").takes_lrs


def test_lrs_refused_for_an_agent_that_does_not_adapt_by_gradient_steps(tmp_path, capsys):
    """The command line refuses --lrs from the declared capability, before evaluating."""
    from metarl.cli import main

    run = tmp_path / "rl2"
    assert main(["train", "--agent", "rl2", "--preset", "quick", "--num-iterations", "1",
                 "--num-trials", "4", "--run-dir", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run), "--lrs", "0.1"]) == 2
    assert "does not adapt by gradient steps" in capsys.readouterr().err


def test_no_agent_keeps_a_training_loop_of_its_own() -> None:
    """Run directories are created, resumed and checkpointed by metarl.runs.training alone: no
    agent file (nor the few-shot trainer) does it itself."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [*sorted((root / "agents").glob("*.py")), root / "metarl" / "fewshot" / "train.py"]
    for path in files:
        source = path.read_text()
        for call in ("Run.create(", "Run.resume(", ".save_checkpoint(", "shutil.rmtree("):
            assert call not in source, f"{path.name} calls {call} (the loop's job)"
