"""How a data folder is built: per-file jobs in a process pool, then the finished folder is
moved into place whole, under a file lock.

``publish_dir`` is what a hand-run of ``prepare``/``synthesize`` needs when two run at once or
one is killed: the lock (the ``filelock`` package; the OS drops it when its holder dies) lets
one build while the other waits and then reuses the result; building in a hidden sibling
means a killed build never leaves a half folder under the final name.
"""
from __future__ import annotations

import os
import shutil
import sys
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .. import atomic


def pool_map(func, items: list, *, desc: str, progress: bool, chunksize: int | None = None):
    """Map ``func`` over ``items`` in a process pool (in-process when small), with tqdm."""
    from tqdm.auto import tqdm

    workers = max(1, min(os.cpu_count() or 1, len(items) // 8))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="img")
    try:
        if workers == 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        chunksize = chunksize or max(1, min(64, len(items) // (workers * 8)))
        with get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
            for result in pool.imap(func, items, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


def publish_dir(final: Path, build: Callable[[Path], None], is_current: Callable[[], bool]) -> bool:
    """Unless ``is_current()``, call ``build(tmp)`` on an empty hidden sibling of ``final`` and
    replace ``final`` by it. Returns False when ``final`` was current (before or after waiting
    for another process's build), True when this call built it.

    A build that raises leaves ``final`` as it was; one that is killed leaves its sibling,
    which the next build removes (holding the lock, no other build of ``final`` can be alive).
    """
    final = Path(final)
    if is_current():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.lock"):
        if is_current():
            return False
        tmp, old = (final.with_name(f".{final.name}.{tag}") for tag in ("building", "old"))
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        try:
            try:
                build(tmp)
            except OSError as exc:   # a full disk is named, with the free space (not numpy's short write)
                full = atomic.disk_full(final, exc)
                if full is None:
                    raise
                raise full from exc
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.exists() and old.exists():     # the last move failed: put the old one back
                os.replace(old, final)
            shutil.rmtree(old, ignore_errors=True)
    return True
