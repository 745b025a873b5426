"""The MJX backend (optional extra ``mjx``) against the native one, within stated tolerances.

MJX is another implementation of MuJoCo's physics, in float32 here (JAX's default), so its
rows cannot equal the native backend's to the bit as the native backend equals the single
env. What is checked, same tasks, seeds and actions:

* the initial observations agree to float32 rounding (``atol 1e-6``): the same per-row
  generators draw them;
* over the first ``SHORT`` = 10 env steps (50 physics steps) of HalfCheetah, observations
  agree within ``OBS_ATOL`` = 2e-3 and rewards within ``REW_ATOL`` = 1e-4 (measured: about
  1e-4 and 1e-5); a wrong control, frame skip, solver start, reward or observation would be
  off by orders of magnitude more;
* the torch face hands the same numbers over by DLPack, and the sampler runs MAML's
  episodes on it.

Compiling MJX's step takes tens of seconds to minutes on a CPU; the default suite compiles
one HalfCheetah program (for B = 4 rows, shared by every test below: both families, both
faces), the other robots are in the slow set.
Skipped when the extra is not installed, except the test of the error that says to install it.
"""

from __future__ import annotations

import os
import sys

# Compile MJX's programs with XLA's backend optimisations off in the tests: about half the
# compile time on a CPU, for slower steps that a few short rollouts do not notice. Only if
# JAX has not started in this process yet, and the caller set no flags of their own.
if "jax" not in sys.modules:
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import numpy as np
import pytest
import torch

import metarl
from metarl.envs.mujoco import mjx_batched

needs_mjx = pytest.mark.skipif(
    not mjx_batched.available(), reason='the mjx extra is not installed (pip install -e ".[mjx]")'
)

SHORT = 10
OBS_ATOL, REW_ATOL = 2e-3, 1e-4
B = 4  # 2 tasks × 2 episodes; one compiled program for every HalfCheetah test here


def _rollouts(env_id: str, steps: int, backend: str, seed: int = 7) -> tuple[np.ndarray, ...]:
    dist = metarl.task_distribution(env_id)
    tasks = list(dist.split("test")[:2])
    rows = [t for t in tasks for _ in range(B // 2)]
    batch = metarl.make_batched(env_id, B, backend=backend, max_episode_steps=steps)
    actions = np.random.default_rng(seed).uniform(
        -1, 1, (steps, B, *batch.single_action_space.shape)
    )
    obs, _ = batch.reset(rows, seeds=seed)
    all_obs, rewards, masks = [obs], [], []
    for t in range(steps):
        obs, reward, _term, _trunc, info = batch.step(actions[t])
        all_obs.append(obs)
        rewards.append(reward)
        masks.append(info["active"])
    batch.close()
    return np.stack(all_obs), np.stack(rewards), np.stack(masks), actions


def test_without_the_extra_the_backend_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes `import jax` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "jax", None)
    monkeypatch.setitem(sys.modules, "mujoco.mjx", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[mjx\]"'):
        metarl.make_batched("metarl/HalfCheetahVel-v0", 2, backend="mjx")
    from metarl.sampler import BatchedSampler

    with pytest.raises(ImportError, match="backend 'mujoco'"):
        BatchedSampler("metarl/HalfCheetahVel-v0", 1, 2, backend="mjx")
    assert not mjx_batched.available()


def test_mjx_backend_is_registered_as_approximate_for_every_mujoco_family() -> None:
    from metarl.envs.mujoco import FAMILIES

    for name in FAMILIES:
        fam = metarl.family(f"metarl/{name}-v0")
        assert "mjx" in fam.backends and "mjx" not in fam.exact_backends
        assert next(iter(fam.batched)) == "mujoco"  # auto stays native
    with pytest.raises(ValueError, match="no 'mjx' backend"):
        mjx_batched.make_mjx_torch_batched("metarl/Navigation2D-v0", 2)


@needs_mjx
@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/HalfCheetahDir-v0"])
def test_mjx_agrees_with_native_over_short_horizons(env_id: str) -> None:
    n_obs, n_rew, n_mask, _ = _rollouts(env_id, SHORT, "mujoco")
    m_obs, m_rew, m_mask, _ = _rollouts(env_id, SHORT, "mjx")
    np.testing.assert_allclose(m_obs[0], n_obs[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(m_obs, n_obs, rtol=0, atol=OBS_ATOL)
    np.testing.assert_allclose(m_rew, n_rew, rtol=0, atol=REW_ATOL)
    np.testing.assert_array_equal(m_mask, n_mask)
    assert m_obs.dtype == np.float64 and m_rew.dtype == np.float64
    # The tolerance is not vacuous: the trajectories move far more than it over these steps.
    assert np.abs(n_obs[-1] - n_obs[0]).max() > 100 * OBS_ATOL


@needs_mjx
def test_finished_rows_keep_their_state_and_steps_use_the_frame_skip() -> None:
    batch = mjx_batched.MjxBatchedEnv("HalfCheetahVel", B, max_episode_steps=SHORT)
    tasks = list(batch.task_distribution.split("test")[:B])
    obs0, _ = batch.reset(tasks, seeds=0)
    engine = batch.engine
    active = np.array([True, False, True, False])
    actions = np.ones((B, 6))
    obs, reward, _, terms = engine.jax.device_get(engine.step(actions, active))
    np.testing.assert_array_equal(np.asarray(obs)[~active], obs0[~active].astype(obs.dtype))
    assert np.abs(np.asarray(obs)[active] - obs0[active]).max() > 1e-3
    time = np.asarray(engine.data.time)
    np.testing.assert_allclose(time[active], batch.engine.dt, rtol=1e-5)
    assert (time[~active] == 0).all()
    # The reward is the family's, from the device's values.
    np.testing.assert_allclose(
        np.asarray(reward)[active],
        np.asarray(terms["reward_velocity"] + terms["reward_ctrl"])[active],
        rtol=1e-6,
    )
    np.testing.assert_allclose(np.asarray(terms["reward_ctrl"])[active], -0.05 * 6, rtol=1e-6)
    batch.close()


@needs_mjx
def test_torch_face_hands_over_the_same_numbers_by_dlpack() -> None:
    env_id = "metarl/HalfCheetahVel-v0"
    m_obs, m_rew, _, actions = _rollouts(env_id, 3, "mjx")
    env = mjx_batched.make_mjx_torch_batched(env_id, B, device="cpu", max_episode_steps=3)
    rows = [t for t in list(env.task_distribution.split("test")[:2]) for _ in range(B // 2)]
    obs, _ = env.reset(rows, seed=7)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32
    np.testing.assert_allclose(obs.numpy(), m_obs[0], rtol=0, atol=1e-6)
    # Zero copy: the tensor shares the JAX array's memory.
    jax_obs = env.engine.observe()
    assert torch.from_dlpack(jax_obs).data_ptr() == jax_obs.unsafe_buffer_pointer()
    for t in range(3):
        step_actions = torch.as_tensor(actions[t], dtype=torch.float32)
        obs, reward, _term, trunc, _info = env.step(step_actions)
        np.testing.assert_allclose(obs.numpy(), m_obs[t + 1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(reward.numpy(), m_rew[t], rtol=0, atol=1e-6)
    assert trunc.all() and not env.active.any()
    env.close()


@needs_mjx
def test_sampler_runs_maml_episodes_on_mjx_close_to_native() -> None:
    from metarl.functional import named_params
    from metarl.policies import GaussianMLPPolicy
    from metarl.sampler import make_sampler

    env_id = "metarl/HalfCheetahVel-v0"
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden_sizes=(16,))
    params = named_params(policy)
    tasks = list(metarl.task_distribution(env_id).split("test")[:2])
    kwargs = {"env_kwargs": {"max_episode_steps": SHORT}}
    native = make_sampler(env_id, 2, B // 2, sampler="native", **kwargs)  # type: ignore[arg-type]
    on_mjx = make_sampler(env_id, 2, B // 2, sampler="mjx", **kwargs)  # type: ignore[arg-type]
    assert on_mjx.on_device
    a = native.collect(policy, params, tasks, seed=3)
    b = on_mjx.collect(policy, params, tasks, seed=3)
    assert b.obs.shape == a.obs.shape and b.mask.equal(a.mask)
    # Same noise, nearly the same observations: nearly the same actions and returns.
    torch.testing.assert_close(b.actions, a.actions, rtol=0, atol=1e-2)
    torch.testing.assert_close(b.task_returns(), a.task_returns(), rtol=0, atol=1e-2)
    native.close()
    on_mjx.close()


@needs_mjx
@pytest.mark.slow
@pytest.mark.parametrize(
    ("env_id", "steps"),
    [
        # Ant falls onto the ground at its third env step; MJX's response to a contact as it
        # starts differs from native MuJoCo's (README, "MuJoCo on an accelerator"), so the
        # rows are compared up to the contact.
        ("metarl/AntVel-v0", 2),
        ("metarl/AntDir-v0", 2),
        # Per-row model fields: every row its own masses, inertias, damping and friction.
        ("metarl/HopperRandParams-v0", SHORT),
    ],
)
def test_mjx_agrees_with_native_slow_families(env_id: str, steps: int) -> None:
    n_obs, n_rew, n_mask, _ = _rollouts(env_id, steps, "mujoco")
    m_obs, m_rew, m_mask, _ = _rollouts(env_id, steps, "mjx")
    np.testing.assert_allclose(m_obs[0], n_obs[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(m_obs, n_obs, rtol=0, atol=OBS_ATOL)
    np.testing.assert_allclose(m_rew, n_rew, rtol=0, atol=REW_ATOL)
    np.testing.assert_array_equal(m_mask, n_mask)
