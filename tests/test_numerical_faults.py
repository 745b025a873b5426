"""Issue #7, guarantee 4: a NaN/inf in observations, rewards, losses, gradients or the update
stops the run with an error naming the iteration and the quantity, and the last good
checkpoint is never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.agents import rl2
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.runs import load_checkpoint_file
from metarl.testing import register_faulty_family, tally


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_check_finite_counts_and_names_the_quantity() -> None:
    check_finite("x", torch.ones(3), np.zeros(2), 1.0, [torch.ones(1)], {"a": 2})
    check_finite("ints", torch.arange(3), np.arange(2))  # integers cannot be NaN
    with pytest.raises(NonFiniteError, match=r"non-finite rewards \(2 of 5 values") as info:
        check_finite("rewards", torch.tensor([1.0, float("nan"), float("inf")]), np.zeros(2))
    assert info.value.quantity == "rewards" and info.value.iteration is None
    with pytest.raises(NonFiniteError, match=r"gradient of w.*lower the step"):
        check_finite("gradient of w", {"w": [np.array([np.inf])]}, hint="lower the step")
    assert at_iteration(info.value, 4, "ckpt.pt").startswith("iteration 4: non-finite rewards")


@pytest.mark.parametrize("fault", ["inf_reward", "nan_obs"])
def test_rl2_stops_on_a_bad_env_value_and_keeps_the_last_good_checkpoint(
    fault: str, tmp_path: Path
) -> None:
    # The env behaves for two episodes per row, then returns inf/NaN at step 2 of the third:
    # iterations 0 and 1 finish and are checkpointed, iteration 2 must stop the run.
    env_id = register_faulty_family(fault, at_step=2, from_episode=3)
    cfg = rl2.RL2Config(env_id=env_id, max_episode_steps=5, num_trials=4, hidden_size=8,
                        num_minibatches=2, num_iterations=5)  # fmt: skip
    path = tmp_path / "rl2.pt"
    agent = rl2.RL2(cfg)
    saved: list[bytes] = []
    save = agent.save

    def save_and_remember(p: Path) -> Path:
        out = save(p)
        saved.append(Path(p).read_bytes())
        return out

    agent.save = save_and_remember  # type: ignore[method-assign]
    with pytest.raises(NonFiniteError, match=r"iteration 2: non-finite observations or rewards"):
        agent.train(checkpoint=path, checkpoint_every=1)
    assert len(saved) == 2 and path.read_bytes() == saved[-1]  # iteration 2's, untouched
    assert rl2.RL2.from_checkpoint(path).iteration == 2
    tally("numerical fault stopped the run, checkpoint kept", agent="rl2", fault=fault)
    for p in rl2.RL2.from_checkpoint(path).policy.parameters():
        assert torch.isfinite(p).all()


def test_rl2_stops_on_a_non_finite_loss(tmp_path: Path) -> None:
    cfg = rl2.RL2Config(
        env_id="metarl/BernoulliBandit-K5-v0",
        max_episode_steps=5,
        num_trials=4,
        hidden_size=8,
        num_minibatches=2,
        num_iterations=3,
    )
    agent = rl2.RL2(cfg)
    path = tmp_path / "c.pt"

    def diverge(_: dict) -> None:
        # After iteration 0: an entropy bonus of inf makes the next loss inf, a stand-in for
        # a diverged loss.
        agent.config.ent_coef = float("inf")

    with pytest.raises(NonFiniteError, match=r"iteration 1: non-finite PPO loss"):
        agent.train(checkpoint=path, checkpoint_every=1, log=diverge)
    assert load_checkpoint_file(path, agent="rl2")["iteration"] == 1  # iteration 0's, kept
    tally("numerical fault stopped the run, checkpoint kept", agent="rl2", fault="loss")


# -- MAML-TRPO ---------------------------------------------------------------------------------
def _maml_config(env_id: str = "metarl/Navigation2D-v0", **changes: object) -> object:
    from metarl.agents import maml_trpo

    settings: dict[str, object] = {"env_id": env_id, "num_iterations": 6, "meta_batch_size": 2,
                                   "episodes_per_task": 2, "hidden_sizes": (8,), "horizon": 10,
                                   "checkpoint_every": 1, "tensorboard": False}  # fmt: skip
    return maml_trpo.MAMLTRPOConfig(**{**settings, **changes})


@pytest.mark.parametrize(("fault", "quantity"), [("nan_obs", "observations"),
                                                 ("inf_reward", "rewards")])  # fmt: skip
def test_maml_stops_on_a_bad_env_value_naming_iteration_env_and_task(
    fault: str, quantity: str, tmp_path: Path
) -> None:
    from metarl.agents import maml_trpo

    # Each iteration runs two episodes per row (inner + validation): episodes 1-4 behave, so
    # iterations 0 and 1 finish and are checkpointed; the 5th episode (iteration 2) fails,
    # only for tasks whose goal has x > 0.
    env_id = register_faulty_family(fault, at_step=2, from_episode=5, min_goal_x=0.0)
    with pytest.raises(NonFiniteError) as info:
        maml_trpo.train(_maml_config(env_id), tmp_path / "run")
    text = str(info.value)
    assert text.startswith(f"iteration 2: non-finite {quantity} from {env_id}")
    assert "GoalTask(goal=(" in text and "checkpoint.pt) is kept" in text
    assert info.value.iteration == 2 and info.value.quantity == quantity
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent="maml-trpo")
    assert payload["iteration"] == 2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # the failed iteration logged nothing
    tally("numerical fault stopped the run, checkpoint kept", agent="maml-trpo", fault=fault)


@pytest.mark.parametrize(
    ("target", "quantity"),
    [
        ("valid_advantages", "MAML-TRPO surrogate loss"),
        ("conjugate_gradient", "TRPO step"),
        ("inner_advantages", "actions"),  # NaN adapted parameters: blamed on the policy
    ],
)
def test_maml_stops_on_a_non_finite_loss_or_step(
    target: str, quantity: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarl.agents import maml_trpo

    maml_trpo.train(_maml_config(num_iterations=2), tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    name = "advantages" if target.endswith("advantages") else target
    original = getattr(maml_trpo, name)
    calls = [0]

    def poisoned(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        calls[0] += 1  # advantages: odd calls are the inner step's, even the validation's
        if (target == "valid_advantages" and calls[0] % 2) or (
            target == "inner_advantages" and not calls[0] % 2
        ):
            return out
        if isinstance(out, dict):
            return {k: v * float("nan") for k, v in out.items()}
        return out * float("nan")

    monkeypatch.setattr(maml_trpo, name, poisoned)
    with pytest.raises(NonFiniteError, match=rf"iteration 2: non-finite {quantity}"):
        maml_trpo.train(_maml_config(num_iterations=4), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    tally("numerical fault stopped the run, checkpoint kept", agent="maml-trpo", fault=target)


# -- few-shot ----------------------------------------------------------------------------------
def test_fewshot_stops_on_a_diverged_loss_and_keeps_a_finite_checkpoint(tmp_path: Path) -> None:
    from metarl.fewshot.train import FewShotConfig, train

    # An absurd outer step (1e30): the first update is finite but huge, the next loss is not.
    cfg = FewShotConfig.from_preset("maml-sinusoid", num_iterations=5, meta_batch_size=2,
                                    checkpoint_every=1, tensorboard=False, device="cpu",
                                    meta_lr=1e30)  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"^iteration 1: non-finite loss") as info:
        train(cfg, tmp_path / "run", num_eval_episodes=2)
    assert info.value.iteration == 1
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent="fewshot")
    assert payload["iteration"] == 1
    check_finite("checkpoint", payload["state"])
    tally("numerical fault stopped the run, checkpoint kept", agent="fewshot", fault="loss")
