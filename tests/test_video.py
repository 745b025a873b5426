"""Watching a policy adapt: drawn 2D navigation, MuJoCo off-screen, videos of the right length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import metarl
import metarl.agents
from metarl.cli import main
from metarl.envs.navigation import RENDER_SIZE, GoalTask
from metarl.evaluation.video import can_write_mp4, side_by_side, write_video


def _num_frames(path: Path) -> int:
    if path.suffix == ".gif":
        from PIL import Image

        with Image.open(path) as img:
            return int(img.n_frames)
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return int(reader.count_frames())


def test_navigation_draws_goal_and_path() -> None:
    env = metarl.make("metarl/Navigation2D-v0", render_mode="rgb_array")
    env.reset(seed=0, options={"task": GoalTask(goal=(0.3, -0.2))})
    first = env.render()
    for _ in range(5):
        env.step(np.array([0.1, 0.1], dtype=np.float32))
    later = env.render()
    env.close()
    assert first.shape == (RENDER_SIZE, RENDER_SIZE, 3) and first.dtype == np.uint8
    assert (first[..., 1] > first[..., 0] + 80).any()  # the green goal
    assert (first != later).any()  # the agent moved and left a path
    plain = metarl.make("metarl/Navigation2D-v0")
    plain.reset(seed=0)
    assert plain.render() is None  # no render mode: nothing drawn, nothing kept
    plain.close()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_side_by_side_video_has_the_longest_clip_length(tmp_path: Path, suffix: str) -> None:
    if suffix == ".mp4" and not can_write_mp4():
        pytest.skip("MP4 needs pip install 'metarl[video]'")
    short = [np.zeros((30, 40, 3), np.uint8)] * 3
    long = [np.full((30, 40, 3), i * 20, np.uint8) for i in range(7)]
    frames = side_by_side([short, long], ["before", "after 1 step"])
    assert len(frames) == 7 and frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0
    path = write_video(tmp_path / f"v{suffix}", frames, fps=10)
    assert path.suffix == suffix and _num_frames(path) == 7


def test_mujoco_renders_off_screen_into_a_video(tmp_path: Path) -> None:
    """HalfCheetahDir renders headless (EGL unless MUJOCO_GL says otherwise)."""
    from metarl.evaluation.video import headless_gl

    headless_gl()
    env = metarl.make("metarl/HalfCheetahDir-v0", render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0, options={"task": env.unwrapped.task_distribution.split("test")[0]})
    try:
        frames = [env.render()]
    except Exception as e:  # no EGL/OSMesa library on this machine
        pytest.skip(f"no off-screen OpenGL here: {type(e).__name__}: {e}")
    for _ in range(3):
        env.step(env.action_space.sample())
        frames.append(env.render())
    env.close()
    assert frames[0].shape == (48, 64, 3) and frames[0].std() > 0
    path = write_video(tmp_path / "cheetah.mp4", side_by_side([frames, frames[:2]]))
    assert _num_frames(path) == 4


def test_evaluate_video_before_and_after(tmp_path: Path, capsys) -> None:
    run = tmp_path / "maml"
    assert main(["train", "--agent", "maml-trpo", "--preset", "quick", "--num-iterations", "1",
                 "--meta-batch-size", "2", "--episodes-per-task", "2", "--hidden-sizes", "8",
                 "--run-dir", str(run)]) == 0  # fmt: skip
    out = tmp_path / "videos"
    assert main(["evaluate", str(run), "--steps", "1", "--seeds", "0", "--max-tasks", "1",
                 "--episodes", "2", "--video", str(out)]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [f.stem for f in files] == ["task0"] and str(files[0]) in shown
    # As long as the longer of the two episodes (before, after 1 step), first frame included.
    from metarl.agents.trained import render_episode

    policy = metarl.agents.load(run)
    task = policy.tasks("test")[0]
    lengths = [len(render_episode(policy.adapt(task, steps=k, episodes=2), {})) for k in (0, 1)]
    assert _num_frames(files[0]) == max(lengths)


_NO_DRAW = """
import metarl
from metarl.envs.bandits import BernoulliBandit


class Blind(BernoulliBandit):
    metadata = {"render_modes": []}


metarl.register_family("tests/BlindBandit-v0", Blind, max_episode_steps=5)
"""


def test_video_of_a_family_that_draws_nothing_is_refused(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "blind.py"
    plugin.write_text(_NO_DRAW)
    run = tmp_path / "rl2"
    assert main(["train", "--import", str(plugin), "--agent", "rl2", "--env-id",
                 "tests/BlindBandit-v0", "--num-iterations", "1", "--num-trials", "4",
                 "--hidden-size", "4", "--run-dir", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", "--import", str(plugin), str(run), "--video",
                 str(tmp_path / "v")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "draws no frames" in err and "drop --video" in err
    assert not (run / "eval_test.json").exists()  # refused before the evaluation


def test_rl2_bandit_video_before_and_after(tmp_path: Path, capsys) -> None:
    """A drawn family through `metarl evaluate --video`, with RL²'s memory carried step by
    step: one frame per pull and the first."""
    run = tmp_path / "rl2"
    assert main(["train", "--agent", "rl2", "--env-id", "metarl/BernoulliBandit-K5-v0",
                 "--num-iterations", "1", "--num-trials", "4", "--max-episode-steps", "5",
                 "--hidden-size", "4", "--run-dir", str(run)]) == 0  # fmt: skip
    out = tmp_path / "videos"
    assert main(["evaluate", str(run), "--steps", "2", "--seeds", "0", "--max-tasks", "1",
                 "--episodes", "2", "--video", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    (video,) = sorted(out.iterdir())
    assert _num_frames(video) == 6


#: Every family metarl registers, and one Meta-World benchmark where the extra is installed.
FAMILIES = [
    *(
        i
        for i in metarl.stepping.registry.family_ids()  # not the tests' own families
        if i.startswith("metarl/") and not i.startswith("metarl/MetaWorld-")
    ),
    "metarl/MetaWorld-ML1-reach-v3-v0",  # one of Meta-World's (registered on first use)
]
_DRAWN = ("Navigation2D", "GridNavigation", "BernoulliBandit", "TabularMDP")


@pytest.mark.parametrize("env_id", FAMILIES)
def test_every_family_renders_headless_into_a_video(env_id: str, tmp_path: Path) -> None:
    """A few frames of every family, off-screen (MuJoCo, Meta-World) or drawn (the rest),
    written as a video with one frame per step and the first."""
    from metarl.evaluation.video import check_renders, headless_gl

    headless_gl()
    drawn = any(name in env_id for name in _DRAWN)
    kwargs = {} if drawn else {"width": 64, "height": 48}
    if "MetaWorld" in env_id:
        pytest.importorskip("metaworld")
    check_renders(env_id)  # declares rgb_array
    env = metarl.make(env_id, render_mode="rgb_array", **kwargs)
    task = env.unwrapped.task_distribution.split("test")[0]
    env.reset(seed=0, options={"task": task})
    try:
        frames = [env.render()]
    except Exception as e:
        if drawn:
            raise
        env.close()
        pytest.skip(f"no off-screen OpenGL here: {type(e).__name__}: {e}")
    env.action_space.seed(0)
    for _ in range(4):
        env.step(env.action_space.sample())
        frames.append(env.render())
    env.close()
    shape = frames[0].shape
    assert all(f.shape == shape and f.dtype == np.uint8 for f in frames)
    assert len(shape) == 3 and shape[2] == 3 and frames[-1].std() > 0
    if drawn:  # the picture follows the episode
        assert (frames[0] != frames[-1]).any()
    path = write_video(tmp_path / "clip.mp4", side_by_side([frames]), fps=10)
    assert path.suffix == (".mp4" if can_write_mp4() else ".gif")
    assert _num_frames(path) == 5


def test_bandit_drawing_shows_pulls_and_the_last_pull() -> None:
    from metarl.envs.bandits import RENDER_HEIGHT, RENDER_WIDTH, BanditTask

    env = metarl.make("metarl/BernoulliBandit-K5-v0", render_mode="rgb_array")
    env.reset(seed=0, options={"task": BanditTask(probs=(0.0, 0.0, 1.0, 0.0, 0.0))})
    blank = env.render()
    for _ in range(3):
        env.step(2)  # always pays
    img = env.render()
    env.close()
    assert img.shape == (RENDER_HEIGHT, RENDER_WIDTH, 3)
    green = (img[..., 1] > 150) & (img[..., 0] < 100) & (img[..., 2] < 100)
    pitch = (RENDER_WIDTH - 8) / 5
    cols = np.where(green[30:].any(axis=0))[0]  # below the top bar: the arm's column, marker
    assert cols.size and cols.min() >= 4 + 2 * pitch and cols.max() < 4 + 3 * pitch
    assert not (blank[30:] == (40, 170, 60)).all(axis=-1).any()  # nothing paid yet
    env.step(0)  # never pays: its marker is red, the arm's column gets a blue bar
    img = env.render()
    red = (img[..., 0] > 180) & (img[..., 1] < 100)
    assert np.where(red.any(axis=0))[0].max() < 4 + pitch


def test_mdp_drawing_follows_the_state() -> None:
    env = metarl.make("metarl/TabularMDP-S10A5-v0", render_mode="rgb_array")
    env.reset(seed=0)
    start = env.render()
    states = []
    frames = []
    for _ in range(5):
        obs, *_ = env.step(0)
        states.append(obs)
        frames.append(env.render())
    env.close()
    blue = lambda img: (img[..., 2] > 180) & (img[..., 0] < 80)  # noqa: E731
    assert blue(start).any()
    # The blue disc sits where the state is: the same state, the same place.
    where = {
        s: np.argwhere(blue(f)).mean(axis=0).round() for s, f in zip(states, frames, strict=True)
    }
    for s, f in zip(states, frames, strict=True):
        np.testing.assert_array_equal(np.argwhere(blue(f)).mean(axis=0).round(), where[s])
    assert len({tuple(v) for v in where.values()}) == len(where)
