"""The Ray sampler: shards of a meta-batch give the in-process sampler's episodes bit for bit
(with and without Ray), and a dead, stuck or misplaced worker is reported, never waited on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import metarl
from metarl.learning.functional import named_params
from metarl.learning.policies import Policy, make_policy
from metarl.sampling.distributed import ShardSampler, native_backend, shard_bounds
from metarl.sampling.native import BatchedSampler, Episodes
from metarl.tasks import TaskError

HOPPER = "metarl/HopperRandParams-v0"  # falls early: rows and whole shards end at different steps


def _setup(
    env_id: str, n: int, e: int, **env_kwargs: Any
) -> tuple[BatchedSampler, Policy, list[Any]]:
    full = BatchedSampler(env_id, n, e, backend=native_backend(env_id), env_kwargs=env_kwargs)
    torch.manual_seed(0)
    policy = make_policy(full.observation_space, full.action_space, (16, 16), "relu", 1.0)
    return full, policy, list(metarl.task_distribution(env_id).split("train"))[:n]


def _per_task(policy: Policy, n: int) -> dict[str, torch.Tensor]:
    params = named_params(policy)
    return {k: torch.stack([v + 0.02 * i for i in range(n)]) for k, v in params.items()}


def _assert_same(a: Episodes, b: Episodes) -> None:
    """Same mask and rewards everywhere; same observations and actions wherever a row runs
    (masked steps are never read: the in-process sampler fills them, a finished shard not)."""
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.rewards, b.rewards)
    live = a.mask.bool()
    assert torch.equal(a.obs[live], b.obs[live])
    assert torch.equal(a.actions[live], b.actions[live])
    assert a.num_tasks == b.num_tasks


def _concat(parts: list[Episodes], key: str, steps: int) -> torch.Tensor:
    """Shards' ``(T_k, B_k, ...)`` tensors side by side, zero-padded to ``steps``."""
    out = []
    for part in parts:
        x = getattr(part, key)
        out.append(torch.cat([x, x.new_zeros(steps - x.shape[0], *x.shape[1:])]))
    return torch.cat(out, dim=1)


def test_shard_bounds_are_contiguous_even_and_never_empty() -> None:
    assert shard_bounds(5, 2) == [(0, 2), (2, 5)] or shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(40, 4) == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match=">= 1 task"):
        shard_bounds(0, 2)


@pytest.mark.parametrize(("env_id", "n", "e", "shards", "horizon"), [
    (HOPPER, 4, 1, 4, 200),  # Gaussian policy, native MuJoCo backend, shards ending early
    ("metarl/BernoulliBandit-K5-v0", 3, 2, 2, 20),  # categorical policy, NumPy backend
])  # fmt: skip
def test_shards_concatenated_are_the_in_process_sampler(
    env_id: str, n: int, e: int, shards: int, horizon: int
) -> None:
    kw = {"max_episode_steps": horizon}
    full, policy, tasks = _setup(env_id, n, e, **kw)
    bounds = shard_bounds(n, shards)
    parts = [ShardSampler(env_id, b, n, e, env_kwargs=kw) for b in bounds]
    catch_up = [0] * len(parts)
    lengths = set()
    # Seeded, then unseeded collects that continue the streams, shared and per-task params.
    for seed, per in ((3, False), (None, True), (None, False), (5, True)):
        params = _per_task(policy, n) if per else named_params(policy)
        a = full.collect(policy, params, tasks, seed=seed, per_task_params=per)
        outs = []
        for part, (lo, hi) in zip(parts, bounds, strict=True):
            p = {k: v[lo:hi] for k, v in params.items()} if per else params
            opts = {"seed": seed, "per_task_params": per, "catch_up": catch_up[len(outs)]}
            outs.append(part.collect(policy, p, tasks[lo:hi], **opts))
        steps = a.rewards.shape[0]
        catch_up = [steps - part.noise_draws for part in parts]
        lengths.update(o.rewards.shape[0] for o in outs)
        _assert_same(a, Episodes(*(_concat(outs, key, steps) for key in Episodes._fields[:4]), n))
    if env_id == HOPPER:
        assert len(lengths) > 1, "no shard ended before another: the catch-up path went untested"
    with pytest.raises(ValueError, match="NumPy backend"):
        ShardSampler(env_id, (0, 1), n, e, backend="torch")
    with pytest.raises(ValueError, match="not inside"):
        ShardSampler(env_id, (1, 1), n, e)


# -- on a local Ray instance with 2 workers --------------------------------------------------
@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the 'ray' extra is absent (.ci/run installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sampler_gives_the_in_process_episodes(ray_local: Any) -> None:
    from metarl.sampling.distributed import RaySampler

    full, policy, tasks = _setup(HOPPER, 4, 2)
    with RaySampler(HOPPER, 4, 2, num_workers=2) as sampler:
        assert sampler.num_workers == 2 and sampler.horizon == full.horizon
        for seed, per in ((1, False), (None, True), (None, True), (7, False)):
            params = _per_task(policy, 4) if per else named_params(policy)
            a = full.collect(policy, params, tasks, seed=seed, per_task_params=per)
            b = sampler.collect(policy, params, tasks, seed=seed, per_task_params=per)
            _assert_same(a, b)
            stats = sampler.last_stats
            assert stats["env_steps"] == a.num_steps() and stats["bytes_received"] > 0
        # The policy's architecture goes once; later collects send parameters only.
        assert stats["bytes_sent"] < 2 * sum(4 * v.numel() for v in params.values()) + 4096
        with pytest.raises(ValueError, match="needs 4 tasks"):
            sampler.collect(policy, named_params(policy), tasks[:3], seed=0)
        # An error inside a worker comes back as what the in-process sampler raises.
        bad = dataclasses.replace(tasks[3], body_mass=(0.0, *tasks[3].body_mass[1:]))
        with pytest.raises(TaskError, match=r"factor must be > 0.*in Ray sampler worker 1"):
            sampler.collect(policy, named_params(policy), [*tasks[:3], bad], seed=0)
        _assert_same(full.collect(policy, params, tasks, seed=9),
                     sampler.collect(policy, params, tasks, seed=9))  # fmt: skip


def test_a_dead_worker_is_replaced_or_reported_and_a_stuck_one_times_out(ray_local: Any) -> None:
    from metarl.sampling.distributed import RaySampler, SamplerWorkerError

    full, policy, tasks = _setup(HOPPER, 4, 2)
    params = named_params(policy)
    expected = full.collect(policy, params, tasks, seed=2)
    with RaySampler(HOPPER, 4, 2, num_workers=2, restarts=1) as sampler:
        sampler.collect(policy, params, tasks, seed=0)
        ray_local.kill(sampler.workers[1])  # its process is gone, as when a node is lost
        _assert_same(expected, sampler.collect(policy, params, tasks, seed=2))  # replaced
        ray_local.kill(sampler.workers[1])
        with pytest.raises(SamplerWorkerError, match=r"worker 1 \(tasks \(2, 4\)\) died"):
            sampler.collect(policy, params, tasks, seed=2)  # restarts used up
        ray_local.kill(sampler.workers[0])
        with pytest.raises(SamplerWorkerError, match="unseeded collect"):
            sampler.collect(policy, params, tasks, seed=None)
        # Too short a deadline: a TimeoutError that says what to do; the stuck workers are
        # stopped and started afresh at the next collect, as the dead ones above were.
        sampler.timeout_s = 1e-4
        with pytest.raises(TimeoutError, match="did not return within"):
            sampler.collect(policy, params, tasks, seed=2)
        assert sampler.workers == [None, None]


def test_ray_sampler_refuses_bad_settings(ray_local: Any) -> None:
    from metarl.sampling.distributed import RaySampler

    with pytest.raises(ValueError, match="--sampler torch"):
        RaySampler("metarl/Navigation2D-v0", 2, 2, backend="torch")
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        RaySampler(HOPPER, 2, 2, num_workers=0)
    with pytest.raises(TimeoutError, match="did not start within"):
        RaySampler(HOPPER, 2, 2, num_workers=2, cpus_per_worker=64, start_timeout_s=0.5)


def test_maml_trained_with_ray_equals_trained_in_process(ray_local: Any, tmp_path: Any) -> None:
    from metarl.agents.maml_trpo import MAMLTRPOConfig, load_policy, train

    base = dict(env_id=HOPPER, num_iterations=2, meta_batch_size=4, episodes_per_task=2,
                hidden_sizes=(8,), horizon=20, tensorboard=False)  # fmt: skip
    runs = {s: train(MAMLTRPOConfig(sampler=s, **base), tmp_path / s) for s in ("native", "ray")}
    _, native, _ = load_policy(runs["native"].path)
    _, ray, _ = load_policy(runs["ray"].path)
    for k in native:
        assert torch.equal(native[k], ray[k]), k
    with pytest.raises(ValueError, match="leave --backend at auto"):
        MAMLTRPOConfig(sampler="ray", backend="numpy")


def test_make_sampler_picks_each_backend() -> None:
    from metarl.sampling import make_sampler

    nav = "metarl/Navigation2D-v0"
    assert make_sampler(nav, 2, 2, sampler="native").on_device is False
    assert make_sampler(nav, 2, 2, sampler="torch").on_device is True
    native = make_sampler(HOPPER, 2, 2, sampler="native").env.batched
    assert type(native).__name__ == "MujocoBatchedEnv"
    with pytest.raises(ValueError, match="no torch backend"):
        make_sampler(HOPPER, 2, 2, sampler="torch")
    with pytest.raises(ValueError, match="must be one of"):
        make_sampler(nav, 2, 2, sampler="mpi")


def test_every_sampler_keeps_the_sampler_interface() -> None:
    from metarl.sampling import Sampler, make_sampler

    sampler = make_sampler("metarl/Navigation2D-v0", 2, 2, sampler="native")
    try:
        assert isinstance(sampler, Sampler)
    finally:
        sampler.close()
    from metarl.sampling.distributed import RaySampler

    for cls in (RaySampler,):
        assert all(hasattr(cls, name) for name in ("collect", "close")), cls


RAY_FAMILY = """
from dataclasses import dataclass

from gymnasium.envs.classic_control.pendulum import PendulumEnv

import metarl


@dataclass(frozen=True)
class PoleTask:
    length: float


dist = metarl.BoxTaskDistribution(
    "PoleLength", PoleTask, low={"length": 0.5}, high={"length": 2.0}, num_train=8, num_test=2
)
PendulumLength = metarl.make_task_env(
    PendulumEnv, dist, lambda env, task: setattr(env, "l", task.length)
)
metarl.register_family("raytest/PendulumLength-v0", PendulumLength, max_episode_steps=5)
"""


def test_ray_workers_import_the_families_of_import(ray_local: Any, tmp_path: Any) -> None:
    """A family registered by ``--import FILE.py`` in the learner is registered in the Ray
    workers too (they import the file before building envs), and its episodes are the
    in-process sampler's."""
    import gymnasium as gym

    from metarl.sampling.distributed import RaySampler
    from metarl.stepping import registry

    env_id = "raytest/PendulumLength-v0"
    path = tmp_path / "ray_families_for_workers.py"
    path.write_text(RAY_FAMILY)
    registry.import_plugin(str(path))  # what --import does in the learner's process
    try:
        full, policy, tasks = _setup(env_id, 2, 2)
        with RaySampler(env_id, 2, 2, num_workers=2) as sampler:
            assert sampler.imports == [str(path.resolve())]
            params = named_params(policy)
            _assert_same(full.collect(policy, params, tasks, seed=3),
                         sampler.collect(policy, params, tasks, seed=3))  # fmt: skip
    finally:
        registry._FAMILIES.pop(env_id, None)
        gym.registry.pop(env_id, None)
