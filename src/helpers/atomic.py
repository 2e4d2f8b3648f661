"""The one way this package writes a file: to a hidden temporary sibling, then ``os.replace``.

A reader (another workflow job, a resumed run) sees the old file or the whole new one, never
half of it. A killed writer leaves ``.<name>.tmp<pid>``; :func:`remove_stale_tmp` clears those
whose process is gone.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

_TMP = re.compile(r"^\..+\.tmp(\d+)$")


# Below this much free space, a failed write is taken for a full disk: torch.save reports one as
# "RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos ...", without errno.
FULL_DISK_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because its file system is full; names the file and the free space."""

    def __str__(self) -> str:  # the message alone: it is the reason a run is recorded with
        return str(self.strerror)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full(path: Path, exc: BaseException) -> DiskFullError | None:
    """A :class:`DiskFullError` for a write of ``path`` that failed with ``exc``, if the disk is full."""
    import errno
    import shutil

    try:
        usage = shutil.disk_usage(path.parent)
    except OSError:
        return None
    if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and usage.free >= FULL_DISK_BYTES:
        return None
    return DiskFullError(
        errno.ENOSPC, f"disk full: could not write {path} ({_size(usage.free)} free of "
        f"{_size(usage.total)} on the file system of {path.parent}); the previous {path.name}, if "
        f"any, is kept whole. Free some space there and run again: it resumes from it. "
        f"(the writer said: {type(exc).__name__}: {str(exc).strip()[:200]})")


def write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)``, flush it to disk, then move it onto ``path``. A failure leaves
    ``path`` as it was; on a full disk it is raised as :class:`DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        full = disk_full(path, exc)  # measured before the partial file goes: what the writer met
        if full is None:
            raise
        raise full from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_clean(obj):
    """NaN/inf -> None, tuples -> lists: strict JSON that every reader accepts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(json_clean(obj), indent=2, default=str) + "\n")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    import shutil

    return write(dst, lambda p: shutil.copyfile(src, p))


def replace_dir(new: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Put the finished folder ``new`` at ``dst``: the old one is moved aside first, so ``dst``
    never holds a mix, and is put back if the move fails."""
    import shutil

    new, dst = Path(new), Path(dst)
    old = dst.with_name(f".{dst.name}.old{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    try:
        os.replace(new, dst)
    except OSError:
        if old.exists():
            os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dst


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """A matplotlib figure, in the format its suffix names (png, svg, ...)."""
    fmt = Path(path).suffix.lstrip(".")
    return write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def save_torch(path: str | os.PathLike, obj) -> Path:
    import torch

    return write(path, lambda p: torch.save(obj, p))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writers in ``folder`` whose process has died."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp*"):
        m = _TMP.match(tmp.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
