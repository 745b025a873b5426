"""RL² trials as one plain Gymnasium env, for any recurrent-policy library.

:class:`RL2TrialEnv` turns a task family into a single env whose *episode is an RL² trial*:
``reset`` draws a task (from the training split by default) and the env then runs
``episodes_per_trial`` episodes of it back to back; the trial — the wrapper's episode — ends
after the last one. The observation is the flat float vector

    ``[observation, previous action, previous reward, done flag]``

(discrete observations and actions one-hot; zeros for the action and reward on a trial's
first step; the done flag is 1 on the first step of episodes 2..n, where the previous action
and reward are those that ended the episode before). A recurrent policy that resets its
memory when the env's episode ends — ``sb3_contrib.RecurrentPPO`` does, at every
``episode_start`` — therefore keeps its memory across a trial's episodes and starts each
trial blank, which is RL² (Duan et al. 2016). The trial's end is ``terminated``: the
meta-episode is over, nothing is bootstrapped past it.

``info`` carries ``episode_index`` (in the trial, from 0; SB3 reserves ``episode``),
``task`` and, on the step that ends an inner episode, ``episode_return``.

Example (needs ``pip install 'metarl[sb3]'``)::

    from sb3_contrib import RecurrentPPO
    from metarl.stepping.trial_env import RL2TrialEnv

    env = RL2TrialEnv("metarl/BernoulliBandit-K5-v0", episodes_per_trial=1,
                      max_episode_steps=10)
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=100, seed=0).learn(20_000)

References:
    Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel 2016, "RL²: Fast Reinforcement Learning
    via Slow Reinforcement Learning".
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metarl.stepping.registry import make
from metarl.tasks import TaskError
from metarl.tasks.env import resolve_task_options
from metarl.tasks.spaces import FlatEncoder

__all__ = ["RL2TrialEnv"]


def _bounds(space: spaces.Space[Any]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(space, spaces.Discrete):
        return np.zeros(int(space.n), np.float32), np.ones(int(space.n), np.float32)
    assert isinstance(space, spaces.Box)
    return space.low.astype(np.float32).reshape(-1), space.high.astype(np.float32).reshape(-1)


class RL2TrialEnv(gym.Env[np.ndarray, Any]):
    """One RL² trial per episode: ``episodes_per_trial`` episodes of one task.

    Args:
        env_id: a registered task family (``metarl envs`` lists them).
        episodes_per_trial: ``n``, episodes per trial (bandits: 1 episode of ``n`` pulls).
        split: the split tasks are drawn from, ``"train"`` (default) or ``"test"``.
        max_episode_steps: steps per inner episode; default: the family's registered horizon.
        **env_kwargs: passed to the inner env.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(
        self,
        env_id: str,
        episodes_per_trial: int = 2,
        split: str = "train",
        max_episode_steps: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if not isinstance(episodes_per_trial, int | np.integer) or episodes_per_trial < 1:
            raise ValueError(
                f"episodes_per_trial must be an integer >= 1, got {episodes_per_trial!r}"
            )
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        kwargs = dict(env_kwargs)
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        self.env = make(env_id, **kwargs)
        self.env_id = env_id
        self.episodes_per_trial = int(episodes_per_trial)
        self.split = split
        self.task_distribution = self.env.unwrapped.task_distribution  # type: ignore[attr-defined]
        self.tasks = self.task_distribution.split(split)
        self.inner_observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        # One-hot or flattened, as every agent encodes them (refuses other spaces).
        self._encode_obs = FlatEncoder(self.inner_observation_space).numpy
        self._encode_action = FlatEncoder(self.action_space).numpy
        obs_low, obs_high = _bounds(self.inner_observation_space)
        act_low, act_high = _bounds(self.action_space)
        low = np.concatenate([obs_low, act_low, [-np.inf, 0.0]]).astype(np.float32)
        high = np.concatenate([obs_high, act_high, [np.inf, 1.0]]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._zero_action = np.zeros_like(act_low)
        self._task: Any = None
        self._episode = 0
        self._episode_return = 0.0
        self._started = False

    @property
    def task(self) -> Any:
        """The task of the current trial."""
        if self._task is None:
            raise TaskError("RL2TrialEnv has no task yet: call reset() first")
        return self._task

    def _observe(self, obs: Any, prev_action: np.ndarray, reward: float, done: float) -> np.ndarray:
        return np.concatenate([self._encode_obs(obs), prev_action, [reward, done]]).astype(
            np.float32
        )

    def _inner_reset(self) -> Any:
        seed = int(self.np_random.integers(2**31))
        obs, _ = self.env.reset(seed=seed, options={"task": self._task})
        self._episode_return = 0.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a trial on a task from the split (or ``options={"task": task}``)."""
        super().reset(seed=seed)
        task = resolve_task_options(options)
        if task is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._task = self.task_distribution.validate(task)
        self._episode = 0
        self._started = True
        obs = self._inner_reset()
        info = {"episode_index": 0, "task": self._task}
        return self._observe(obs, self._zero_action, 0.0, 0.0), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._started:
            raise TaskError("RL2TrialEnv.step() called before reset(); call reset first")
        obs, reward, terminated, truncated, _ = self.env.step(action)
        reward = float(reward)
        self._episode_return += reward
        info: dict[str, Any] = {"episode_index": self._episode, "task": self._task}
        prev_action = self._encode_action(action)
        if not (terminated or truncated):
            return self._observe(obs, prev_action, reward, 0.0), reward, False, False, info
        info["episode_return"] = self._episode_return
        self._episode += 1
        if self._episode >= self.episodes_per_trial:
            self._started = False
            return self._observe(obs, prev_action, reward, 1.0), reward, True, False, info
        obs = self._inner_reset()  # the next episode of the same task; memory carries on
        return self._observe(obs, prev_action, reward, 1.0), reward, False, False, info

    def close(self) -> None:
        self.env.close()
