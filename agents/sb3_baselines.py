"""What the three baselines of Finn et al. 2017 share: a task family as one SB3 env, PPO runs
through :mod:`metarl.runs`, SB3 policies as our params dicts, and the fine-tuning evaluation.

Finn, Abbeel, Levine 2017 ("Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", Sec. 5.2-5.3, Fig. 4-5) compare MAML with

* **pretrained** (:mod:`metarl.agents.pretrained`) — one policy trained on all training
  tasks at once, then fine-tuned on each held-out task with the same inner step;
* **random-init** (:mod:`metarl.agents.random_init`) — the inner step from a randomly
  initialised policy;
* **oracle** (:mod:`metarl.agents.oracle`) — a policy that receives the task parameters as
  input.

Here the two trained ones are Stable-Baselines3 PPO (Schulman et al. 2017, "Proximal Policy
Optimization Algorithms") on a :class:`MultiTaskEnv`: every episode a task drawn from the
family's **training split only**, so no held-out task is ever seen before evaluation. The
SB3 policy's actor is an MLP of exactly our :func:`metarl.learning.policies.make_policy`
architecture
(hidden widths, ReLU or tanh, a state-independent log-std), so its weights *are* a params
dict of our policy (:func:`sb3_policy_params`, the same action distribution bit for bit) and
the evaluation is MAML's protocol, :func:`metarl.evaluation.evaluate_policy_adaptation`:
return on the held-out tasks after 0..K inner steps of vanilla policy gradient with the
per-task linear baseline (Finn et al. 2017, Sec. 3.2; rates 0.1 then 0.05, 40 episodes per
step on 2D navigation).

One training iteration is one PPO update: ``n_envs × n_steps`` env steps, then ``n_epochs``
passes of minibatch updates. Every iteration starts from freshly reset envs whose seeds are a
function of (seed, iteration); an episode still running at the end of an iteration is cut
there (truncated, its value bootstrapped, as any SB3 time limit). That is what makes a run
resumable exactly from plain-data checkpoints (policy, Adam state, step counter and the RNG
states; no SB3 zip, no pickle): a resumed run on the CPU equals an uninterrupted one.

Stable-Baselines3 is imported inside the functions that use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from metarl.adaptation.policy_gradient import vpg_adapt_fn
from metarl.evaluation import (
    AdaptationCurve,
    EvalSettings,
    evaluate_run_policy,
)
from metarl.learning.functional import Params, named_params
from metarl.learning.policies import Policy, make_policy
from metarl.numerics import NonFiniteError, check_finite
from metarl.runs import Run
from metarl.runs.config import ConfigError, EnvOptions, PolicyOptions, RunConfig, option
from metarl.runs.training import Trainer, iteration_range, train_loop
from metarl.sampling.native import Episodes
from metarl.stepping.batched import EnvError
from metarl.stepping.registry import make
from metarl.tasks import BoxTaskDistribution, TaskDistribution, TaskError, task_to_dict
from metarl.tasks.env import resolve_task_options

if TYPE_CHECKING:
    from metarl.agents.trained import TrainedPolicy

__all__ = [
    "PPO_BASELINE_PRESETS",
    "FineTuneConfig",
    "MultiTaskEnv",
    "PPOBaselineConfig",
    "evaluate_finetuning",
    "finetune_step_fn",
    "finetuned_policy",
    "make_model",
    "oracle_task_params",
    "sb3_policy_kwargs",
    "sb3_policy_params",
    "task_features",
    "train_ppo",
]


# -- the task parameters as an observation (the oracle's input) ----------------------------
def task_features(dist: TaskDistribution[Any], task: Any) -> np.ndarray:
    """The task's parameters as a flat float32 vector, fields in declaration order.

    For a :class:`~metarl.tasks.BoxTaskDistribution` every value is scaled to ``[-1, 1]``
    from its interval (log-scaled fields in log space), so PPO sees inputs of unit range;
    other distributions give their numbers as they are.

    Raises:
        TaskError: a field is not a number or a sequence of numbers.
    """
    values = task_to_dict(dist.validate(task))
    out: list[float] = []
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        flat = np.asarray(items, dtype=object).reshape(-1)
        for v in flat:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TaskError(
                    f"{dist.name}: task field {name!r} holds {v!r}; the oracle needs tasks "
                    "whose parameters are numbers (or sequences of numbers)"
                )
            x = float(v)
            if isinstance(dist, BoxTaskDistribution):
                lo, hi = dist.low[name], dist.high[name]
                if name in dist.log_scale:
                    x, lo, hi = math.log(x), math.log(lo), math.log(hi)
                x = 2.0 * (x - lo) / (hi - lo) - 1.0 if hi > lo else 0.0
            out.append(x)
    return np.asarray(out, dtype=np.float32)


def _encode_obs(space: spaces.Space[Any], obs: Any) -> np.ndarray:
    from metarl.tasks.spaces import FlatEncoder

    return FlatEncoder(space).numpy(obs)


class MultiTaskEnv(gym.Env[Any, Any]):
    """A task family as one plain Gymnasium env: each episode runs a task drawn uniformly
    from one split (the training split by default) with the env's seeded generator.

    With ``with_task=True`` (the oracle) the observation is the flat vector
    ``[observation (one-hot if discrete), task_features(task)]``; otherwise it is the
    family's own observation, unchanged.

    ``info["task"]`` is the episode's task. ``reset(options={"task": task})`` runs a given
    task instead (it must belong to the family).

    Args:
        env_id: a registered task family (``metarl envs``).
        split: ``"train"`` (default) or ``"test"``.
        with_task: append the task parameters to the observation.
        max_episode_steps: the horizon; default: the family's registered one.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(
        self,
        env_id: str,
        split: str = "train",
        with_task: bool = False,
        max_episode_steps: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        kwargs = dict(env_kwargs)
        if max_episode_steps:
            kwargs["max_episode_steps"] = max_episode_steps
        self.env = make(env_id, **kwargs)
        self.env_id, self.split, self.with_task = env_id, split, with_task
        self.task_distribution: TaskDistribution[Any] = self.env.unwrapped.task_distribution  # type: ignore[attr-defined]
        self.tasks = self.task_distribution.split(split)
        self.action_space = self.env.action_space
        inner = self.env.observation_space
        self.inner_observation_space = inner
        if with_task:
            z = task_features(self.task_distribution, self.tasks[0])
            bound = 1.0 if isinstance(self.task_distribution, BoxTaskDistribution) else np.inf
            if isinstance(inner, spaces.Discrete):
                lo, hi = np.zeros(int(inner.n)), np.ones(int(inner.n))
            elif isinstance(inner, spaces.Box):
                lo, hi = inner.low.reshape(-1), inner.high.reshape(-1)
            else:
                raise TypeError(f"{env_id}: the oracle takes Box or Discrete observations")
            low = np.concatenate([lo, np.full(z.shape, -bound)]).astype(np.float32)
            high = np.concatenate([hi, np.full(z.shape, bound)]).astype(np.float32)
            self.observation_space = spaces.Box(low, high, dtype=np.float32)
        else:
            self.observation_space = inner
        self._task: Any = None
        self._z = np.zeros(0, dtype=np.float32)
        self._steps = 0

    @property
    def task(self) -> Any:
        if self._task is None:
            raise TaskError("MultiTaskEnv has no task yet: call reset() first")
        return self._task

    def _observe(self, obs: Any) -> Any:
        if not self.with_task:
            return obs
        return np.concatenate([_encode_obs(self.inner_observation_space, obs), self._z])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        task = resolve_task_options(options)
        if task is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._task = self.task_distribution.validate(task)
        if self.with_task:
            self._z = task_features(self.task_distribution, self._task)
        try:
            obs, info = self.env.reset(seed=int(self.np_random.integers(2**31)),
                                       options={"task": task})  # fmt: skip
        except _CALLERS:
            raise
        except Exception as e:
            raise self._error("reset", e) from e
        self._steps = 0
        return self._observe(obs), {**info, "task": task}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._steps += 1
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except _CALLERS:
            raise
        except Exception as e:
            raise self._error(f"step {self._steps}", e) from e
        bad_obs = not np.isfinite(np.asarray(obs, dtype=np.float64)).all()
        if bad_obs or not math.isfinite(float(reward)):
            quantity = "observations" if bad_obs else "rewards"
            raise NonFiniteError(
                f"non-finite {quantity} from {self.env_id} at step {self._steps} of task "
                f"{self._task!r}; check the env with `metarl check-env {self.env_id}`",
                quantity,
            )
        info = {**info, "task": self._task}
        return self._observe(obs), float(reward), terminated, truncated, info

    def _error(self, what: str, e: Exception) -> EnvError:
        return EnvError(
            f"{self.env_id}: {what} of task {self._task!r} raised {type(e).__name__}: {e}; the "
            "env's own traceback is chained to this error",
            self.env_id,
            [self._task],
        )

    def close(self) -> None:
        self.env.close()


#: Errors of the caller (a bad action or task) or already named: not wrapped in an EnvError.
_CALLERS = (EnvError, NonFiniteError, TaskError, ValueError, TypeError)


# -- configs -------------------------------------------------------------------------------
@dataclass
class FineTuneConfig(PolicyOptions, EnvOptions, RunConfig):
    """The policy's architecture and MAML's inner step, shared by every baseline."""

    gamma: float = option(0.99, "discount γ", low=0.0, high=1.0)
    inner_lr: float = option(
        0.1, "fine-tuning step size α at evaluation (MAML's inner rate; halved after the first "
        "step, as MAML's evaluation)", low=0.0, low_open=True,
    )  # fmt: skip
    inner_gae_lambda: float = option(
        1.0, "GAE λ of the fine-tuning step (1.0: returns − linear baseline, as MAML)",
        low=0.0, high=1.0,
    )  # fmt: skip
    backend: str = option(
        "auto",
        "who steps the envs of PPO's training and of the fine-tuning evaluation: auto "
        "(in-process: SB3's DummyVecEnv, the family's fastest batched backend), or subprocess "
        "(worker processes with a timeout: an env that crashes or hangs becomes an error "
        "naming the env, its task and the iteration; the same results as auto)",
        choices=("auto", "subprocess"),
        may_change_on_resume=True,
    )


# The presets of both PPO-trained baselines (pretrained, oracle).
PPO_BASELINE_PRESETS: dict[str, dict[str, Any]] = {
    # The policy of Finn et al. 2017 (100-100 ReLU), 400k env steps.
    "nav2d": {"env_id": "metarl/Navigation2D-v0", "num_iterations": 200},
    # The locomotion families: the same policy, 800k env steps (8 envs × 200 steps × 500).
    **{
        name: {"env_id": env_id, "horizon": 200, "num_iterations": 500, "n_steps": 200}
        for name, env_id in (
            ("halfcheetah-vel", "metarl/HalfCheetahVel-v0"),
            ("halfcheetah-dir", "metarl/HalfCheetahDir-v0"),
            ("ant-vel", "metarl/AntVel-v0"),
            ("ant-dir", "metarl/AntDir-v0"),
        )
    },
    # Well under a minute on one CPU thread (the benchmark runs it for several seeds).
    "quick": {
        "env_id": "metarl/Navigation2D-v0",
        "num_iterations": 12,
        "hidden_sizes": (64, 64),
        "nonlinearity": "tanh",
        "n_envs": 8,
        "n_steps": 200,
        "batch_size": 100,
        "n_epochs": 5,
        "learning_rate": 1e-3,
        "checkpoint_every": 4,
    },
}


@dataclass
class PPOBaselineConfig(FineTuneConfig):
    """Multi-task PPO (Stable-Baselines3) on the training tasks; SB3's defaults otherwise."""

    num_iterations: int = option(
        100, "PPO iterations, each n_envs × n_steps env steps then n_epochs of updates", low=1,
        may_change_on_resume=True,
    )  # fmt: skip
    n_envs: int = option(8, "parallel envs (each draws a training task per episode)", low=1)
    n_steps: int = option(
        256, "env steps per env and iteration; at least the horizon, else no episode ends "
        "inside an iteration (the envs are reset at every one) and train_return is NaN", low=1,
    )  # fmt: skip
    batch_size: int = option(64, "PPO minibatch size; must divide n_envs × n_steps", low=1)
    n_epochs: int = option(10, "passes over each iteration's data", low=1)
    learning_rate: float = option(3e-4, "Adam step size", low=0.0, low_open=True)
    gae_lambda: float = option(0.95, "GAE λ of PPO's advantages", low=0.0, high=1.0)
    clip_range: float = option(0.2, "PPO's clipping ε", low=0.0, low_open=True)
    ent_coef: float = option(0.0, "entropy bonus coefficient", low=0.0)
    vf_coef: float = option(0.5, "value-loss coefficient", low=0.0)
    max_grad_norm: float = option(0.5, "gradient-norm clip", low=0.0, low_open=True)
    vf_hidden_sizes: tuple[int, ...] = option(
        (64, 64), "value-function MLP hidden widths (a separate network)", low=1
    )

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def validate(self) -> None:
        super().validate()
        rollout = self.n_envs * self.n_steps
        if rollout < 2 or rollout % self.batch_size:
            raise ConfigError(
                f"{type(self).__name__}: n_envs × n_steps = {rollout} must be at least 2 and a "
                f"multiple of batch_size {self.batch_size}; change --n-steps or --batch-size"
            )


# -- SB3 policy -> our params ------------------------------------------------------------------
def sb3_policy_kwargs(cfg: PPOBaselineConfig) -> dict[str, Any]:
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[cfg.nonlinearity]
    return {
        "net_arch": {"pi": list(cfg.hidden_sizes), "vf": list(cfg.vf_hidden_sizes)},
        "activation_fn": act,
        "log_std_init": math.log(cfg.init_std),
    }


def sb3_policy_params(sb3_policy: Any, policy: Policy) -> Params:
    """The actor of an SB3 ``ActorCriticPolicy`` as a params dict of our ``policy``.

    SB3's actor is ``action_net(policy_net(flatten(obs)))`` — Linear and activation layers,
    Discrete observations one-hot — with ``log_std`` for Box actions (a diagonal Gaussian)
    or logits for Discrete ones, exactly the distribution of our
    :class:`~metarl.learning.policies.GaussianMLPPolicy` /
    :class:`~metarl.learning.policies.CategoricalMLPPolicy`
    (ours clamps ``log σ`` below at −6, far below anything PPO reaches). The Linear layers are
    copied in order; the shapes are checked against ``policy``.

    Raises:
        TypeError: the SB3 policy is not an MLP of ``policy``'s architecture.
    """
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if not isinstance(sb3_policy.pi_features_extractor, FlattenExtractor):
        raise TypeError(
            "only SB3 policies with the default FlattenExtractor map onto metarl's MLP policy; "
            f"got {type(sb3_policy.pi_features_extractor).__name__}"
        )
    layers = [m for m in sb3_policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    layers.append(sb3_policy.action_net)
    ours = named_params(policy)
    linear = [k[: -len(".weight")] for k in ours if k.endswith(".weight")]
    if len(linear) != len(layers):
        raise TypeError(
            f"the SB3 actor has {len(layers)} linear layers, the metarl policy {len(linear)}; "
            "build both with the same hidden_sizes"
        )
    out: Params = {}
    for name, layer in zip(linear, layers, strict=True):
        out[f"{name}.weight"] = layer.weight.detach().clone()
        out[f"{name}.bias"] = layer.bias.detach().clone()
    if "log_std" in ours:
        out["log_std"] = sb3_policy.log_std.detach().clone()
    for k, v in ours.items():
        if k not in out or out[k].shape != v.shape:
            got = None if k not in out else tuple(out[k].shape)
            raise TypeError(
                f"SB3 policy does not match the metarl policy at {k}: expected shape "
                f"{tuple(v.shape)}, got {got}"
            )
    return {k: out[k].to(v.device) for k, v in ours.items()}


# -- PPO training through metarl.runs ------------------------------------------------------
def _iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] % (2**31 - 4096))


def _our_policy(cfg: FineTuneConfig, env: Any) -> Policy:
    """Our policy over ``env``'s spaces (a Gymnasium env or an SB3 VecEnv)."""
    return make_policy(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std
    )


def make_model(cfg: PPOBaselineConfig, with_task: bool, device: torch.device | str) -> Any:
    """SB3 PPO on ``cfg.n_envs`` :class:`MultiTaskEnv` copies (training split), seeded by
    ``cfg.seed``, with an actor of our policy's architecture. The envs step in-process
    (SB3's ``DummyVecEnv``) or, with ``backend="subprocess"``, in ``cfg.num_workers`` worker
    processes with a timeout (:class:`metarl.stepping.sb3_vec_env.WorkerVecEnv`; the same
    results)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

    env_id, env_kwargs = cfg.env_id, cfg.env_kwargs()

    def make_env() -> gym.Env[Any, Any]:
        env = MultiTaskEnv(env_id, "train", with_task, **env_kwargs)
        return Monitor(env, allow_early_resets=True)  # episode returns in info["episode"]

    venv: VecEnv
    if cfg.backend == "subprocess":
        from metarl.stepping.sb3_vec_env import WorkerVecEnv

        venv = WorkerVecEnv([make_env] * cfg.n_envs, env_id, num_workers=cfg.num_workers,
                            timeout=cfg.worker_timeout)  # fmt: skip
    else:
        venv = DummyVecEnv([make_env for _ in range(cfg.n_envs)])
    model = PPO(
        "MlpPolicy",
        venv,
        learning_rate=cfg.learning_rate,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        policy_kwargs=sb3_policy_kwargs(cfg),
        stats_window_size=1_000_000,  # emptied every iteration: all of its episodes
        seed=cfg.seed,
        device=device,
        verbose=0,
    )
    return model


class _PPOTrainer(Trainer):
    """SB3 PPO on the training tasks as :func:`metarl.runs.training.train_loop` drives it."""

    def __init__(self, cfg: PPOBaselineConfig, device: torch.device, with_task: bool) -> None:
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import VecEnv

        self.cfg = cfg
        self.model = make_model(cfg, with_task, device)
        venv = self.model.get_env()
        assert isinstance(venv, VecEnv)
        self.venv = venv
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # read, then cleared
        self.policy = _our_policy(cfg, venv).to(device)
        self.params: Params = {}
        self.total_steps = 0  # env steps over all iterations (SB3's counts one learn())

    def header(self, start: int, total: int) -> str:
        return (f"PPO {iteration_range(start, total)}, each of "
                f"{self.cfg.n_envs * self.cfg.n_steps} env steps")  # fmt: skip

    def iteration(self, it: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        # Fresh envs at every iteration, seeded by (seed, iteration): see the module doc.
        # Through SB3's public API: ``learn(reset_num_timesteps=True)`` resets the vec env
        # (which takes the seeds given to ``seed()``), marks every env as starting an episode
        # and empties the episode-info buffer; it also restarts SB3's step counter, so the
        # total is kept here. (SB3's progress fraction restarts too: it only drives
        # schedules, and these configs' rates and clip range are constants.)
        self.venv.seed(_iteration_seed(cfg.seed, it))
        # An env's NaN/inf (MultiTaskEnv.step) or the update's stops the run here.
        model.learn(cfg.n_envs * cfg.n_steps, reset_num_timesteps=True, log_interval=None)
        params = self.params = sb3_policy_params(model.policy, self.policy)
        check_finite("PPO policy parameters", params,
                     hint="lower --learning-rate, or check the env's rewards")  # fmt: skip
        losses = {k.split("/", 1)[1]: float(v) for k, v in model.logger.name_to_value.items()
                  if k.startswith("train/")}  # fmt: skip
        model.logger.dump()  # clears the values (no outputs configured)
        episodes = [float(e["r"]) for e in (model.ep_info_buffer or [])]
        self.total_steps += int(model.num_timesteps)
        total = time.perf_counter() - t0
        return {
            "train_return": float(np.mean(episodes)) if episodes else math.nan,
            "episodes": float(len(episodes)),
            "env_steps": float(cfg.n_envs * cfg.n_steps),  # this iteration's, as MAML's
            "env_steps_total": float(self.total_steps),  # what metarl benchmark reads
            "env_steps_per_s": cfg.n_envs * cfg.n_steps / total,
            "iteration_s": total,
            "log_std": float(params["log_std"].mean()) if "log_std" in params else 0.0,
            **{k: v for k, v in losses.items() if k not in ("std", "n_updates")},
        }

    def progress(self, stats: Mapping[str, float]) -> str:
        return f"training-task return {stats['train_return']:.2f}, {self.total_steps} env steps"

    def state(self) -> dict[str, Any]:
        policy = self.model.policy
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "sb3_policy": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
            "sb3_optimizer": policy.optimizer.state_dict(),
            "num_timesteps": self.total_steps,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.model.policy.load_state_dict(state["sb3_policy"])
        self.model.policy.optimizer.load_state_dict(state["sb3_optimizer"])
        self.total_steps = int(state["num_timesteps"])

    def close(self) -> None:
        self.venv.close()


def train_ppo(
    cfg: PPOBaselineConfig,
    run_dir: str | Path,
    agent: str,
    *,
    with_task: bool,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Train one policy with SB3 PPO on the training tasks (with the task parameters in the
    observation when ``with_task``) through :func:`metarl.runs.training.train_loop`; the run
    directory gets config.json, metrics.csv and checkpoints holding ``params`` (our
    policy's), the SB3 policy and Adam state."""

    def make(cfg: Any, device: torch.device, resume: bool) -> Trainer:
        return _PPOTrainer(cfg, device, with_task)

    return train_loop(cfg, run_dir, agent, make, resume=resume, overwrite=overwrite, log=log)


# -- evaluation ---------------------------------------------------------------------------
def finetune_step_fn(
    policy: Policy, cfg: FineTuneConfig
) -> Callable[[Mapping[str, Tensor], Episodes, float, bool], Params]:
    """MAML's inner step (Finn et al. 2017, Sec. 3.2): vanilla policy gradient with the
    per-task linear baseline, as the evaluation protocol wants it."""
    return vpg_adapt_fn(policy, cfg.gamma, cfg.inner_gae_lambda)


def finetuned_policy(
    agent: str, loaded: tuple[Policy, Params, FineTuneConfig], device: str
) -> TrainedPolicy:
    """A baseline's policy for :func:`metarl.agents.load` (``loaded``: its ``load_policy``):
    fine-tuned by MAML's inner step at the evaluation's rates, ``α`` then ``α/2``."""
    from metarl.agents.trained import GradientTrainedPolicy

    policy, params, cfg = loaded
    return GradientTrainedPolicy(agent, cfg, policy, params, finetune_step_fn(policy, cfg),
                                 (cfg.inner_lr, cfg.inner_lr / 2), device)  # fmt: skip


def evaluate_finetuning(
    agent: str,
    run_dir: str | Path,
    load: Callable[..., tuple[Policy, Params, FineTuneConfig]],
    settings: EvalSettings,
    note: str,
) -> tuple[AdaptationCurve, Path, Path]:
    """MAML's held-out protocol from a baseline's trained (or initial) policy, ``load(run_dir,
    device, loaded)``: return after 0..K fine-tuning steps (rates ``α`` then ``α/2`` as
    MAML-TRPO's evaluation, or ``settings.lrs``); writes ``eval_<split>.json``/``.png``.
    ``note`` says where the policy comes from, in the curve's metadata."""
    loaded: dict[str, Any] = {}  # the evaluated checkpoint's iteration
    policy, params, cfg = load(run_dir, settings.device, loaded)
    rates = "inner_lr then inner_lr/2" if settings.lrs is None else " then ".join(
        map(str, settings.lrs))  # fmt: skip
    meta = {**loaded, "adaptation": f"{note}: MAML's inner step (VPG + linear baseline), "
            f"rates {rates}"}  # fmt: skip
    return evaluate_run_policy(run_dir, agent, policy, params, cfg, finetune_step_fn(policy, cfg),
                               settings, default_lrs=(cfg.inner_lr, cfg.inner_lr / 2),
                               meta=meta)  # fmt: skip


def oracle_task_params(params: Mapping[str, Tensor], policy: Policy, features: Tensor) -> Params:
    """The task-conditioned policy ``π(a | [s, z])`` as one params set per task of the plain
    policy ``π(a | s)``: the first layer ``W [s; z] + b = W_s s + (b + W_z z)``, so task ``i``
    gets ``W_s`` and the bias ``b + W_z z_i`` (exact; the rest is shared).

    Args:
        params: the oracle's params (first layer over ``[s, z]``).
        policy: our policy over the family's own observations (``s`` only).
        features: ``(N, dim z)`` task features (:func:`task_features`).

    Returns:
        Params with a leading task dimension ``N``, for ``per_task_params=True``.
    """
    ours = named_params(policy)
    first = next(k for k in ours if k.endswith(".weight"))
    bias = first[: -len(".weight")] + ".bias"
    obs_dim = ours[first].shape[1]
    w = params[first]
    if w.shape[1] != obs_dim + features.shape[1]:
        raise ValueError(
            f"the oracle's first layer takes {w.shape[1]} inputs, the env's observation "
            f"{obs_dim} and the task features {features.shape[1]}; was the run made on "
            "another task family?"
        )
    n = features.shape[0]
    features = features.to(w)
    out = {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}
    out[first] = w[:, :obs_dim].detach().unsqueeze(0).expand(n, -1, -1).clone()
    out[bias] = (params[bias] + features @ w[:, obs_dim:].T).detach()
    return out
