"""Atomic outputs: a stage writes into a temporary sibling and renames it into place when complete.

A killed stage therefore leaves either the previous complete output or nothing at its path -- never a
half-written shard that DVC (or the next stage) would accept. What a SIGKILL leaves is only the temporary
sibling (`.<name>.tmp-<pid>-*`), and the next writer of that output removes it. A full disk (or a file-size
limit) while writing becomes `DiskFull`, which names the output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DiskFull(OSError):
    """No room to write an output: `no space left writing <path> (<reason>)`, one line for the user."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(errno.ENOSPC, f"no space left writing {path} ({reason})")
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return self.strerror


_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def room_reason(err: BaseException | None) -> str | None:
    """Why `err` (or what it wraps) is a full disk, a quota or a file-size limit; None if it is not one.
    Writers in Rust or C++ (safetensors, torch) only say so in their message."""
    while err is not None:
        if isinstance(err, DiskFull):
            return err.reason
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return os.strerror(err.errno)
        reason = next((os.strerror(e) for e in _NO_ROOM if os.strerror(e).lower() in str(err).lower()), None)
        if reason:
            return reason
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def naming_disk_full(final: str | Path) -> Iterator[None]:
    """A full disk inside the block becomes DiskFull naming `final` (the outermost output being written)."""
    try:
        yield
    except Exception as err:
        reason = room_reason(err)
        if reason is None:
            raise
        raise DiskFull(final, reason) from err


def _prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _sweep(final: Path) -> None:
    """Remove temporary siblings of `final` left by writers that no longer run (a SIGKILL skips `finally`)."""
    for stale in final.parent.glob(_prefix(final) + "*"):
        pid = stale.name[len(_prefix(final)):].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # another process is writing this output right now
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (PermissionError: it does, not ours)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_prefix(final)}{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs get the usual permissions
    try:
        with naming_disk_full(final):
            yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create private files
            if path.is_file():
                os.chmod(path, 0o666 & ~_umask())
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(final: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `final` for writing; rename it into place on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(final)}{os.getpid()}-", dir=final.parent)
    try:
        with naming_disk_full(final), os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
