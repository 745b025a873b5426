"""The learner on another device ("runs on CPU or --device cuda"; the GPU figures rest on the
same paths). Every test is parametrised over the devices this machine
has: on a CUDA machine (``scripts/device_checks.sh run``, on a GPU machine) the ``cuda`` cases
run, elsewhere they are skipped; the ``cpu`` cases check the tests' own logic in CI.

What a GPU can get wrong that a CPU cannot: a tensor left on the host (a device mismatch
raises), a checkpoint that holds CUDA tensors (a CPU-only machine could not load it), and
kernels whose arithmetic differs. The first two are exercised end to end through the CLI;
the third by comparing MAML-TRPO's meta-step on the device with the CPU's on the same
episodes, in float64 (see test_maml.py's equality test for why float64)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import metarl
from metarl.agents.maml_trpo import MAMLTRPOConfig, initial_inner_lrs, meta_step, shared_baseline
from metarl.cli import main
from metarl.learning.policies import Policy, make_policy
from metarl.runs import load_checkpoint_file
from metarl.sampling.native import BatchedSampler, Episodes

NAV = "metarl/Navigation2D-v0"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
    ),
]


class _Replay:
    """A sampler that hands out episodes recorded from a CPU sampler, moved to ``device``:
    the device's meta-step then sees exactly the CPU run's episodes (its own action noise
    would come from the device's generator and differ)."""

    def __init__(self, recorded: list[Episodes], device: str) -> None:
        self.recorded, self.device = list(recorded), torch.device(device)

    def collect(
        self, policy: Policy, params: Mapping[str, Tensor], tasks: Sequence[Any], **_: Any
    ) -> Episodes:
        eps = self.recorded.pop(0)
        for p in params.values():
            assert p.device.type == self.device.type, "the parameters left the device"
        moved = {k: v.to(self.device) if isinstance(v, Tensor) else v
                 for k, v in eps._asdict().items()}  # fmt: skip
        return Episodes(**moved)


class _Recorder:
    def __init__(self, sampler: BatchedSampler) -> None:
        self.sampler, self.recorded = sampler, []  # type: ignore[var-annotated]

    def collect(self, *args: Any, **kw: Any) -> Episodes:
        eps = self.sampler.collect(*args, **kw)
        self.recorded.append(eps)
        return eps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "variant",
    [{}, {"first_order": True}, {"learn_inner_lr": True},
     {"inner_baseline": "previous-task", "outer_baseline": "previous-task"}],
    ids=["second-order", "first-order", "meta-sgd", "previous-task-baseline"],
)  # fmt: skip
def test_meta_step_on_the_device_equals_the_cpu(device: str, variant: dict[str, Any]) -> None:
    cfg = MAMLTRPOConfig(meta_batch_size=3, episodes_per_task=4, hidden_sizes=(8,),
                         horizon=15, cg_subsample=1.0, **variant)  # fmt: skip
    env = metarl.make(NAV)
    torch.manual_seed(5)
    cpu = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes).double()
    dev = make_policy(env.observation_space, env.action_space, cfg.hidden_sizes).double()
    dev.load_state_dict(cpu.state_dict())
    dev.to(device)
    rates_cpu = rates_dev = None
    if cfg.learn_inner_lr:
        rates_cpu = initial_inner_lrs(cpu, cfg.inner_lr)
        rates_dev = {k: v.clone().to(device) for k, v in rates_cpu.items()}
    base_cpu, base_dev = shared_baseline(cpu, cfg), shared_baseline(dev, cfg)
    tasks = list(metarl.task_distribution(NAV).split("train")[:3])
    recorder = _Recorder(BatchedSampler(NAV, 3, 4, env_kwargs=cfg.env_kwargs()))
    want = meta_step(cpu, recorder, tasks, 7, cfg, inner_lrs=rates_cpu,  # type: ignore[arg-type]
                     baseline=base_cpu)  # fmt: skip
    got = meta_step(dev, _Replay(recorder.recorded, device), tasks, 7, cfg,  # type: ignore[arg-type]
                    inner_lrs=rates_dev, baseline=base_dev)  # fmt: skip
    assert want["step_size"] > 0, "no step was taken: the comparison would be vacuous"
    assert got["step_size"] == want["step_size"]
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-6)
    for (k, p), q in zip(dev.named_parameters(), cpu.parameters(), strict=True):
        assert p.device.type == torch.device(device).type, k
        torch.testing.assert_close(p.cpu(), q, rtol=1e-7, atol=1e-9, msg=k)
    if rates_cpu is not None and rates_dev is not None:
        for k, v in rates_dev.items():
            torch.testing.assert_close(v.cpu(), rates_cpu[k], rtol=1e-7, atol=1e-9, msg=k)
    if base_cpu is not None and base_dev is not None:  # the carried fit stays on the device
        assert base_dev.coeffs.device.type == torch.device(device).type
        assert base_cpu.coeffs.abs().sum() > 0
        torch.testing.assert_close(base_dev.coeffs.cpu(), base_cpu.coeffs, rtol=1e-5, atol=1e-6)


def _stored_locations(path: Path) -> set[str]:
    """Where the checkpoint's tensors were when saved ("cpu", "cuda:0", …): reading with a
    ``map_location`` that notes each storage's location (mapping to the CPU would hide it)."""
    locations: set[str] = set()

    def note(storage: Any, location: str) -> Any:
        locations.add(location)
        return storage

    load_checkpoint_file(path, map_location=note)
    assert locations, "the checkpoint holds no tensors: the check would be vacuous"
    return locations


@pytest.mark.parametrize("device", DEVICES)
def test_maml_trains_evaluates_and_resumes_across_devices(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trained on ``device``: the checkpoint holds host tensors (a CPU-only machine loads
    it), evaluation runs on the device and on the CPU, and the run resumes on the CPU."""
    d = str(tmp_path / "r")
    args = ["train", "--agent", "maml-trpo", "--device", device, "--run-dir", d,
            "--num-iterations", "2", "--meta-batch-size", "3", "--episodes-per-task", "2",
            "--hidden-sizes", "8", "--horizon", "10", "--no-tensorboard"]  # fmt: skip
    assert main(args) == 0
    assert load_checkpoint_file(Path(d) / "checkpoint.pt")["iteration"] == 2
    assert _stored_locations(Path(d) / "checkpoint.pt") == {"cpu"}
    for where in (device, "cpu"):
        assert main(["evaluate", d, "--steps", "1", "--seeds", "0", "--max-tasks", "2",
                     "--episodes", "2", "--device", where]) == 0  # fmt: skip
        assert "k=1" in capsys.readouterr().out
    assert main(["train", "--resume", d, "--num-iterations", "3", "--device", "cpu"]) == 0
    assert load_checkpoint_file(Path(d) / "checkpoint.pt")["iteration"] == 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "agent_args",
    [
        ["--agent", "reptile-rl", "--preset", "quick", "--num-iterations", "1",
         "--meta-batch-size", "2", "--episodes-per-task", "2"],
        ["--agent", "rl2", "--preset", "quick", "--num-iterations", "1", "--num-trials", "4",
         "--hidden-size", "8", "--max-episode-steps", "5"],
        ["--agent", "pretrained", "--preset", "quick", "--num-iterations", "1"],
        ["--agent", "random-init", "--hidden-sizes", "8"],
        ["--agent", "varibad", "--preset", "quick", "--num-iterations", "1", "--num-trials",
         "4", "--num-minibatches", "2", "--vae-batch-num-trajs", "4"],
    ],
    ids=["reptile-rl", "rl2", "pretrained", "random-init", "varibad"],
)  # fmt: skip
def test_other_agents_train_and_evaluate_on_the_device(
    device: str, agent_args: list[str], tmp_path: Path
) -> None:
    d = str(tmp_path / "r")
    assert main(["train", *agent_args, "--device", device, "--run-dir", d,
                 "--no-tensorboard"]) == 0  # fmt: skip
    assert _stored_locations(Path(d) / "checkpoint.pt") == {"cpu"}
    steps = [] if {"rl2", "varibad"} & set(agent_args) else ["--steps", "1"]
    assert main(["evaluate", d, *steps, "--seeds", "0", "--max-tasks", "2", "--episodes", "2",
                 "--device", device]) == 0  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_fewshot_maml_trains_and_evaluates_on_the_device(device: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--num-iterations", "2", "--device", device, "--no-tensorboard"]
    assert main(["fewshot", "train", "--preset", "maml-sinusoid", "--run-dir", str(run),
                 *common, "--num-eval-episodes", "5"]) == 0  # fmt: skip
    assert main(["fewshot", "evaluate", str(run), "--num-episodes", "5", "--device",
                 device]) == 0  # fmt: skip
    assert json.loads((run / "eval.json").read_text())["num_episodes"] == 5
