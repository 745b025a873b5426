"""Watching a policy adapt: drawn 2D navigation, MuJoCo off-screen, videos of the right length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import metarl
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

    policy = metarl.load(run)
    task = policy.tasks("test")[0]
    lengths = [len(render_episode(policy.adapt(task, steps=k, episodes=2), {})) for k in (0, 1)]
    assert _num_frames(files[0]) == max(lengths)


def test_video_of_a_family_that_draws_nothing_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "rl2"
    assert main(["train", "--agent", "rl2", "--env-id", "metarl/BernoulliBandit-K5-v0",
                 "--num-iterations", "1", "--num-trials", "4", "--max-episode-steps", "5",
                 "--hidden-size", "4", "--run-dir", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run), "--video", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "draws no frames" in err and "drop --video" in err
    assert not (run / "eval_test.json").exists()  # refused before the evaluation
