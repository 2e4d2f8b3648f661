"""What ``make report`` runs around Snakemake: the checks before it, the lock during it, and
the account after it.

Before: every data folder is checked (it exists and holds the dataset's class folders, each
with images) so that a wrong ``DATA_DIR`` fails within seconds and writes nothing.
During: a ``filelock`` lock file (``.snakemake/report.lock``) is held for the whole Snakemake
call. A second ``make report`` in the same folder is refused in one line naming the live run;
Snakemake's own ``.snakemake/locks`` left by a killed run (nobody holds the lock file, no
snakemake runs here) is cleared with ``snakemake --unlock``, and the run goes on.
After: the last lines name every step that failed (its one-line reason and the executed
notebook or log to open) and every run that did not complete, with its reason. The exit status
is non-zero when a step or a run *failed*; runs absent by design (ImageNet weights that cannot
be reached) keep it 0.

``data_fingerprint`` is what the Snakefile passes as a ``params:`` of ``data_prep``: every
file's path and content hashed, so a file added, removed or replaced reruns data prep and the
runs trained on it; a folder copied or unzipped again (new modification times) reruns nothing.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import atomic

LOCK_FILE = Path(".snakemake") / "report.lock"
OWNER_FILE = Path(".snakemake") / "report.owner.json"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"
TAIL_BYTES = 256 * 1024          # of Snakemake's output, kept to name a failed step's reason


class PreflightError(ValueError):
    """A data folder or an experiment that cannot be used: refused before Snakemake starts."""


class LockedError(RuntimeError):
    """Another ``make report`` (or snakemake) is running in this folder."""


# ---------------------------------------------------------------- data folders

def check_data_dirs(exp: dict) -> None:
    """Each real dataset's folder exists and holds the class folders, each with an image in it.

    Reads only directory entries (stops at the first image of each class); raises
    :class:`PreflightError` naming the dataset, the folder and what was expected."""
    from . import data
    from .data.discover import IMAGE_EXTENSIONS

    for dataset, folder in exp["data_dirs"].items():
        if not folder:
            continue
        spec = data.get_spec(dataset)
        try:
            root = data.find_class_root(folder, dataset)
        except (OSError, ValueError) as exc:
            raise PreflightError(f"DATA_DIR for {dataset}: {exc}{_looks_like(folder, dataset)}") from None
        for _given, cls, rel in spec.class_dirs():   # under train/, val/, test/ when it comes split
            if not _has_image(root / rel, IMAGE_EXTENSIONS, skip={spec.mask_dir}):
                raise PreflightError(
                    f"DATA_DIR for {dataset}: class folder {str(root / rel)!r} holds no image files; "
                    f"expected {spec.ext} images of class {cls!r} (directly or in a subfolder)")


def _has_image(folder: Path, extensions, skip=()) -> bool:
    for dirpath, dirnames, filenames in os.walk(folder):
        if any(not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions for n in filenames):
            return True
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip]
    return False


def _looks_like(folder: str, dataset: str) -> str:
    """' (it holds the ct_kidney class folders ...)' when the folder is another dataset's."""
    from . import data

    for other in data.DATASETS:
        if other == dataset:
            continue
        try:
            data.find_class_root(folder, other)
        except (OSError, ValueError):
            continue
        return f"; it holds the {other} class folders instead: is it the {other} download?"
    return ""


@functools.lru_cache(maxsize=None)
def _listing(dataset: str, data_dir: str):
    from .data.discover import find_class_root, scan
    from .data.specs import get_spec
    from .data.synthetic import find_synthetic_root

    class_root = find_class_root(data_dir, dataset)
    return class_root, scan(class_root, get_spec(dataset), find_synthetic_root(class_root))


def data_fingerprint(prep: dict) -> str:
    """The fingerprint data prep records in ``info.json`` for these parameters (PrepParams
    values), from the folder's files (hashed, not decoded): "" for the synthetic phantoms.

    The Snakefile passes it as a ``params:`` of ``data_prep``: Snakemake reruns a job whose
    params changed. A folder that cannot be listed gives its reason instead (a dry run still
    works; ``make report`` refuses it earlier, in :func:`check_data_dirs`)."""
    if not prep.get("data_dir"):
        return ""
    from .data.prepared import fingerprint  # the very function prepare() records

    try:
        class_root, listing = _listing(prep["dataset"], str(prep["data_dir"]))
    except (OSError, ValueError) as exc:
        return f"unusable: {exc}"
    return fingerprint(prep, class_root, listing)


# ---------------------------------------------------------------- the lock

def _owner() -> dict:
    try:
        return json.loads(OWNER_FILE.read_text())
    except (OSError, ValueError):
        return {}


def live_snakemake(root: Path | None = None) -> list[tuple[int, str]]:
    """(pid, command) of snakemake processes (not --unlock) whose working folder is ``root``."""
    import psutil

    root = (root or Path.cwd()).resolve()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.pid == os.getpid() or "--unlock" in cmd or not any(
                    Path(part).name == "snakemake" for part in cmd[:3]):
                continue
            if Path(proc.cwd()).resolve() == root:
                found.append((proc.pid, " ".join(cmd)))
        except (psutil.Error, OSError):
            continue
    return found


class ReportLock:
    """Held for the whole Snakemake call of one ``make report`` (see the module docstring)."""

    def __init__(self, command: str, unlock_cmd: list[str] | None = None):
        from filelock import FileLock

        self.command = command
        self.unlock_cmd = unlock_cmd
        self.cleared = False
        self._lock = FileLock(str(LOCK_FILE), timeout=0)

    def __enter__(self):
        from filelock import Timeout

        LOCK_FILE.parent.mkdir(exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            who = _owner()
            raise LockedError(
                f"another make report is running in {Path.cwd()} (pid {who.get('pid', '?')}: "
                f"{who.get('command', 'unknown command')}, since {who.get('started', '?')}); "
                "wait for it to finish or stop it, then run make report again") from None
        try:
            live = live_snakemake()
            if live:
                pid, cmd = live[0]
                raise LockedError(f"snakemake is running in {Path.cwd()} (pid {pid}: {cmd}); "
                                  "wait for it to finish or stop it, then run make report again")
            atomic.write_json(OWNER_FILE, {"pid": os.getpid(), "command": self.command,
                                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
            if SNAKEMAKE_LOCKS.is_dir() and any(SNAKEMAKE_LOCKS.iterdir()):
                self._clear_stale()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _clear_stale(self) -> None:
        print(f"make report: a stale Snakemake lock ({SNAKEMAKE_LOCKS}/) was left by a run that "
              "ended without cleaning up (killed?); no run is live, so it is cleared "
              "(snakemake --unlock) and this run goes on", file=sys.stderr)
        if self.unlock_cmd:
            done = subprocess.run(self.unlock_cmd, capture_output=True, text=True)
            if done.returncode != 0:  # the Snakefile did not parse: the locks go all the same
                shutil.rmtree(SNAKEMAKE_LOCKS, ignore_errors=True)
        else:
            shutil.rmtree(SNAKEMAKE_LOCKS, ignore_errors=True)
        self.cleared = True

    def __exit__(self, *exc):
        OWNER_FILE.unlink(missing_ok=True)
        self._lock.release()
        return False


# ---------------------------------------------------------------- failures

def failed_dir(exp: dict) -> Path:
    from .experiment import results_dir

    return results_dir(exp) / "failed"


def notebook_error(notebook: str | os.PathLike) -> str:
    """'ename: evalue' of the first error output of an executed notebook ("" if none)."""
    import nbformat

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception:  # noqa: BLE001 - absent or half-written: no reason from it
        return ""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename', '')}: {out.get('evalue', '')}".strip(": ")
    return ""


def record_failure(to: str | os.PathLike, step: str, target: str, notebook: str = "") -> Path:
    """Keep a failed step's notebook (Snakemake deletes a failed job's outputs) and its reason.

    Called by the Snakefile's shell commands after a step's command fails: ``<to>/<name>.json``
    holds ``{step, target, reason, notebook}``; ``<to>/<name>.ipynb`` is the executed notebook."""
    to = Path(to)
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"{step}__{target}").strip("_")
    kept = ""
    if notebook and Path(notebook).is_file():
        kept = str(to / f"{name}.ipynb")
        to.mkdir(parents=True, exist_ok=True)
        shutil.copy2(notebook, kept)
    record = {"step": step, "target": target, "reason": notebook_error(kept) if kept else "",
              "notebook": kept}
    return atomic.write_json(to / f"{name}.json", record)


_SNAKE_ERROR = re.compile(r"^Error in rule (\w+):\s*$(?P<body>(?:\n[ \t]+.*)*)", re.M)
_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Warning|Interrupt|Exit|Timeout): .+$", re.M)
_LOG = re.compile(r"^Complete log(?:\(s\))?: (.+)$", re.M)


def failed_steps(text: str, records: list[dict]) -> list[dict]:
    """The steps Snakemake reports as failed (``Error in rule X``), each with its reason and the
    notebook or log to open: from the step's failure record when there is one, else the last
    exception line of the output before Snakemake's error block."""
    log = next((m.group(1).strip() for m in _LOG.finditer(text)), "")
    out = []
    for m in _SNAKE_ERROR.finditer(text):
        rule, body = m.group(1), m.group("body")
        outputs = re.search(r"^\s+output: (.+)$", body, re.M)
        target = outputs.group(1).split(",")[0].strip() if outputs else ""
        rec = next((r for r in records if r["step"] == rule and (not target or r["target"] in body)), None)
        before = _EXC_LINE.findall(text[:m.start()])
        reason = (rec or {}).get("reason") or (before[-1].strip() if before else "")
        where = (rec or {}).get("notebook") or log
        out.append({"step": rule, "target": target, "reason": reason or "see the output above",
                    "open": where})
    if not out and text.strip():
        # Snakemake stopped before any job (the Snakefile did not parse, say): its last error.
        errors = _EXC_LINE.findall(text)
        last = errors[-1].strip() if errors else text.strip().splitlines()[-1]
        out.append({"step": "snakemake", "target": "", "reason": last, "open": log})
    return out


def runs_not_complete(exp: dict, asked: set[str] | None = None) -> list[dict]:
    """Every run of the grid without metrics.json: its key, kind (failed, absent, not run) and
    reason; only the runs whose status file is in ``asked`` (Snakemake targets), when given."""
    from .experiment import runs
    from .workflow import run_kind, run_state, status_file

    out = []
    for rid in runs(exp):
        if asked and str(status_file(rid)) not in asked:
            continue
        state, reason = run_state(rid)
        if state == "complete":
            continue
        kind = run_kind(rid) if state == "missing" else "not run"
        out.append({"key": rid.key, "kind": kind, "reason": reason, "run_dir": str(rid.run_dir())})
    return out


def closing_lines(steps: list[dict], not_complete: list[dict]) -> list[str]:
    lines = []
    if steps:
        lines.append(f"make report: {len(steps)} step(s) failed:")
        for s in steps:
            target = f" ({s['target']})" if s["target"] else ""
            lines.append(f"  {s['step']}{target}: {s['reason']}")
            if s["open"]:
                lines.append(f"    open: {s['open']}")
    shown = [r for r in not_complete if r["kind"] != "not run"]
    if shown:
        lines.append(f"make report: {len(shown)} run(s) did not complete:")
        for r in shown:
            lines.append(f"  {r['kind']}: {r['key']}: {r['reason']}")
    unrun = len(not_complete) - len(shown)
    if unrun and steps:
        lines.append(f"make report: {unrun} run(s) not run yet (the workflow stopped); "
                     "make report again resumes them")
    return lines


# ---------------------------------------------------------------- make report

def _snakemake_bin() -> str:
    return shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


def _run_teed(cmd: list[str]) -> tuple[int, str, int | None]:
    """Run ``cmd``, passing its stderr through unchanged while keeping the tail of it; returns
    its exit status, that tail, and the signal that stopped this run (None if none).

    SIGTERM is passed on to it (it finishes or cancels its jobs and releases its locks); Ctrl-C
    reaches it from the terminal, so this process only waits for it to finish cleaning up.
    Snakemake exits 1 either way, as after a failure: the signal tells them apart."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    got: list[int] = []

    def on_term(signum, frame):
        got.append(signum)
        proc.send_signal(signal.SIGTERM)

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
           signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))}
    tail = bytearray()
    try:
        fd, sink = proc.stderr.fileno(), sys.stderr.buffer
        while chunk := os.read(fd, 65536):
            sink.write(chunk)
            sink.flush()
            tail += chunk
            del tail[:-TAIL_BYTES]
        rc = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return rc, tail.decode("utf-8", "replace"), (got[0] if got else None)


def report(experiment: str, data_dir: str = "", cores: int = 1, snake_args: list[str] = ()) -> int:
    """``make report``: check, lock, run Snakemake, then say what did not complete. Returns the
    exit status: 0, 1 (a step or a run failed, or another run holds the folder), 2 (refused
    before any work: a wrong experiment or data folder), 130/143 (interrupted)."""
    from . import experiment as ex

    try:
        exp = ex.load_experiment(experiment, data_dir)
        check_data_dirs(exp)
    except (ex.ExperimentError, PreflightError) as exc:
        print(f"make report: refused before any work: {exc}", file=sys.stderr)
        return 2
    config = ["--config", f"experiment={experiment}", f"data_dir={data_dir}"]
    # --config takes every argument after it: targets in snake_args go before it
    cmd = [_snakemake_bin(), "--cores", str(cores), "--rerun-incomplete", *snake_args, *config]
    command = f"make report EXPERIMENT={experiment}" + (f" DATA_DIR={data_dir}" if data_dir else "")
    started = time.time()
    try:
        with ReportLock(command, unlock_cmd=[_snakemake_bin(), "--unlock", "--cores", "1", *config]):
            rc, text, stopped_by = _run_teed(cmd)
    except LockedError as exc:
        print(f"make report: refused: {exc}", file=sys.stderr)
        return 1
    if stopped_by is not None and rc != 0:
        print("make report: interrupted; make report again resumes where it stopped", file=sys.stderr)
        return 128 + stopped_by
    records = []
    folder = failed_dir(exp)
    if rc != 0 and folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if path.stat().st_mtime >= started - 1:
                records.append(json.loads(path.read_text()))
    steps = failed_steps(text, records) if rc != 0 else []
    # targets such as one stage's status files: account for those runs, not the whole grid
    asked = {a for a in snake_args if a.endswith("status.json")}
    not_complete = runs_not_complete(exp, asked)
    index = Path("_build/html/index.html")
    if rc == 0 and index.is_file():
        print(f"Book: {index.resolve()}", file=sys.stderr)
    lines = closing_lines(steps, not_complete)
    failed_runs = [r for r in not_complete if r["kind"] == "failed"]
    status = 1 if (rc != 0 or failed_runs) else 0
    if status:
        lines.append("make report: FAILED" + (f" ({len(failed_runs)} run(s) failed)" if failed_runs else ""))
    for line in lines:
        print(line, file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("report", help="what make report runs: check, lock, snakemake, account")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p = sub.add_parser("failed", help="(the Snakefile's shell) keep a failed step's notebook and reason")
    p.add_argument("--to", required=True)
    p.add_argument("step")
    p.add_argument("target")
    p.add_argument("notebook", nargs="?", default="")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)   # after --: more snakemake arguments
    args = parser.parse_args(argv[:cut])
    if args.cmd == "report":
        return report(args.experiment, args.data_dir, args.cores, argv[cut + 1:])
    path = record_failure(args.to, args.step, args.target, args.notebook)
    rec = json.loads(path.read_text())
    print(f"{args.step} failed: {rec['reason'] or 'see the output above'}"
          + (f"; executed notebook kept at {rec['notebook']}" if rec["notebook"] else ""), file=sys.stderr)
    return 1  # the step failed: the shell command fails with it


if __name__ == "__main__":
    sys.exit(main())
