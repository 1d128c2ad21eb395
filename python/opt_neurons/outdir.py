"""The output folder of a run: checked before any model is loaded, and held by one run at a time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against each other there
    fcntl = None  # type: ignore[assignment]


def check_writable(out: Path) -> None:
    """`out` is (or can be made) a folder we can write to: a run must not learn otherwise after its forward pass."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"the output path {out} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".opt-neurons-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write to the output folder {out} ({e.strerror or e}): pass a writable folder"
        ) from None


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temp file of this process's own, then rename it over `path`: a reader (a resumed run)
    sees the old file or the new one, never half of one, and two processes never share a temp file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on `out/<name>.lock` for the life of a run: two runs on one folder would overwrite each
    other's checkpoints. The file holds the holder's process id, for the message the second run gets."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / f".{name}.lock"
        self.fh = None
        if fcntl is None:
            return
        fh = open(self.path, "a+")  # noqa: SIM115 (held open for the life of the run)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OutputError(
                f"the output folder {out} is already in use by process {holder} (another run): wait for it to end, "
                f"or pass another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing drops the lock; the file stays (unlinking it would race a waiting run)
            self.fh = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
