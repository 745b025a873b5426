"""Issue #7, guarantee 4: a NaN/inf in observations, rewards, losses, gradients or the update
stops the run with an error naming the iteration and the quantity, and the last good
checkpoint is never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.agents import rl2
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.runs import Run, load_checkpoint_file
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
                        num_minibatches=2, num_iterations=5, checkpoint_every=1,
                        tensorboard=False)  # fmt: skip
    run_dir = tmp_path / "run"
    saved: list[bytes] = []
    save = Run.save_checkpoint

    def save_and_remember(self: Run, *args: Any, **kwargs: Any) -> Path:
        out = save(self, *args, **kwargs)
        saved.append(out.read_bytes())
        return out

    with (
        pytest.MonkeyPatch.context() as mp,
        pytest.raises(NonFiniteError, match=r"iteration 2: non-finite observations or rewards"),
    ):
        mp.setattr(Run, "save_checkpoint", save_and_remember)
        rl2.train(cfg, run_dir)
    path = run_dir / "checkpoint.pt"
    assert len(saved) == 2 and path.read_bytes() == saved[-1]  # iteration 2's, untouched
    agent = rl2.load_agent(run_dir)
    assert agent.iterations == 2
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 2
    tally("numerical fault stopped the run, checkpoint kept", agent="rl2", fault=fault)
    for p in agent.policy.parameters():
        assert torch.isfinite(p).all()


def test_rl2_stops_on_a_non_finite_loss(tmp_path: Path) -> None:
    cfg = rl2.RL2Config(
        env_id="metarl/BernoulliBandit-K5-v0",
        max_episode_steps=5,
        num_trials=4,
        hidden_size=8,
        num_minibatches=2,
        num_iterations=3,
        checkpoint_every=1,
        tensorboard=False,
    )
    iteration = rl2.RL2.iteration

    def diverge(self: rl2.RL2, it: int) -> dict[str, float]:
        # From iteration 1 on, an entropy bonus of inf makes the loss inf, a stand-in for a
        # diverged loss.
        if it == 1:
            self.config.ent_coef = float("inf")
        return iteration(self, it)

    with (
        pytest.MonkeyPatch.context() as mp,
        pytest.raises(NonFiniteError, match=r"iteration 1: non-finite PPO loss"),
    ):
        mp.setattr(rl2.RL2, "iteration", diverge)
        rl2.train(cfg, tmp_path / "run")
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent="rl2")["iteration"] == 1
    tally("numerical fault stopped the run, checkpoint kept", agent="rl2", fault="loss")


# -- MAML-TRPO and Reptile-RL -------------------------------------------------------------------
def _rl_config(agent: str, env_id: str = "metarl/Navigation2D-v0", **changes: object) -> Any:
    from metarl.agents import get_agent

    settings: dict[str, object] = {"env_id": env_id, "num_iterations": 6, "meta_batch_size": 2,
                                   "episodes_per_task": 2, "hidden_sizes": (8,), "horizon": 10,
                                   "checkpoint_every": 1, "tensorboard": False}  # fmt: skip
    if agent == "reptile-rl":
        settings["num_adapt_steps"] = 2  # two episodes per row per iteration, as MAML's
    return get_agent(agent).CONFIG(**{**settings, **changes})


def _maml_config(env_id: str = "metarl/Navigation2D-v0", **changes: object) -> Any:
    return _rl_config("maml-trpo", env_id, **changes)


@pytest.mark.parametrize("agent", ["maml-trpo", "reptile-rl"])
@pytest.mark.parametrize(("fault", "quantity"), [("nan_obs", "observations"),
                                                 ("inf_reward", "rewards")])  # fmt: skip
def test_rl_agent_stops_on_a_bad_env_value_naming_iteration_env_and_task(
    agent: str, fault: str, quantity: str, tmp_path: Path
) -> None:
    from metarl.agents import get_agent

    # Each iteration runs two episodes per row (MAML: inner + validation; Reptile: k = 2
    # inner steps): episodes 1-4 behave, so iterations 0 and 1 finish and are checkpointed;
    # the 5th episode (iteration 2) fails, only for tasks whose goal has x > 0.
    env_id = register_faulty_family(fault, at_step=2, from_episode=5, min_goal_x=0.0)
    with pytest.raises(NonFiniteError) as info:
        get_agent(agent).train(_rl_config(agent, env_id), tmp_path / "run")
    text = str(info.value)
    assert text.startswith(f"iteration 2: non-finite {quantity} from {env_id}")
    assert "GoalTask(goal=(" in text and "checkpoint.pt) is kept" in text
    assert info.value.iteration == 2 and info.value.quantity == quantity
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent=agent)
    assert payload["iteration"] == 2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # the failed iteration logged nothing
    tally("numerical fault stopped the run, checkpoint kept", agent=agent, fault=fault)


@pytest.mark.parametrize(
    ("target", "quantity"),
    [
        ("valid_advantages", "MAML-TRPO surrogate loss"),
        ("trust_region_step", "TRPO step"),
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


@pytest.mark.parametrize(
    ("target", "steps", "quantity"),
    [
        ("adapt_policy", 1, "adapted parameters"),  # a diverged inner step
        ("reptile_update", 2, "Reptile meta-parameters"),  # a diverged outer step
        ("adapt_policy", 2, "actions"),  # NaN after the 1st of 2 steps: blamed on the policy
    ],
)
def test_reptile_stops_on_a_non_finite_inner_or_outer_step(
    target: str, steps: int, quantity: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarl.agents import reptile_rl

    cfg = _rl_config("reptile-rl", num_adapt_steps=steps)
    reptile_rl.train(cfg.replace(num_iterations=2), tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    original = getattr(reptile_rl, target)

    def poisoned(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        return {k: v * float("nan") for k, v in out.items()}

    monkeypatch.setattr(reptile_rl, target, poisoned)
    with pytest.raises(NonFiniteError, match=rf"iteration 2: non-finite {quantity}") as info:
        reptile_rl.train(cfg.replace(num_iterations=4), tmp_path / "run", resume=True)
    assert info.value.iteration == 2
    assert "checkpoint.pt) is kept" in str(info.value)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 2
    tally("numerical fault stopped the run, checkpoint kept", agent="reptile-rl", fault=target)


@pytest.mark.parametrize("agent", ["pretrained", "oracle"])
@pytest.mark.parametrize(("fault", "quantity"), [("nan_obs", "observations"),
                                                 ("inf_reward", "rewards")])  # fmt: skip
def test_sb3_baseline_stops_on_a_bad_env_value_naming_iteration_env_and_task(
    agent: str, fault: str, quantity: str, tmp_path: Path
) -> None:
    from metarl.agents import get_agent

    # Two episodes per env and PPO iteration (20 steps, horizon 10): episode 3 is iteration 1.
    env_id = register_faulty_family(fault, at_step=2, from_episode=3, min_goal_x=0.0)
    module = get_agent(agent)
    cfg = module.CONFIG.from_preset(
        "quick", env_id=env_id, num_iterations=4, n_envs=2, n_steps=20, batch_size=20,
        n_epochs=1, hidden_sizes=(8,), horizon=10, checkpoint_every=1, tensorboard=False,
    )  # fmt: skip
    with pytest.raises(NonFiniteError) as info:
        module.train(cfg, tmp_path / "run")
    text = str(info.value)
    assert text.startswith(f"iteration 1: non-finite {quantity}") and env_id in text
    assert "GoalTask(goal=(" in text and "step 2" in text
    assert "checkpoint.pt) is kept" in text and info.value.iteration == 1
    payload = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt", agent=agent)
    assert payload["iteration"] == 1
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 1
    tally("numerical fault stopped the run, checkpoint kept", agent=agent, fault=fault)


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


FEWSHOT_LEARNERS = ("maml", "fomaml", "metasgd", "reptile", "baseline", "protonet", "matching",
                    "mann", "metanet")  # fmt: skip


def _tiny_image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(4):
            d = root / split / f"{split}-class{c}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("learner", FEWSHOT_LEARNERS)
def test_every_fewshot_learner_stops_on_nan_data_and_keeps_its_checkpoint(
    learner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third meta-batch (iteration 2) arrives with NaN query inputs, as a damaged data
    file would: whatever the learner, the run stops naming iteration 2, nothing of that
    iteration is logged or saved, and the checkpoint of iteration 2 stays as it was."""
    from metarl.fewshot import train as fewshot_train
    from metarl.fewshot.data import EpisodeBatch

    if learner in ("maml", "fomaml", "metasgd", "reptile", "baseline"):
        data: dict[str, Any] = {"dataset": "sinusoid", "num_shots": 5, "num_query": 5,
                                "eval_query": 5, "inner_batch_size": 5}  # fmt: skip
    else:
        monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
        data = {"dataset": "folder", "data_path": str(_tiny_image_folder(tmp_path / "data")),
                "image_size": 16, "num_ways": 3, "num_query": 1, "eval_query": 2}  # fmt: skip
    if learner != "reptile":
        data.pop("inner_batch_size", None)  # Reptile's option alone
    cfg = fewshot_train.FewShotConfig.from_dict(
        {"learner": learner, "num_iterations": 5, "meta_batch_size": 2, "checkpoint_every": 1,
         "log_every": 1, "tensorboard": False, "device": "cpu", **data})  # fmt: skip
    make = fewshot_train.make_sampler
    saved: list[bytes] = []

    class Poisoned:
        def __init__(self, sampler: Any) -> None:
            self.sampler, self.calls = sampler, 0

        def sample(self, n: int, rng: np.random.Generator) -> EpisodeBatch:
            batch = self.sampler.sample(n, rng)
            self.calls += 1
            ckpt = tmp_path / "run" / "checkpoint.pt"
            if ckpt.exists():
                saved.append(ckpt.read_bytes())
            if self.calls != 3:
                return batch
            return EpisodeBatch(batch.support_x, batch.support_y, batch.query_x * float("nan"),
                                batch.query_y, batch.classes)  # fmt: skip

    monkeypatch.setattr(fewshot_train, "make_sampler", lambda *a, **k: Poisoned(make(*a, **k)))
    with pytest.raises(NonFiniteError, match=r"^iteration 2: non-finite ") as info:
        fewshot_train.train(cfg, tmp_path / "run", num_eval_episodes=2)
    assert info.value.iteration == 2 and "is kept" in str(info.value)
    path = tmp_path / "run" / "checkpoint.pt"
    assert path.read_bytes() == saved[-1]  # iteration 2's checkpoint, untouched
    payload = load_checkpoint_file(path, agent="fewshot")
    assert payload["iteration"] == 2
    check_finite("checkpoint", payload["state"])
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 2
    tally("numerical fault stopped the run, checkpoint kept", agent=f"fewshot-{learner}",
          fault="nan_data")  # fmt: skip
