"""MuJoCo task families (see :mod:`metarl.envs.mujoco.locomotion`), registered on import.

Registration is cheap: entry points are strings, models load when an env is made.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from metarl.stepping.batched import BatchedTaskEnv
from metarl.stepping.registry import register_family
from metarl.stepping.torch_batched import TorchBatchedTaskEnv

__all__ = ["FAMILIES", "HORIZON"]

HORIZON = 200  # the papers' episode length; a registration argument (max_episode_steps)

#: name -> (what the paper is)
FAMILIES = {
    "HalfCheetahVel": "Finn et al. 2017, MAML, Sec. 5.3",
    "HalfCheetahDir": "Finn et al. 2017, MAML, Sec. 5.3",
    "AntVel": "Finn et al. 2017, MAML, Sec. 5.3",
    "AntDir": "Finn et al. 2017, MAML, Sec. 5.3",
    "AntDir2D": "Rakelly et al. 2019, PEARL",
    "AntGoal": "Rakelly et al. 2019, PEARL",
    "HopperRandParams": "Rothfuss et al. 2019, ProMP",
    "Walker2dRandParams": "Rothfuss et al. 2019, ProMP",
    "HalfCheetahRandParams": "Rothfuss et al. 2019, ProMP; Rakelly et al. 2019",
}


def _batched(name: str, num_envs: int, **kwargs: Any) -> BatchedTaskEnv:
    # Imported here: the backend loads MuJoCo models, registration must stay cheap.
    from metarl.envs.mujoco.batched import MujocoBatchedEnv

    return MujocoBatchedEnv(name, num_envs, **kwargs)


def _mjx_batched(name: str, num_envs: int, **kwargs: Any) -> BatchedTaskEnv:
    # Imported here: JAX is an optional extra; without it this raises what to install.
    from metarl.envs.mujoco.mjx_batched import MjxBatchedEnv

    return MjxBatchedEnv(name, num_envs, **kwargs)


def _mjx_on_device(name: str, num_envs: int, **kwargs: Any) -> TorchBatchedTaskEnv:
    from metarl.envs.mujoco.mjx_batched import MjxTorchBatchedEnv, import_mjx

    import_mjx()  # the install hint first, before any model loads
    return MjxTorchBatchedEnv(name, num_envs, **kwargs)


for _name, _paper in FAMILIES.items():
    register_family(
        f"metarl/{_name}-v0",
        f"metarl.envs.mujoco.locomotion:{_name}",
        max_episode_steps=HORIZON,
        batched={"mujoco": partial(_batched, _name), "mjx": partial(_mjx_batched, _name)},
        on_device={"mjx": partial(_mjx_on_device, _name)},
        paper=_paper,
        approximate=("mjx",),
    )
