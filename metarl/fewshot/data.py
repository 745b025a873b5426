"""Few-shot data: sinusoid regression tasks, Omniglot, any image-folder dataset, episodes.

An *episode* (a task) is a support set to adapt on and a query set to score on. Every
sampler returns a meta-batch of episodes as an :class:`EpisodeBatch` of stacked tensors,
drawn from an injected :class:`numpy.random.Generator` (same seed ⇒ same episodes).

Omniglot (Lake et al. 2015) follows the standard few-shot protocol (Vinyals et al. 2016;
Finn et al. 2017): the 1623 characters of both halves of the release are pooled, 1200 go
to meta-training and 423 to meta-testing, images are resized to 28×28, and every rotation by
a multiple of 90° is a class of its own (so 4800 training and 1692 test classes).

The exact character list of Vinyals et al.'s split was never published and cannot be read
offline, so the split here is a fixed, versioned permutation: the 1623 character paths,
sorted, shuffled by a generator seeded with the SHA-256 digest of
``"omniglot-vinyals-split/v1"``; the first 1200 are the training characters. It is the same on
every machine and never reshuffled per run (``OMNIGLOT_SPLIT_VERSION`` names it).

Lake et al.'s 20 one-shot runs (``all_runs.zip``) are drawings of ``images_evaluation``
characters, and that 1200-character split pools both halves: with split ``v1`` 141 of the
runs' 200 characters, with the very drawings of the runs, are among its training characters
(found by matching the runs' pixels against the release). A clean score on the runs therefore
needs Lake et al.'s own protocol: train on ``images_background`` only (``split="background"``;
``--omniglot-split lake`` on the command line).

Example:
    >>> import numpy as np
    >>> tasks = SinusoidTasks(num_shots=10)
    >>> batch = tasks.sample(4, np.random.default_rng(0))
    >>> batch.support_x.shape, batch.query_x.shape
    (torch.Size([4, 10, 1]), torch.Size([4, 10, 1]))
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "OMNIGLOT_ENV",
    "OMNIGLOT_SPLIT_VERSION",
    "EpisodeBatch",
    "EpisodeSampler",
    "ImageClasses",
    "SinusoidTasks",
    "default_omniglot_path",
    "image_folder",
    "lake_one_shot_runs",
    "omniglot",
    "omniglot_split",
]

OMNIGLOT_SPLIT_VERSION = "v1"

#: The environment variable that points metarl at an Omniglot copy (the default of
#: ``--data-path``); without it, ``../shared/data/omniglot`` relative to the working directory.
OMNIGLOT_ENV = "METARL_OMNIGLOT"


def default_omniglot_path() -> str:
    """``$METARL_OMNIGLOT`` if set, else ``../shared/data/omniglot``: where Omniglot is read
    when no ``--data-path`` is given."""
    return os.environ.get(OMNIGLOT_ENV) or "../shared/data/omniglot"


OMNIGLOT_NUM_TRAIN_CHARACTERS = 1200  # Vinyals et al. 2016: 1200 train, 423 test
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class EpisodeBatch:
    """A meta-batch of ``B`` episodes, stacked.

    Attributes:
        support_x: ``(B, N*K, *x_shape)`` support inputs.
        support_y: ``(B, N*K)`` labels in ``[0, N)`` (int64) for classification, or
            ``(B, K, 1)`` float targets for regression.
        query_x: ``(B, N*Q, *x_shape)`` query inputs.
        query_y: ``(B, N*Q)`` or ``(B, Q, 1)``, as ``support_y``.
        classes: ``(B, N)`` the dataset-wide class index behind each episode label (what the
            pretrain + fine-tune baseline trains on); None for regression.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return EpisodeBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            None if self.classes is None else self.classes.to(device),
        )

    def task(self, i: int) -> EpisodeBatch:
        """Episode ``i`` alone, as a batch of one."""
        sl = slice(i, i + 1)
        return EpisodeBatch(
            self.support_x[sl],
            self.support_y[sl],
            self.query_x[sl],
            self.query_y[sl],
            None if self.classes is None else self.classes[sl],
        )


# --------------------------------------------------------------------------------------------
# Sinusoid regression (Finn et al. 2017, Sec. 5.1)


@dataclass(frozen=True)
class SinusoidTasks:
    """``y = A sin(x − φ)``, ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[−5, 5]`` (Finn et al.).

    ``num_shots`` support points (K = 5, 10 or 20 in the paper) and ``num_query`` query
    points per task, both drawn from the same input range.
    """

    num_shots: int = 10
    num_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        if self.num_shots < 1 or self.num_query < 1:
            raise ValueError(
                f"num_shots and num_query must be at least 1, got {self.num_shots}, "
                f"{self.num_query}"
            )

    def sample(self, num_tasks: int, rng: np.random.Generator) -> EpisodeBatch:
        amp = rng.uniform(*self.amplitude, size=(num_tasks, 1, 1))
        phase = rng.uniform(*self.phase, size=(num_tasks, 1, 1))
        n = self.num_shots + self.num_query
        x = rng.uniform(*self.x_range, size=(num_tasks, n, 1))
        y = amp * np.sin(x - phase)
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        k = self.num_shots
        return EpisodeBatch(xt[:, :k], yt[:, :k], xt[:, k:], yt[:, k:])


# --------------------------------------------------------------------------------------------
# Image classes and episodes


class ImageClasses:
    """Images grouped by class: ``images[c]`` is a ``(n_c, C, H, W)`` uint8 array.

    With ``rotations=(0, 1, 2, 3)`` every base class counts four times, rotated by 0°, 90°,
    180° and 270° (Santoro et al. 2016; Vinyals et al. 2016): class ``4·c + r`` is base class
    ``c`` rotated by ``r·90°``. Pixels become floats in ``[0, 1]``.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[str],
        rotations: Sequence[int] = (0,),
    ) -> None:
        if len(images) != len(names):
            raise ValueError(f"{len(images)} image arrays for {len(names)} class names")
        if not images:
            raise ValueError("a dataset needs at least one class")
        for name, arr in zip(names, images, strict=True):
            if arr.ndim != 4 or arr.dtype != np.uint8 or len(arr) == 0:
                raise ValueError(
                    f"class {name!r}: expected a non-empty (n, C, H, W) uint8 array, got "
                    f"{arr.dtype} of shape {arr.shape}"
                )
        if not rotations or any(r not in (0, 1, 2, 3) for r in rotations):
            raise ValueError(f"rotations are quarter turns in 0..3, got {tuple(rotations)}")
        shapes = {a.shape[1:] for a in images}
        if len(shapes) != 1:
            raise ValueError(f"every image must have the same (C, H, W), got {sorted(shapes)}")
        self.images = list(images)
        self.names = list(names)
        self.rotations = tuple(rotations)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images[0].shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.images) * len(self.rotations)

    def class_size(self, cls: int) -> int:
        return len(self.images[cls // len(self.rotations)])

    @property
    def min_class_size(self) -> int:
        return min(len(a) for a in self.images)

    def get(self, cls: int, index: np.ndarray) -> np.ndarray:
        """``(len(index), C, H, W)`` float32 images of class ``cls``."""
        base, rot = divmod(cls, len(self.rotations))
        out = self.images[base][index].astype(np.float32) / 255.0
        k = self.rotations[rot]
        if k:
            out = np.rot90(out, k=k, axes=(2, 3))
        return np.ascontiguousarray(out)

    def subset(self, num_base_classes: int) -> ImageClasses:
        """The first ``num_base_classes`` base classes (for quick tests)."""
        return ImageClasses(
            self.images[:num_base_classes], self.names[:num_base_classes], self.rotations
        )


@dataclass
class EpisodeSampler:
    """Seeded N-way K-shot episodes from an :class:`ImageClasses`.

    Each episode draws ``num_ways`` distinct classes, then ``num_shots + num_query`` distinct
    images of each: the first ``num_shots`` are the support set, the rest the query set, so
    support and query never share an image. Episode labels ``0..N-1`` are assigned in the
    (random) order the classes were drawn.
    """

    dataset: ImageClasses
    num_ways: int = 5
    num_shots: int = 1
    num_query: int = 15

    def __post_init__(self) -> None:
        if self.num_ways < 2:
            raise ValueError(f"num_ways must be at least 2, got {self.num_ways}")
        if self.num_shots < 1 or self.num_query < 1:
            raise ValueError(
                f"num_shots and num_query must be at least 1, got {self.num_shots}, "
                f"{self.num_query}"
            )
        if self.num_ways > self.dataset.num_classes:
            raise ValueError(
                f"{self.num_ways}-way episodes need at least {self.num_ways} classes, but the "
                f"dataset has {self.dataset.num_classes}; lower num_ways or use more classes"
            )
        need = self.num_shots + self.num_query
        if need > self.dataset.min_class_size:
            raise ValueError(
                f"{self.num_shots}-shot episodes with {self.num_query} queries need "
                f"{need} images per class, but the smallest class has "
                f"{self.dataset.min_class_size}; lower num_shots or num_query"
            )

    def sample(self, num_tasks: int, rng: np.random.Generator) -> EpisodeBatch:
        n, k, q = self.num_ways, self.num_shots, self.num_query
        c, h, w = self.dataset.image_shape
        sx = np.empty((num_tasks, n, k, c, h, w), np.float32)
        qx = np.empty((num_tasks, n, q, c, h, w), np.float32)
        classes = np.empty((num_tasks, n), np.int64)
        for t in range(num_tasks):
            classes[t] = rng.choice(self.dataset.num_classes, size=n, replace=False)
            for j, cls in enumerate(classes[t]):
                idx = rng.choice(self.dataset.class_size(int(cls)), size=k + q, replace=False)
                imgs = self.dataset.get(int(cls), idx)
                sx[t, j], qx[t, j] = imgs[:k], imgs[k:]
        labels = np.arange(n)
        sy = np.broadcast_to(np.repeat(labels, k), (num_tasks, n * k))
        qy = np.broadcast_to(np.repeat(labels, q), (num_tasks, n * q))
        return EpisodeBatch(
            torch.from_numpy(sx.reshape(num_tasks, n * k, c, h, w)),
            torch.from_numpy(sy.copy()),
            torch.from_numpy(qx.reshape(num_tasks, n * q, c, h, w)),
            torch.from_numpy(qy.copy()),
            torch.from_numpy(classes),
        )


# --------------------------------------------------------------------------------------------
# Reading images


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with the fewshot extra
        raise ImportError(
            "reading image datasets needs Pillow: pip install 'metarl[fewshot]'"
        ) from e
    return Image


def _decode(data: bytes | Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image file → ``(C, H, W)`` uint8, resized with Lanczos (as Finn et al.'s code)."""
    image_mod = _pil()
    try:
        with image_mod.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), resample=image_mod.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for damaged files
        where = str(data) if isinstance(data, Path) else "a file inside the dataset's zip"
        raise ValueError(
            f"{where} is not a readable image ({type(e).__name__}: {e}); every file under "
            "<root>/<class>/ must be an image — remove or replace it"
        ) from e
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _atomic_save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """``$METARL_CACHE`` or ``~/.cache/metarl``: where decoded image arrays are kept."""
    return Path(os.environ.get("METARL_CACHE", Path.home() / ".cache" / "metarl"))


# --------------------------------------------------------------------------------------------
# Omniglot


class _OmniglotSource:
    """Character folders of an Omniglot copy: extracted folders, the zips, or both."""

    HALVES = ("images_background", "images_evaluation")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(
                f"Omniglot path {str(self.root)!r} does not exist; pass the folder that holds "
                f"images_background/ and images_evaluation/ (or their .zip files) with "
                f"--data-path, or set {OMNIGLOT_ENV}=/path/to/omniglot"
            )
        # character key "half/Alphabet/characterNN" -> list of (reader, member) pairs
        self.characters: dict[str, list[tuple[str, str]]] = {}
        self._zips: dict[str, zipfile.ZipFile] = {}
        for half in self.HALVES:
            folder, zpath = self.root / half, self.root / f"{half}.zip"
            if folder.is_dir():
                for png in sorted(folder.glob("*/*/*.png")):
                    key = png.parent.relative_to(self.root).as_posix()
                    self.characters.setdefault(key, []).append(("", str(png)))
            elif zpath.is_file():
                zf = zipfile.ZipFile(zpath)
                self._zips[str(zpath)] = zf
                for member in sorted(zf.namelist()):
                    parts = member.split("/")
                    if len(parts) == 4 and parts[0] == half and parts[3].endswith(".png"):
                        key = "/".join(parts[:3])
                        self.characters.setdefault(key, []).append((str(zpath), member))
        if not self.characters:
            raise FileNotFoundError(
                f"no Omniglot images under {str(self.root)!r}: expected "
                f"images_background/<alphabet>/<character>/*.png and "
                f"images_evaluation/<alphabet>/<character>/*.png (or images_background.zip "
                f"and images_evaluation.zip) as in the original release"
            )

    def read(self, key: str, size: int) -> np.ndarray:
        files = self.characters[key]
        arrs = []
        for zpath, member in files:
            data: bytes | Path = self._zips[zpath].read(member) if zpath else Path(member)
            arrs.append(_decode(data, (size, size), 1))
        return np.stack(arrs)


def omniglot_split(keys: Iterable[str], split: str) -> list[str]:
    """The fixed, versioned 1200/423 character split (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"Omniglot split must be 'train' or 'test', got {split!r}")
    ordered = sorted(keys)
    if len(ordered) != 1623:
        raise ValueError(
            f"the 1200/423 split needs all 1623 Omniglot characters, found {len(ordered)}; "
            f"pass the complete images_background and images_evaluation"
        )
    digest = hashlib.sha256(f"omniglot-vinyals-split/{OMNIGLOT_SPLIT_VERSION}".encode()).digest()
    perm = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(len(ordered))
    chosen = perm[:OMNIGLOT_NUM_TRAIN_CHARACTERS] if split == "train" else perm[1200:]
    return [ordered[i] for i in sorted(chosen)]


def omniglot(
    root: str | Path,
    split: str = "train",
    image_size: int = 28,
    rotations: Sequence[int] = (0, 1, 2, 3),
    max_characters: int | None = None,
    cache_dir: str | Path | None = None,
) -> ImageClasses:
    """Omniglot's ``split`` characters, resized, inverted (strokes 1, background 0).

    Args:
        root: the folder with ``images_background`` and ``images_evaluation`` (folders or
            ``.zip`` files) in the original layout. Never downloads.
        split: ``"train"`` (1200 characters) or ``"test"`` (423) of the few-shot papers'
            split; ``"background"`` (964) or ``"evaluation"`` (659), the release's halves
            (Lake et al.'s one-shot protocol: train on the background, test on the
            evaluation half, from which the 20 one-shot runs are drawn); ``"all"`` keeps all
            1623 characters unsplit.
        image_size: side of the square images (28 in the standard protocol).
        rotations: quarter turns that make new classes; ``(0,)`` for none.
        max_characters: keep only the first characters of the split (quick tests).
        cache_dir: where the decoded array is kept as ``.npz`` for the next call
            (default :func:`default_cache_dir`); ``False``-y path ``""`` disables it.
    """
    source = _OmniglotSource(root)
    if split == "all":
        keys = sorted(source.characters)
    elif split in ("background", "evaluation"):
        keys = sorted(k for k in source.characters if k.startswith(f"images_{split}/"))
        if not keys:
            raise FileNotFoundError(
                f"no images_{split}/ characters under {str(source.root)!r}; Lake et al.'s "
                f"protocol needs images_{split}/<alphabet>/<character>/*.png (or "
                f"images_{split}.zip)"
            )
    else:
        keys = omniglot_split(source.characters, split)
    if max_characters is not None:
        keys = keys[:max_characters]
    cache = None
    if cache_dir != "":
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        tag = _cache_key(str(source.root.resolve()), OMNIGLOT_SPLIT_VERSION, keys, image_size)
        cache = base / f"omniglot-{split}-{image_size}-{tag}.npz"
    arr: np.ndarray | None = None
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            arr = f["images"]
    if arr is None:
        per_char = [source.read(k, image_size) for k in keys]
        if len({len(a) for a in per_char}) != 1:
            raise ValueError(
                "every Omniglot character should have 20 drawings; is the copy complete?"
            )
        arr = 255 - np.stack(per_char)  # (characters, 20, 1, H, W), strokes bright
        if cache is not None:
            _atomic_save(cache, {"images": arr})
    return ImageClasses(list(arr), keys, rotations)


def lake_one_shot_runs(path: str | Path, image_size: int = 28) -> list[EpisodeBatch]:
    """The 20 runs of Lake et al.'s 20-way one-shot challenge from ``all_runs.zip``.

    Each run is one episode: 20 training images (one per class, the support set) and 20 test
    images (the query set), labelled by ``class_labels.txt``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "all_runs.zip"
    if not p.is_file():
        raise FileNotFoundError(
            f"{str(p)!r} does not exist; pass all_runs.zip from the Omniglot release (or its "
            f"folder)"
        )
    runs = []
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
        for r in range(1, 21):
            labels_file = f"run{r:02d}/class_labels.txt"
            if labels_file not in names:
                raise ValueError(f"{str(p)!r} has no {labels_file}; is it all_runs.zip?")
            pairs = [ln.split() for ln in zf.read(labels_file).decode().splitlines() if ln]
            support = [f"run{r:02d}/training/class{c:02d}.png" for c in range(1, 21)]
            index = {s: i for i, s in enumerate(support)}

            def load(member: str) -> np.ndarray:
                return 255 - _decode(zf.read(member), (image_size, image_size), 1)

            sx = np.stack([load(s) for s in support]).astype(np.float32) / 255.0
            qx = np.stack([load(t) for t, _ in pairs]).astype(np.float32) / 255.0
            qy = np.array([index[c] for _, c in pairs], np.int64)
            runs.append(
                EpisodeBatch(
                    torch.from_numpy(sx)[None],
                    torch.arange(20)[None],
                    torch.from_numpy(qx)[None],
                    torch.from_numpy(qy)[None],
                )
            )
    return runs


# --------------------------------------------------------------------------------------------
# Any image folder


def image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] = 84,
    channels: int = 3,
    rotations: Sequence[int] = (0,),
    cache_dir: str | Path | None = None,
) -> ImageClasses:
    """A dataset in the ``root/<class>/<image>`` layout (e.g. mini-ImageNet's ``train/``).

    Every sub-folder of ``root`` is a class; images are resized to ``image_size``.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(
            f"image folder {str(base)!r} does not exist; expected <root>/<class>/<image files>"
        )
    size = (
        (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])
    )
    classes = sorted(d for d in base.iterdir() if d.is_dir())
    files = {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        for d in classes
    }
    empty = [name for name, fs in files.items() if not fs]
    if not classes or empty:
        raise FileNotFoundError(
            f"{str(base)!r} does not have the <root>/<class>/<image> layout: "
            + (f"class folders without images: {empty[:5]}" if empty else "no class folders")
        )
    names = list(files)
    cache = None
    if cache_dir != "":
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        listing = [(n, [f.name for f in files[n]]) for n in names]
        cache = cdir / f"folder-{_cache_key(str(base.resolve()), listing, size, channels)}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            images = [f[f"c{i}"] for i in range(len(names))]
    else:
        images = [np.stack([_decode(p, size, channels) for p in files[n]]) for n in names]
        if cache is not None:
            _atomic_save(cache, {f"c{i}": a for i, a in enumerate(images)})
    return ImageClasses(images, names, rotations)
