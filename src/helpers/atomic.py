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


def write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)``, flush it to disk, then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
