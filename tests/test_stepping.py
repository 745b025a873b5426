"""The stepping seam (metarl.stepping) and the flat space encodings (metarl.tasks.spaces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import metarl
from metarl.stepping import TensorBatchedEnv
from metarl.tasks.spaces import FlatEncoder

NAV = "metarl/Navigation2D-v0"


@pytest.mark.parametrize("backend", ["auto", "torch", "numpy", "generic"])
def test_every_backend_steps_the_same_rows_as_tensors(backend: str) -> None:
    """Host and on-device backends alike return tensors (rewards float32, flags bool), and
    the same seeded rows give the same episode on every backend (2D navigation's dynamics
    have no noise, so the torch env matches the NumPy one)."""
    tasks = metarl.task_distribution(NAV).split("train")[:3]
    env = TensorBatchedEnv(NAV, 3, backend=backend, env_kwargs={"max_episode_steps": 4})
    ref = TensorBatchedEnv(NAV, 3, backend="numpy", env_kwargs={"max_episode_steps": 4})
    assert env.on_device == (backend in ("auto", "torch")) and env.horizon == 4
    assert env.observation_space == ref.observation_space
    try:
        obs, ref_obs = env.reset(tasks, seed=0), ref.reset(tasks, seed=0)
        torch.testing.assert_close(obs.float(), ref_obs.float())
        action = torch.full((3, 2), 0.05)
        for _ in range(4):
            got, want = env.step(action), ref.step(action)
            assert got[1].dtype == torch.float32 and got[4]["active"].dtype == torch.bool
            for a, b in zip(got[:4], want[:4], strict=True):
                torch.testing.assert_close(a.to(b.dtype), b)
        assert not env.running()
    finally:
        env.close()
        ref.close()


def test_backend_choice_is_checked_and_numpy_means_the_host_env() -> None:
    with pytest.raises(ValueError, match="has no torch backend"):
        TensorBatchedEnv("metarl/HalfCheetahVel-v0", 2, backend="torch")
    # A MuJoCo family registers no "numpy" backend: its host env is the native rollout.
    env = TensorBatchedEnv("metarl/HalfCheetahVel-v0", 2, backend="numpy")
    try:
        assert (
            not env.on_device
            and type(env.batched).__name__
            == type(metarl.make_batched("metarl/HalfCheetahVel-v0", 2)).__name__
        )
    finally:
        env.close()


def test_flat_encoder_one_hot_and_flatten_in_torch_and_numpy() -> None:
    enc = FlatEncoder(spaces.Discrete(3, start=1))
    assert enc.size == 3
    assert enc(torch.tensor([[1, 3]])).tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]
    np.testing.assert_array_equal(enc.numpy(2), np.array([0, 1, 0], np.float32))
    box = FlatEncoder(spaces.Box(-1.0, 1.0, (2, 3)))
    x = torch.arange(48, dtype=torch.float64).reshape(4, 2, 2, 3)
    out = box(x)
    assert out.shape == (4, 2, 6) and out.dtype == torch.float32
    np.testing.assert_array_equal(box.numpy(x[0, 0].numpy()), out[0, 0].numpy())
    with pytest.raises(TypeError, match="flat encoding"):
        FlatEncoder(spaces.MultiBinary(2))
