"""A run's checkpoints: reading them (a damaged file is named, with the way out), writing an
epoch's files in the background while the next epoch trains, and the random state that makes a
resumed run repeat an uninterrupted one."""

from __future__ import annotations

import os
import pickle
import re
import zipfile

import torch

class CheckpointError(RuntimeError):
    """A run checkpoint that cannot be read (truncated, partly copied); the one-line message
    names the file and the way out."""


RESTART = "Delete it to start this run again from epoch 1, or pass force=True to retrain it"


RESTART_BOTH = ("Delete best.pt and last.pt to start this run again from epoch 1, or pass force=True "
                "to retrain it")


def _damaged(path, exc: Exception) -> bool:
    """Whether torch.load failed on the bytes of the file: a torch checkpoint is a zip archive,
    and a truncated or partly copied one has lost its central directory (at the end)."""
    if not isinstance(exc, (RuntimeError, EOFError, pickle.UnpicklingError)):
        return False  # a missing or unreadable file says so itself
    return "PytorchStreamReader" in str(exc) or not zipfile.is_zipfile(path)


def first_sentence(exc: Exception) -> str:
    text = re.split(r"(?<=\.) ", " ".join(str(exc).split()), maxsplit=1)[0].rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (empty file?)"


def read_checkpoint(path: str | os.PathLike, map_location="cpu", *,
                    fix: str = "Copy it again, or retrain the run that wrote it") -> dict:
    """A ``best.pt``/``last.pt`` dict, loaded without unpickling code.

    A damaged file raises :class:`CheckpointError` naming it, torch's error and ``fix``.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if not _damaged(path, exc):
            raise
        raise CheckpointError(f"{path} is damaged (truncated or partly copied): {first_sentence(exc)}. "
                              f"{fix}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "params" not in ckpt:
        raise ValueError(f"{path} is not a run checkpoint (a dict with 'model' and 'params')")
    return ckpt


def to_host(obj):
    """A copy of ``obj`` with every tensor copied to the CPU, so training can go on changing it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes an epoch's files in a background thread while the next epoch trains.

    One epoch's writes at a time, in the same order as inline (last.pt, best.pt, history.csv),
    each atomic: a kill at any moment leaves what an inline writer would have left one epoch
    earlier at most. A failed write (disk full) is raised at the next ``wait``.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = None

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def submit(self, write, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(write, *args)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
