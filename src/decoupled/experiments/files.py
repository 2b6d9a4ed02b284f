"""Files and folders of a sweep: writing a file atomically, and making sure an output folder can be written."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["OutputFolderError", "atomic_write", "prepare_output_folder", "remove_if_empty", "write_text_atomic"]


class OutputFolderError(ValueError):
    """An output folder that cannot be made or written (a file in the way, a read-only or full filesystem, no
    permission); the message is one line naming the folder and the reason."""


@contextmanager
def atomic_write(path: Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` to write; when the block ends without error, rename it to ``path``.

    A concurrent reader sees no file or the whole file, never part of one; on error no file is left behind.
    The data reaches the disk (fsync) before the rename, so that a crash or power loss right after it leaves
    the new file whole, not an empty one under the old name. The file is made readable by all (0644): mkstemp
    makes it private, and these files are for sharing.
    """
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def prepare_output_folder(folder: Path) -> list[Path]:
    """Make ``folder`` (and missing parents) and check that a file can be written in it, before any work.

    Returns the folders this call created, outermost first, so that a sweep refused later can remove them
    again (:func:`remove_if_empty`). Raises :class:`OutputFolderError` for a path that is a file or lies under
    one, a folder that cannot be made (``/proc``, no permission), or one that cannot be written (a read-only
    or full filesystem).
    """
    created: list[Path] = []
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            what = "is a file" if path == folder else f"lies under {str(path)!r}, which is a file"
            raise OutputFolderError(f"output folder {str(folder)!r} {what}; choose another --out")
        if path.exists():
            break
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another sweep made it meanwhile
                continue
            created.append(path)
    except OSError as error:
        remove_if_empty(created)
        raise OutputFolderError(f"cannot create output folder {str(folder)!r}: {_reason(error)}") from None
    try:  # a real write: permissions alone do not show a read-only mount or a full disk
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"decoupled")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        remove_if_empty(created)
        raise OutputFolderError(f"cannot write in output folder {str(folder)!r}: {_reason(error)}") from None
    return created


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) if it is empty; a refused sweep leaves no empty folder."""
    for path in reversed(folders):
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return  # not empty: the folders above it are not empty either
