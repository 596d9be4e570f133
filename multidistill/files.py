"""The one way multidistill writes a file: atomically, and durably.

Every file the project writes (checkpoints, students, teachers and their
cards, configs, reports, plots, new dataset files) goes through
`atomic_write`: the content is written to a temporary name beside the
target, flushed to disk (fsync), renamed over the target, and the folder
entry is synced too. The target name therefore always holds either the old
complete file or the new complete file, whatever moment the process dies
at, and a completed write survives a power cut. A file recorded for long
under another name (a dataset part, `.partial.h5`) is moved into place the
same way, by `rename_into_place`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name a write of `path` goes through: `<stem>.tmp<suffix>`.

    The suffix is kept because some writers choose the format by it (Keras
    wants `.keras`, matplotlib `.png`).
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # Some file systems do not let folders be opened; nothing to sync.
    try:
        os.fsync(fd)
    except OSError:
        pass  # Folders on some file systems refuse fsync; the rename stands.
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Writes `path` through `write(temporary_path)`, then renames it into place.

    Args:
      path: the file to write; its folder is created if needed.
      write: writes the whole content to the path it is given (e.g.
        `model.save`, `figure.savefig`, `h5py.File(...)`).

    Returns:
      `path`, as a Path.

    Raises:
      Whatever `write` raises; the target is then untouched and the
      temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        rename_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def rename_into_place(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Renames a file written under another name in the same folder (a
    temporary name, or a long recording's "partial" name) over `path`, as
    `atomic_write` does: the source is synced to disk first and the folder
    entry after, so `path` holds the whole file or its old content.

    Returns:
      `path`, as a Path.
    """
    path = Path(path)
    _fsync_path(Path(source))
    os.replace(source, path)
    _fsync_path(path.parent, directory=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
