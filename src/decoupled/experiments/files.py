"""Writing a file atomically, for files that other processes may read while it is written."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` to write; when the block ends without error, rename it to ``path``.

    A concurrent reader sees no file or the whole file, never part of one; on error no file is left behind.
    The file is made readable by all (0644): mkstemp makes it private, and these files are for sharing.
    """
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
