"""Many notebook steps started at once, through the command the Snakefile runs each step with.

    python -m benchmarks.kernel_stress                    # 6 rounds of 32 trivial notebooks
    python -m benchmarks.kernel_stress --rounds 2 --at-once 8

Each round starts ``--at-once`` papermill processes of a one-cell notebook at the same moment
and waits for all of them. It prints, per round, how many steps failed, how many of their
outputs say ``Address already in use`` (two kernels took the same port) and how long the round
took; the last line is the totals. Kernels on TCP transport pick their ports before they bind
them, so on a busy machine one kernel can take another's (papermill issue 511); the project's
kernels bind Unix sockets in a folder of their own (:mod:`helpers.kernel`), so none can.
The exit status is non-zero when any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

COLLISION = "Address already in use"


def trivial_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x + 1)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def command() -> list[str]:
    """The Snakefile's papermill command line (helpers.workflow.PAPERMILL), as a list."""
    from helpers import workflow

    return shlex.split(workflow.papermill_command())


def one_round(folder: Path, at_once: int, env: dict) -> dict:
    notebook = trivial_notebook(folder / "step.ipynb")
    started = time.perf_counter()
    procs = []
    for i in range(at_once):
        out = folder / f"out-{i}.ipynb"
        procs.append(subprocess.Popen([*command(), str(notebook), str(out), "-y", json.dumps({"x": i})],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [p.communicate()[0] for p in procs]
    failed = [o for p, o in zip(procs, outputs) if p.returncode != 0]
    return {"failed": len(failed), "collisions": sum(COLLISION in o for o in outputs),
            "seconds": round(time.perf_counter() - started, 1),
            "reasons": sorted({o.strip().splitlines()[-1][:200] for o in failed if o.strip()})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--at-once", type=int, default=32)
    ap.add_argument("--json", help="also write the totals to this JSON file")
    args = ap.parse_args(argv)
    # the papermill of this interpreter, as make puts .venv/bin first on PATH
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    totals = {"rounds": args.rounds, "at_once": args.at_once, "failed": 0, "collisions": 0, "seconds": 0.0}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="kernel-stress-") as tmp:
            res = one_round(Path(tmp), args.at_once, env)
        print(f"round {r + 1}/{args.rounds}: {res['failed']} of {args.at_once} steps failed, "
              f"{res['collisions']} with '{COLLISION}', {res['seconds']} s", flush=True)
        for reason in res["reasons"]:
            print(f"    {reason}")
        for key in ("failed", "collisions", "seconds"):
            totals[key] += res[key]
    totals["seconds"] = round(totals["seconds"], 1)
    print(f"total: {totals['failed']} of {args.rounds * args.at_once} steps failed, "
          f"{totals['collisions']} with '{COLLISION}', {totals['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(totals, indent=1) + "\n")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
