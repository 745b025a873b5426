"""The pure-torch (on-device) backends equal the NumPy backends on the CPU device: same
tasks, same actions and — fed the same noise — the same observations and rewards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metarl
from metarl.stepping.batched import BatchedNoiseStream

TORCH_IDS = [i for i in metarl.family_ids() if metarl.family(i).torch is not None]


def test_every_fast_family_has_a_torch_backend() -> None:
    for env_id in (
        "metarl/Navigation2D-v0",
        "metarl/BernoulliBandit-K5-v0",
        "metarl/TabularMDP-S10A5-v0",
    ):
        assert env_id in TORCH_IDS


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="no CUDA GPU"))],
)  # fmt: skip
@pytest.mark.parametrize("env_id", TORCH_IDS)
def test_torch_backend_equals_numpy_backend(env_id: str, device: str) -> None:
    """On the CPU device to round-off; on a GPU (scripts/device_checks.sh) to float32's
    precision, whose kernels (sqrt, exp) may differ from the host's in the last bits."""
    dist = metarl.task_distribution(env_id)
    tasks = [t for t in dist.split("test")[:4] for _ in range(3)]
    seeds = list(range(100, 112))
    ref = metarl.make_batched(env_id, len(tasks), backend="numpy")
    dev = metarl.make_torch_batched(env_id, len(tasks), device=device)
    tol = 1e-12 if device == "cpu" else 1e-5
    # Feed the torch env the NumPy backend's noise: one stream per row, seeded alike.
    width = getattr(getattr(ref, "_noise", None), "width", 0)
    stream = BatchedNoiseStream(width) if width else None
    if stream is not None:
        stream.reset(seeds)
        dev.uniform = lambda *shape: torch.from_numpy(  # type: ignore[method-assign]
            stream.next(dev.active.cpu().numpy()).copy()
        ).to(device)
    obs_ref, _ = ref.reset(tasks, seeds)
    obs_dev, _ = dev.reset(tasks)
    np.testing.assert_array_equal(obs_dev.cpu().numpy(), obs_ref)
    space = ref.single_action_space
    space.seed(0)
    while ref.active.any():
        actions = np.stack([space.sample() for _ in range(len(tasks))])
        o_r, r_r, te_r, tr_r, i_r = ref.step(actions)
        o_d, r_d, te_d, tr_d, i_d = dev.step(torch.as_tensor(actions, device=device))
        np.testing.assert_array_equal(i_d["active"].cpu().numpy(), i_r["active"])
        np.testing.assert_allclose(o_d.cpu().numpy(), o_r, rtol=0, atol=1e-6)
        np.testing.assert_allclose(r_d.cpu().numpy(), r_r, rtol=tol, atol=tol)
        np.testing.assert_array_equal(te_d.cpu().numpy(), te_r)
        np.testing.assert_array_equal(tr_d.cpu().numpy(), tr_r)
    assert not bool(dev.active.any())


@pytest.mark.parametrize("env_id", TORCH_IDS)
def test_torch_backend_is_seeded(env_id: str) -> None:
    dist = metarl.task_distribution(env_id)
    tasks = list(dist.split("test")[:8])

    def run(seed: int) -> torch.Tensor:
        env = metarl.make_torch_batched(env_id, len(tasks))
        env.reset(tasks, seed=seed)
        out = []
        gen = torch.Generator().manual_seed(0)
        while bool(env.active.any()):
            if env.action_shape:
                a = torch.rand((len(tasks), *env.action_shape), generator=gen) * 0.2 - 0.1
            else:
                n = getattr(env, "num_arms", getattr(env, "num_actions", 2))
                a = torch.randint(0, n, (len(tasks),), generator=gen)
            out.append(env.step(a)[1])
        return torch.stack(out)

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)


def test_torch_backend_errors() -> None:
    env = metarl.make_torch_batched("metarl/Navigation2D-v0", 2)
    with pytest.raises(metarl.TaskError, match="before reset"):
        env.step(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="one task per row"):
        env.reset([])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            metarl.make_torch_batched("metarl/Navigation2D-v0", 2, device="cuda")
    with pytest.raises(KeyError, match="Registered"):
        metarl.make_torch_batched("metarl/Nope-v0", 2)
