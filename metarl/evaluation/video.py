"""Videos of episodes: frames side by side, written as MP4 (or GIF), headless.

An env made with ``render_mode="rgb_array"`` returns each frame as an ``(H, W, 3)`` uint8
image: the MuJoCo families and Meta-World through MuJoCo's off-screen renderer (on a machine
without a display it needs EGL or OSMesa: :func:`headless_gl` picks EGL unless ``MUJOCO_GL``
says otherwise); 2D navigation, the bandits and the tabular MDPs a picture drawn with NumPy.
:func:`side_by_side` puts several episodes' frames next to each other (a policy before and
after adaptation), :func:`write_video` writes them.

MP4 needs ``imageio`` with ``imageio-ffmpeg`` (``pip install 'metarl[video]'``); without them
the video is a GIF, written by Pillow.

Example:
    >>> import numpy as np
    >>> frames = side_by_side([[np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8, 3), np.uint8)]])
    >>> len(frames), frames[0].shape
    (2, 16, 16, 3)
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metarl.runs.rundir import write_atomic

__all__ = ["can_write_mp4", "check_renders", "headless_gl", "side_by_side", "write_video"]


def headless_gl() -> str | None:
    """Choose MuJoCo's off-screen OpenGL where there is no display: ``MUJOCO_GL=egl`` unless
    it is set already (``osmesa`` is the software fallback). Returns the choice, or None
    where a display is available."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    os.environ["MUJOCO_GL"] = "egl"  # read when the first off-screen renderer is made
    return "egl"


def check_renders(env_id: str, **env_kwargs: object) -> None:
    """Raise a ValueError unless ``env_id`` renders ``rgb_array`` frames."""
    from metarl.stepping.registry import make

    env = make(env_id, **env_kwargs)
    modes = list(env.unwrapped.metadata.get("render_modes", []))
    env.close()
    if "rgb_array" not in modes:
        raise ValueError(
            f"{env_id} draws no frames (render modes: {', '.join(modes) or 'none'}); videos need "
            "an env with render_mode='rgb_array' (every metarl family has one): drop --video"
        )


def can_write_mp4() -> bool:
    """Whether imageio and its ffmpeg are installed (else videos are GIFs)."""
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _pad(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    out[: frame.shape[0], : frame.shape[1]] = frame[..., :3]
    return out


def side_by_side(
    clips: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None
) -> list[np.ndarray]:
    """One video of several clips next to each other, as long as the longest (a shorter clip
    holds its last frame), each frame padded to a multiple of 16 pixels (what video codecs
    want); ``labels`` are written above the clips."""
    clips = [list(c) for c in clips if len(c)]
    if not clips:
        raise ValueError("side_by_side needs at least one clip with frames")
    h = max(f.shape[0] for c in clips for f in c)
    w = max(f.shape[1] for c in clips for f in c)
    band = 16 if labels else 0
    total_h, total_w = -(-(h + band) // 16) * 16, -(-(w * len(clips)) // 16) * 16
    header = _labels(labels, w, band, total_w) if labels else None
    frames = []
    for t in range(max(len(c) for c in clips)):
        row = np.concatenate([_pad(c[min(t, len(c) - 1)], h, w) for c in clips], axis=1)
        frame = np.full((total_h, total_w, 3), 255, dtype=np.uint8)
        frame[band : band + h, : row.shape[1]] = row
        if header is not None:
            frame[:band] = header
        frames.append(frame)
    return frames


def _labels(labels: Sequence[str], width: int, band: int, total_w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (total_w, band), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((i * width + 4, 2), text, fill=(0, 0, 0))
    return np.asarray(img)


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """Write ``frames`` (``(H, W, 3)`` uint8) as an MP4 at ``path`` where imageio's ffmpeg is
    installed, else as a GIF (``path`` with the suffix ``.gif``); returns the path written."""
    if not frames:
        raise ValueError("write_video needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4" and can_write_mp4():
        import tempfile

        import imageio.v2 as imageio

        # ffmpeg writes a file of its own, in a fresh private directory; the result is
        # then written atomically (never through a link at path).
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "video.mp4"
            with imageio.get_writer(out, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    macro_block_size=16) as writer:  # fmt: skip
                for frame in frames:
                    writer.append_data(np.asarray(frame, dtype=np.uint8))  # type: ignore[attr-defined]
            write_atomic(path, out.read_bytes())
        return path
    from PIL import Image

    path = path.with_suffix(".gif")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)  # fmt: skip
    write_atomic(path, buf.getvalue())
    return path
