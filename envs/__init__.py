"""metarl's task families, registered with Gymnasium under the ``metarl/`` namespace.

Importing :mod:`metarl` registers them; ``metarl envs`` lists them.

=============================  ===================================  ===========================
id                             what varies                          paper
=============================  ===================================  ===========================
metarl/Navigation2D-v0         goal position in [-0.5, 0.5]²        Finn et al. 2017
metarl/BernoulliBandit-K5-v0   5 arm probabilities ~ U[0, 1]        Duan et al. 2016 (RL²)
metarl/BernoulliBandit-K10-v0  10 arm probabilities                 Duan et al. 2016
metarl/BernoulliBandit-K50-v0  50 arm probabilities                 Duan et al. 2016
metarl/TabularMDP-S10A5-v0     10×5 transitions and rewards         Duan et al. 2016
metarl/GridNavigation-v0       goal cell of a 5×5 grid (21 goals)   Zintgraf et al. 2020
=============================  ===================================  ===========================

The MuJoCo families (``metarl/HalfCheetahVel-v0``, ``AntGoal``, ``HopperRandParams``...) are in
:mod:`metarl.envs.mujoco`; Meta-World's benchmarks (an optional extra) register on first use
of one of their ids, or on ``metarl.envs.meta_world.register()``.
"""

from __future__ import annotations

from functools import partial

from metarl.envs import bandits, gridworld, navigation, tabular_mdp, torch_envs
from metarl.stepping.registry import register_family

__all__ = ["bandits", "gridworld", "navigation", "tabular_mdp", "torch_envs"]

register_family(
    "metarl/Navigation2D-v0",
    "metarl.envs.navigation:Navigation2D",
    max_episode_steps=navigation.HORIZON,
    batched={"numpy": navigation.Navigation2DBatched},
    torch=torch_envs.Navigation2DTorch,
    paper="Finn et al. 2017, MAML, Sec. 5.3",
)
for _k in bandits.ARM_COUNTS:
    register_family(
        f"metarl/BernoulliBandit-K{_k}-v0",
        "metarl.envs.bandits:BernoulliBandit",
        max_episode_steps=bandits.HORIZON,
        kwargs={"num_arms": _k},
        batched={"numpy": partial(bandits.BernoulliBanditBatched, num_arms=_k)},
        torch=partial(torch_envs.BernoulliBanditTorch, num_arms=_k),
        paper="Duan et al. 2016, RL², Sec. 4.1",
    )
register_family(
    "metarl/TabularMDP-S10A5-v0",
    "metarl.envs.tabular_mdp:TabularMDP",
    max_episode_steps=tabular_mdp.HORIZON,
    kwargs={"num_states": 10, "num_actions": 5},
    batched={"numpy": partial(tabular_mdp.TabularMDPBatched, num_states=10, num_actions=5)},
    torch=partial(torch_envs.TabularMDPTorch, num_states=10, num_actions=5),
    paper="Duan et al. 2016, RL², Sec. 4.2",
)
register_family(
    "metarl/GridNavigation-v0",
    "metarl.envs.gridworld:GridNavigation",
    max_episode_steps=gridworld.HORIZON,
    batched={"numpy": gridworld.GridNavigationBatched},
    paper="Zintgraf et al. 2020, VariBAD, Sec. 5.1",
)

# The MuJoCo families register themselves (string entry points: models load on make).
from metarl.envs import mujoco  # noqa: E402

# Meta-World's ids register on first use (importing Meta-World takes seconds), when the
# optional extra is installed; `metarl envs` lists them.
from metarl.envs.meta_world import INSTALL as _MW_INSTALL  # noqa: E402
from metarl.stepping.registry import register_lazy  # noqa: E402

register_lazy(
    "metarl/MetaWorld-",
    "metarl.envs.meta_world:register",
    requires="metaworld",
    install=_MW_INSTALL,
)

__all__ += ["mujoco"]
