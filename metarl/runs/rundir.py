"""Safe file access inside a run directory, which may have come from someone else.

A run directory is untrusted input once it leaves its maker: a name the project writes may
have been replaced by a symbolic link (to a shell start-up file, say), a FIFO or a hard link.
Every write here is confined to the directory:

* whole files go to a temporary file created fresh (``O_CREAT | O_EXCL | O_NOFOLLOW``, a
  random name), fsynced and renamed over the target (the rename replaces a link, never
  follows it);
* appends open with ``O_APPEND | O_NOFOLLOW`` and refuse anything but a regular file with
  one link;
* a name the project writes that is a symlink (or not a regular file) is refused with
  :class:`UnsafeRunDirError`, one line naming it and what to do.

:class:`RunLock` makes one process at a time the writer of a directory (``fcntl.flock`` on
``.lock``, which records the holder's pid; the kernel releases it when the process dies, so a
killed run never blocks its resume).

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_atomic(d / "a.json", b"{}")
    >>> append(d / "log.csv", b"1,2\\n")
    >>> read_bytes(d / "a.json", limit=1024)
    b'{}'
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LOCK_FILE",
    "WRITTEN_NAMES",
    "RunLock",
    "RunLockedError",
    "UnsafeRunDirError",
    "append",
    "check_writable",
    "check_written_names",
    "read_bytes",
    "write_atomic",
]

LOCK_FILE = ".lock"
#: Every name the project writes in a run directory (files, and ``tensorboard/``). The
#: reliability tests plant a symlink at each of them.
WRITTEN_NAMES = (
    "config.json",
    "metrics.csv",
    "checkpoint.pt",
    "best.pt",
    "resumes.jsonl",
    "eval_test.json",
    "eval_train.json",
    "eval_test.png",
    "eval_train.png",
    "eval.json",
    "benchmark_eval.json",
    "README.md",
    LOCK_FILE,
    "tensorboard",
)
_DIRS = frozenset({"tensorboard"})
# O_NONBLOCK: opening a FIFO planted at a written name must fail, not wait for a reader.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class UnsafeRunDirError(RuntimeError):
    """A run directory holds a symlink or another unexpected file where metarl writes, or
    cannot be written at all."""


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


def _unsafe(path: Path, what: str) -> UnsafeRunDirError:
    return UnsafeRunDirError(
        f"{path} is {what}, where metarl writes; refusing to write through it (a run directory "
        "from elsewhere may be crafted). Remove it, or copy the run's regular files to a new "
        "directory"
    )


def _check_name(path: Path, directory: bool = False) -> None:
    """Refuse ``path`` if it is a symlink or not what metarl writes there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(path, f"a symbolic link (to {os.readlink(path)})")
    if directory and not stat.S_ISDIR(st.st_mode):
        raise _unsafe(path, "not a directory")
    if not directory and not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, "not a regular file")


def check_written_names(run_dir: str | Path, names: Iterable[str] = WRITTEN_NAMES) -> None:
    """Refuse ``run_dir`` if it is not a directory, or any name metarl writes in it is a
    symlink or of the wrong kind (checked when a run is opened, before any work)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(
            f"{run_dir} is a file, not a run directory; pass a directory (or a new path)"
        )
    for name in names:
        _check_name(run_dir / name, directory=name in _DIRS)


def check_writable(directory: str | Path) -> None:
    """Raise the ``OSError`` (read-only file system, no space, permission denied) that
    writing into ``directory`` would meet, before any work is done (a temporary file is
    created and removed)."""
    import tempfile

    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # what the write would create lies below this one
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=directory)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(directory)) from e
    os.close(fd)
    os.unlink(tmp)


def _open_dir(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except NotADirectoryError as e:
        raise NotADirectoryError(
            f"{directory} is not a directory (a file is in the way); choose another run directory"
        ) from e


def write_atomic(
    path: str | Path, data: bytes, *, writer: Callable[[BinaryIO, bytes], None] | None = None
) -> None:
    """Write ``data`` as ``path``: a fresh temporary file beside it (never an existing name,
    never through a link), fsynced, renamed over ``path``; then the directory is fsynced. A
    reader sees the old file or the new one, never a mix.

    Args:
        writer: ``(file, data) -> None`` writes ``data`` (default ``file.write``); a test hook.

    Raises:
        UnsafeRunDirError: ``path`` is a symlink or not a regular file.
    """
    path = Path(path)
    _check_name(path)
    dfd = _open_dir(path.parent)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        for _ in range(100):  # a planted name collides only by chance: draw another
            tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise UnsafeRunDirError(f"cannot create a temporary file in {path.parent}")
        try:
            with os.fdopen(fd, "wb") as f:
                if writer is not None:
                    writer(f, data)
                else:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)


def append(path: str | Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing), never through a link.

    Raises:
        UnsafeRunDirError: ``path`` is a symlink, not a regular file, or has other hard links.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            _check_name(path)  # raises the clear error
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, "not a regular file")
        if st.st_nlink > 1:  # the same file is reachable from elsewhere
            raise _unsafe(path, f"a hard link ({st.st_nlink} names for one file)")
        os.write(fd, data)
    finally:
        os.close(fd)


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refused beyond ``limit`` bytes (checked before
    reading) or through a symlink.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeRunDirError: a symlink or not a regular file.
        ValueError: larger than ``limit``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            _check_name(path)
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, "not a regular file")
        if st.st_size > limit:
            raise ValueError(
                f"{path} is {st.st_size} bytes, more than the {limit} a metarl run file may be"
            )
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise ValueError(f"{path} is more than the {limit} bytes a metarl run file may be")
    return data


#: Locks this process holds, by the lock file's (device, inode): [descriptor, holders]. A
#: process may open one run directory twice (a test, a resume after a create); the lock
#: keeps other processes out.
_held: dict[tuple[int, int], list[int]] = {}


class RunLock:
    """An exclusive lock on a run directory for this process: ``fcntl.flock`` on its
    ``.lock``, which records the holder's pid. Released by :meth:`release` (by the last
    holder in this process) or by the kernel when the process dies, so a killed run never
    blocks its resume.

    Raises (on construction):
        RunLockedError: another process holds it; the message names its pid.
    """

    def __init__(self, run_dir: str | Path) -> None:
        import fcntl

        self.path = Path(run_dir) / LOCK_FILE
        self._key: tuple[int, int] | None = None
        _check_name(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _unsafe(self.path, "not a regular file")
            if st.st_nlink > 1:  # truncating it would truncate a file elsewhere
                raise _unsafe(self.path, f"a hard link ({st.st_nlink} names for one file)")
            key = (st.st_dev, st.st_ino)
            if key in _held:
                os.close(fd)
                _held[key][1] += 1
                self._key = key
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                raise RunLockedError(
                    f"{run_dir} is in use by another metarl process ({holder or 'pid unknown'});"
                    " one run directory has one writer: wait for it to finish or stop it, "
                    "then resume"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        _held[key] = [fd, 1]
        self._key = key

    def release(self) -> None:
        """Give the lock up (closing the last descriptor drops the flock)."""
        key, self._key = self._key, None
        entry = _held.get(key) if key is not None else None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]  # type: ignore[arg-type]
            os.close(entry[0])

    def __del__(self) -> None:
        self.release()
