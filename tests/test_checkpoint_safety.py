"""Issue #7, guarantee 2: checkpoints cannot run code, and damaged or foreign ones are refused
with a clear error — for every checkpoint loader on main (the run directory's, few-shot's,
``load_policy`` of MAML-TRPO, Reptile-RL and the baselines and RL²'s ``load_agent``, what
``metarl evaluate`` reads, and RL²'s ``init_from``).

Each loader meets: crafted malicious pickles whose loading would create a marker file (the
marker must never appear), truncated copies, bit-flipped copies (each must be refused or load
exactly the original — never load something else), a checkpoint of another agent or task
family, and a checkpoint of another format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from metarl import runs
from metarl.agents import rl2
from metarl.runs import (
    CheckpointError,
    Run,
    RunMismatchError,
    load_checkpoint_file,
    save_checkpoint_file,
)
from metarl.runs.config import RunConfig, option
from metarl.testing import bit_flips, malicious_checkpoints, tally, truncations

BANDIT = "metarl/BernoulliBandit-K5-v0"
#: How many damaged copies each loader meets (benchmarks/reliability.md reports the totals).
NUM_TRUNCATIONS = 12
NUM_BIT_FLIPS = 60


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class ToyConfig(RunConfig):
    lr: float = option(0.1, "step size", low=0.0, low_open=True)


def _rl2_config(**changes: Any) -> rl2.RL2Config:
    cfg = rl2.RL2Config(env_id=BANDIT, max_episode_steps=5, num_trials=4, hidden_size=8,
                        num_minibatches=2, num_iterations=1)  # fmt: skip
    return dataclasses.replace(cfg, **changes)


@dataclass
class Loader:
    """One way metarl reads a checkpoint: ``good(dir)`` writes a genuine one and returns its
    path; ``load(path)`` reads a file the way the agent does."""

    agent: str
    task_family: str
    good: Callable[[Path], Path]
    load: Callable[[Path], Any]
    state_of: Callable[[Any], dict[str, torch.Tensor]]


def _run_good(d: Path) -> Path:
    run = Run.create(d / "good-run", "toy", ToyConfig(tensorboard=False))
    return run.save_checkpoint(3, {"params": {"w": torch.arange(6.0).reshape(2, 3)}})


def _run_load(path: Path) -> dict[str, Any]:
    d = path.parent / f"run-for-{path.stem}"
    if not d.exists():
        Run.create(d, "toy", ToyConfig(tensorboard=False))
    shutil.copyfile(path, d / "checkpoint.pt")
    return Run.resume(d, "toy", ToyConfig()).load_checkpoint()


def _rl2_init_from(path: Path) -> rl2.RL2:
    """RL² started from the policy of the checkpoint at ``path`` (``init_from``)."""
    return rl2.RL2(_rl2_config(init_from=str(path)))


def _fewshot_config() -> Any:
    from metarl.fewshot.train import FewShotConfig

    return FewShotConfig.from_preset(
        "maml-sinusoid",
        num_iterations=1,
        meta_batch_size=2,
        checkpoint_every=1,
        tensorboard=False,
        device="cpu",
    )


def _fewshot_good(d: Path) -> Path:
    from metarl.fewshot.train import train

    train(_fewshot_config(), d / "fewshot-good", num_eval_episodes=2)
    return d / "fewshot-good" / "checkpoint.pt"


def _fewshot_load(path: Path) -> Any:
    from metarl.fewshot.train import load_run

    d = path.parent / f"fewshot-for-{path.stem}"
    if not d.exists():
        Run.create(d, "fewshot", _fewshot_config())
    shutil.copyfile(path, d / "checkpoint.pt")
    return load_run(d, device="cpu")[1]


NAV = "metarl/Navigation2D-v0"
_GOOD_RUNS: dict[str, bytes] = {}


def _rl_config(agent: str) -> Any:
    from metarl.agents import get_agent

    cls = get_agent(agent).CONFIG
    if agent in ("pretrained", "oracle"):
        return cls.from_preset(
            "quick", num_iterations=1, n_envs=2, n_steps=10, batch_size=10, n_epochs=1,
            hidden_sizes=(4,), horizon=5, tensorboard=False,
        )  # fmt: skip
    if agent == "random-init":
        return cls(env_id=NAV, hidden_sizes=(4,), horizon=5, tensorboard=False)
    if agent == "rl2":
        return cls(env_id=BANDIT, max_episode_steps=5, num_trials=4, hidden_size=8,
                   num_minibatches=2, num_iterations=1, tensorboard=False)  # fmt: skip
    return cls(env_id=NAV, num_iterations=1, meta_batch_size=2, episodes_per_task=2,
               hidden_sizes=(4,), horizon=5, tensorboard=False)  # fmt: skip


def _agent_good(agent: str) -> Callable[[Path], Path]:
    """A genuine checkpoint of a one-iteration run of ``agent`` (trained once per session)."""

    def good(d: Path) -> Path:
        from metarl.agents import get_agent

        if agent not in _GOOD_RUNS:
            run = get_agent(agent).train(_rl_config(agent), d / f"{agent}-good")
            _GOOD_RUNS[agent] = run.checkpoint_path.read_bytes()
        path = d / f"{agent}-good.pt"
        path.write_bytes(_GOOD_RUNS[agent])
        return path

    return good


def _agent_load(agent: str) -> Callable[[Path], Any]:
    """``load_policy`` (what ``metarl evaluate`` uses) of a run whose checkpoint is ``path``."""

    def load(path: Path) -> Any:
        from metarl.agents import get_agent

        d = path.parent / f"{agent}-run-for-{path.stem}"
        if not d.exists():
            Run.create(d, agent, _rl_config(agent))
        shutil.copyfile(path, d / "checkpoint.pt")
        if agent == "rl2":
            return dict(get_agent(agent).load_agent(d).policy.state_dict())
        return get_agent(agent).load_policy(d)[1]

    return load


LOADERS = {
    "runs.load_checkpoint_file": Loader(
        "toy", BANDIT, _run_good, lambda p: load_checkpoint_file(p), lambda x: x["state"]
    ),
    "Run.load_checkpoint": Loader(
        "toy", RunConfig().env_id, _run_good, _run_load, lambda x: x["state"]["params"]
    ),
    "fewshot.load_run": Loader(
        "fewshot", "sinusoid", _fewshot_good, _fewshot_load, lambda m: dict(m.state_dict())
    ),
    **{
        f"{agent}.load_policy": Loader(agent, NAV, _agent_good(agent), _agent_load(agent), dict)
        for agent in ("maml-trpo", "reptile-rl", "pretrained", "oracle", "random-init")
    },
    "rl2.load_agent": Loader("rl2", BANDIT, _agent_good("rl2"), _agent_load("rl2"), dict),
    "rl2 init_from": Loader(
        "rl2", BANDIT, _agent_good("rl2"), _rl2_init_from, lambda a: dict(a.policy.state_dict())
    ),
}


def _flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    return out


@pytest.mark.parametrize("name", list(LOADERS))
def test_malicious_pickles_are_refused_and_nothing_runs(name: str, tmp_path: Path) -> None:
    loader = LOADERS[name]
    marker = tmp_path / "PWNED"
    files = malicious_checkpoints(
        tmp_path / "evil", marker, agent=loader.agent, task_family=loader.task_family
    )
    assert len(files) == 4
    for kind, path in files.items():
        with pytest.raises(CheckpointError, match="refusing to load") as info:
            loader.load(path)
        assert path.stem in str(info.value), kind
        assert "weights_only` set to `False" not in str(info.value)  # no advice to disarm
        assert not marker.exists(), f"{kind}: loading ran code"
        tally("malicious checkpoint refused", loader=name, kind=kind)


def test_the_crafted_files_do_run_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The control: without weights_only the same files execute, so the test above can fail."""
    files = malicious_checkpoints(tmp_path / "evil", tmp_path / "PWNED")
    pickle.loads(files["plain-pickle"].read_bytes())  # the point of the test
    assert (tmp_path / "PWNED").exists()
    (tmp_path / "PWNED").unlink()
    torch.load(files["torch-zip"], weights_only=False)
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", list(LOADERS))
def test_truncated_and_empty_files_give_a_clear_error(name: str, tmp_path: Path) -> None:
    loader = LOADERS[name]
    data = loader.good(tmp_path).read_bytes()
    cuts = truncations(data, NUM_TRUNCATIONS)
    assert len(cuts) == NUM_TRUNCATIONS and cuts[0] == b""
    for i, cut in enumerate(cuts):
        path = tmp_path / f"cut{i}.pt"
        path.write_bytes(cut)
        with pytest.raises(CheckpointError, match=r"empty|truncated or corrupted|corrupted"):
            loader.load(path)
        tally("truncated checkpoint refused", loader=name)


@pytest.mark.parametrize("name", list(LOADERS))
def test_bit_flips_are_refused_or_harmless(name: str, tmp_path: Path) -> None:
    """A flipped bit either gives a clear error or lands where it changes nothing (zip
    padding, the version string); a checkpoint never loads with different values."""
    loader = LOADERS[name]
    good = loader.good(tmp_path)
    reference = _flatten(loader.state_of(loader.load(good)))
    refused = 0
    for i, (pos, data) in enumerate(bit_flips(good.read_bytes(), NUM_BIT_FLIPS, seed=7)):
        path = tmp_path / f"flip{i}.pt"
        path.write_bytes(data)
        try:
            got = _flatten(loader.state_of(loader.load(path)))
        except (CheckpointError, RunMismatchError):
            refused += 1
            tally("bit-flipped checkpoint refused", loader=name)
            continue
        tally("bit-flipped checkpoint loaded identical", loader=name)
        assert got.keys() == reference.keys(), f"flip at byte {pos}"
        for k in reference:
            assert torch.equal(got[k], reference[k]), f"flip at byte {pos} changed {k}"
    assert refused > NUM_BIT_FLIPS // 2  # most bytes are the payload, guarded by its digest


def test_a_payload_bit_flip_is_caught_by_the_digest(tmp_path: Path) -> None:
    path = save_checkpoint_file(
        tmp_path / "c.pt", {"w": torch.ones(1000)}, agent="toy", task_family=None
    )
    data = bytearray(path.read_bytes())
    # The float 1.0 is 00 00 80 3f; flip a bit of the first one found in the payload.
    at = bytes(data).index(bytes.fromhex("0000803f0000803f"))
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint_file(path)


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_checkpoint_of_another_agent_is_refused(name: str, tmp_path: Path) -> None:
    loader = LOADERS[name]
    other = "rl2" if loader.agent != "rl2" else "toy"
    foreign = LOADERS["rl2.load_agent" if other == "rl2" else "Run.load_checkpoint"].good(tmp_path)
    if name == "fewshot.load_run":  # a file named like the run's own, but of RL²
        foreign = shutil.copyfile(foreign, tmp_path / "checkpoint-of-rl2.pt")
    if name == "runs.load_checkpoint_file":  # the bare reader checks when asked to
        with pytest.raises(RunMismatchError, match=f"agent '{other}', not 'toy'"):
            load_checkpoint_file(foreign, agent="toy")
        return
    with pytest.raises(RunMismatchError, match=f"checkpoint of agent '{other}'"):
        loader.load(foreign)


def test_a_checkpoint_of_another_task_family_is_refused(tmp_path: Path) -> None:
    path = LOADERS["rl2.load_agent"].good(tmp_path)  # a run on the 5-armed bandits
    other = _rl2_config(env_id="metarl/BernoulliBandit-K10-v0", tensorboard=False)
    Run.create(tmp_path / "k10", "rl2", other)
    shutil.copyfile(path, tmp_path / "k10" / "checkpoint.pt")
    with pytest.raises(RunMismatchError, match="written for 'metarl/BernoulliBandit-K5-v0'"):
        rl2.load_agent(tmp_path / "k10")
    # A run directory's checkpoint copied into a run on another family.
    a = Run.create(tmp_path / "a", "toy", ToyConfig(tensorboard=False))
    a.save_checkpoint(1, {"w": torch.ones(1)})
    b = Run.create(tmp_path / "b", "toy", ToyConfig(env_id=BANDIT, tensorboard=False))
    shutil.copyfile(a.checkpoint_path, b.checkpoint_path)
    with pytest.raises(RunMismatchError, match="not 'metarl/BernoulliBandit-K5-v0'"):
        Run.resume(tmp_path / "b", "toy", ToyConfig(env_id=BANDIT)).load_checkpoint()


def _envelope(path: Path, **changes: Any) -> None:
    """Rewrite a genuine checkpoint's envelope with ``changes`` (keeping a valid digest)."""
    env = torch.load(path, weights_only=True)
    env.update(changes)
    if "payload" in changes and isinstance(changes["payload"], torch.Tensor):
        env["sha256"] = hashlib.sha256(changes["payload"].numpy().tobytes()).hexdigest()
    torch.save(env, path)


@pytest.mark.parametrize("name", list(LOADERS))
def test_another_checkpoint_format_is_refused(name: str, tmp_path: Path) -> None:
    loader = LOADERS[name]
    newer = loader.good(tmp_path)
    _envelope(newer, format=runs.CHECKPOINT_FORMAT + 1, metarl_version="9.9.9")
    with pytest.raises(CheckpointError, match=r"format 2 \(written by metarl 9\.9\.9\).*upgrade"):
        loader.load(newer)
    older = tmp_path / "older.pt"  # the layout before the envelope
    torch.save({"iteration": 1, "state": {}, "rng": {}}, older)
    with pytest.raises(CheckpointError, match="earlier metarl"):
        loader.load(older)
    other = tmp_path / "other.pt"  # some other program's torch file
    torch.save({"model": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a metarl checkpoint"):
        loader.load(other)


def test_missing_file_and_corrupted_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint_file(tmp_path / "nope.pt")
    run = Run.create(tmp_path / "r", "toy", ToyConfig(tensorboard=False))
    run.save_checkpoint(1, {"w": torch.ones(1)})
    (run.path / "config.json").write_text('{"agent": "toy", "conf')
    with pytest.raises(ValueError, match=r"config\.json is corrupted"):
        Run.resume(run.path, "toy", ToyConfig())


def test_saving_refuses_what_could_not_be_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint_file(path, {"w": torch.ones(2)}, agent="toy")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"opt\.fn \(a builtin_function_or_method\)"):
        save_checkpoint_file(path, {"opt": {"fn": len}}, agent="toy")
    with pytest.raises(CheckpointError, match=r"non-finite values in w"):
        save_checkpoint_file(path, {"w": torch.tensor([float("inf")])}, agent="toy")
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_rl2_refuses_to_checkpoint_nan_weights_and_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    cfg = _rl2_config(tensorboard=False)
    run = rl2.train(cfg, tmp_path / "run")
    before = run.checkpoint_path.read_bytes()
    agent = rl2.load_agent(run.path)
    with torch.no_grad():
        next(iter(agent.policy.parameters()))[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in policy\."):
        Run.resume(run.path, "rl2", cfg).save_checkpoint(1, agent.state(), agent.generators())
    assert run.checkpoint_path.read_bytes() == before
    rl2.load_agent(run.path)  # still loads


def test_checkpoint_bytes_round_trip_exactly(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 4), "step": 7, "hist": [1.5, None, "x"], "t": (1, 2)}
    path = save_checkpoint_file(tmp_path / "c.pt", state, agent="toy", task_family="fam")
    got = load_checkpoint_file(path, agent="toy", task_family="fam")
    assert torch.equal(got["w"], state["w"]) and got["hist"] == [1.5, None, "x"]
    assert got["step"] == 7 and got["t"] == (1, 2)
    # The envelope itself is a plain torch file: inspectable with weights_only=True.
    env = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    assert env["agent"] == "toy" and env["format"] == runs.CHECKPOINT_FORMAT
