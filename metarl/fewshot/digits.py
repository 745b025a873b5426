"""Handwritten digits for few-shot learning: MNIST's IDX files and scikit-learn's 8×8 digits.

Neither is downloaded here. MNIST (LeCun et al. 1998) is read from the four standard IDX
files a user brings (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not);
scikit-learn's digits (``sklearn.datasets.load_digits``: 1797 images of 8×8 pixels, 0..16)
ship with scikit-learn and stand in for MNIST wherever the IDX files are absent.

Few-shot learning needs classes at test time that meta-training never saw, and a digit set
has ten. The split here is by class: meta-training on the digits 0–4, meta-testing on the
digits 5–9 (``TRAIN_CLASSES`` / ``TEST_CLASSES``), so a 5-way test episode holds every unseen
digit, in a random label order, with new support and query images each time. For MNIST the
training classes come from the ``train-*`` files and the test classes from ``t10k-*``, so
the two splits share neither a class nor an image. ``classes=`` chooses others.

Both loaders return :class:`~metarl.fewshot.data.ImageClasses` (one class per digit, named
``"0"``..``"9"``), which :class:`~metarl.fewshot.data.EpisodeSampler` turns into episodes
and ``metarl fewshot train --dataset mnist|digits`` trains on.

Example:
    >>> import numpy as np
    >>> from metarl.fewshot.data import EpisodeSampler
    >>> data = sklearn_digits("train", image_size=None)
    >>> data.num_classes, data.image_shape
    (5, (1, 8, 8))
    >>> EpisodeSampler(data, 5, 1, 5).sample(2, np.random.default_rng(0)).support_x.shape
    torch.Size([2, 5, 1, 8, 8])
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metarl.fewshot.data import ImageClasses

__all__ = ["TEST_CLASSES", "TRAIN_CLASSES", "mnist", "read_idx", "sklearn_digits"]

TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
#: IDX element types (the third byte of the magic number): code → numpy dtype
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_BRING = (
    "MNIST is not downloaded by metarl: put the four IDX files (train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or "
    "not) in one folder and pass that folder (--data-path on the command line)"
)


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (gzipped or not), with the shape its header gives.

    The header is two zero bytes, a type byte (``0x08`` unsigned bytes, as MNIST) and the
    number of dimensions, then each dimension as a big-endian 32-bit integer.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{p} is a damaged gzip file ({e}); copy it again") from e
    if len(raw) < 4:
        raise ValueError(f"{p} is not an IDX file: {len(raw)} bytes, shorter than its header")
    magic = int.from_bytes(raw[:4], "big")
    kind, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or kind not in _IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{p} is not an IDX file: magic number 0x{magic:08x} (MNIST's are 0x00000803 for "
            "images and 0x00000801 for labels); pass the uncompressed or .gz IDX files"
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{p} is truncated inside its header; copy it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[kind]
    need = int(np.prod(shape)) * dtype.itemsize
    have = len(raw) - head
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise ValueError(
            f"{p} is {what}: its header gives shape {shape} ({need} bytes of data) but "
            f"{have} bytes follow; copy the file again"
        )
    return np.frombuffer(raw, dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, name: str) -> Path:
    # the standard names, their .gz, and the dotted variant some mirrors use
    # (train-images.idx3-ubyte)
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, f"{name}.gz", dotted, f"{dotted}.gz"):
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"no {name} (or {name}.gz) in {str(root)!r}; {_BRING}")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """``(n, H, W)`` uint8 → ``(n, size, size)`` with Lanczos (as every loader here)."""
    from metarl.fewshot.data import _pil

    image_mod = _pil()
    return np.stack(
        [
            np.asarray(
                image_mod.fromarray(im).resize((size, size), image_mod.Resampling.LANCZOS),
                dtype=np.uint8,
            )
            for im in images
        ]
    )


def _by_class(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[int], image_size: int | None
) -> ImageClasses:
    if image_size is not None and images.shape[1:] != (image_size, image_size):
        images = _resize(images, image_size)
    arrays, names = [], []
    for c in classes:
        sel = images[labels == c]
        if len(sel) == 0:
            raise ValueError(
                f"no images of digit {c}; the classes are 0..9 (got classes={tuple(classes)})"
            )
        arrays.append(np.ascontiguousarray(sel[:, None]))
        names.append(str(c))
    return ImageClasses(arrays, names)


def _classes(split: str, classes: Sequence[int] | None) -> tuple[int, ...]:
    if split not in ("train", "test"):
        raise ValueError(f"the split must be 'train' or 'test', got {split!r}")
    chosen = tuple(classes) if classes is not None else (
        TRAIN_CLASSES if split == "train" else TEST_CLASSES
    )  # fmt: skip
    if not chosen or len(set(chosen)) != len(chosen) or any(c not in range(10) for c in chosen):
        raise ValueError(f"classes must be distinct digits 0..9, got {chosen}")
    return chosen


def mnist(
    root: str | Path,
    split: str = "train",
    classes: Sequence[int] | None = None,
    image_size: int | None = 28,
) -> ImageClasses:
    """MNIST from its IDX files, one class per digit.

    Args:
        root: the folder with the IDX files (see the module docstring). Never downloads.
        split: ``"train"`` reads ``train-*`` (default digits 0–4), ``"test"`` reads
            ``t10k-*`` (default digits 5–9).
        classes: the digits to keep (default: the split's, above).
        image_size: side of the square images (MNIST's own is 28); None keeps it.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"MNIST folder {str(base)!r} does not exist; {_BRING}")
    chosen = _classes(split, classes)
    image_file, label_file = (_find(base, n) for n in _MNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_file} holds a {images.dtype} array of shape {images.shape}, not images "
            "(n, rows, columns) of unsigned bytes; is it the images file?"
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{label_file} holds an array of shape {labels.shape}, not a list of labels; "
            "is it the labels file?"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{image_file.name} has {len(images)} images but {label_file.name} has "
            f"{len(labels)} labels; the two files must come from the same release"
        )
    return _by_class(images, labels, chosen, image_size)


def sklearn_digits(
    split: str = "train",
    classes: Sequence[int] | None = None,
    image_size: int | None = 28,
) -> ImageClasses:
    """scikit-learn's 8×8 digits (1797 images, about 180 per digit), one class per digit.

    A stand-in for MNIST that needs no download. ``split`` picks the default digits (0–4
    for ``"train"``, 5–9 for ``"test"``); pixels 0..16 are scaled to 0..255;
    ``image_size=None`` keeps 8×8.
    """
    chosen = _classes(split, classes)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the digits data set comes with scikit-learn: pip install 'metarl[digits]'"
        ) from e
    data = load_digits()
    images = np.round(np.asarray(data.images) * (255.0 / 16.0)).astype(np.uint8)
    return _by_class(images, np.asarray(data.target), chosen, image_size)
