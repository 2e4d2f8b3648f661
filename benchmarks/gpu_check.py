"""Every performance figure of one GPU in one prepared run (issue 15), each stage time-boxed.

    bash benchmarks/gpu_check.sh                          # on the GPU machine: JSON into $OUT
    python -m benchmarks.gpu_check --out DIR              # the same, without the wheel check
    python -m benchmarks.gpu_check --out DIR --device cpu --tiny   # the whole path in a minute

In order, each stage in its own process and with its own time limit, so that a stage that runs
long costs its own figures only and the run ends inside ``--budget`` seconds:

1. versions (Python, torch, CUDA, cuDNN, the GPU) and the packages a stage would miss;
2. the peak bf16 matrix rate, measured: an 8192^3 bf16 matmul (256^3 with ``--tiny``), the
   mean of ten timed products after three warm-ups; MFU below is taken against it;
3. ``benchmarks.throughput`` at paper A's setting (128 px, batch 16) for every paper A arch
   and EfficientNet-Lite0, ours against naive;
4. ``benchmarks.throughput`` at paper B's setting (VGG-16 + Dense 1024, 200 px, batch 100,
   bf16 on CUDA), with MFU from torch's FLOP counter over the measured peak;
5. ``benchmarks.grid`` for the paper A + paper B grids at the papers' sizes, ``--cores`` runs
   at once on the one GPU.

Files, all in ``--out`` (named like ``benchmarks/results/``, where they are committed):
``<device>-check.json`` (versions, peak, every stage's time and outcome),
``<device>-paper_a.json``, ``<device>-paper_b.json``, ``grid-<device>.json``. Throughput files
are saved after every arch, so a stage stopped at its limit keeps what it measured.

``--tiny`` (for testing the path on a CPU): one arch per setting at 32 px, 5 images per class,
one loader setting, and the grid at the smallest fraction for one epoch (``--grid-experiment``
chooses a smaller grid).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.throughput import PAPER_A_ARCHS, report_header, save_report

# What each stage imports beyond the standard library (module names).
NEEDS = {
    "throughput": ("torch", "torchvision", "numpy", "pandas", "yaml", "PIL", "tqdm", "timm",
                   "pydantic", "filelock", "scipy", "sklearn"),
    "grid": ("snakemake", "papermill", "ipykernel", "nbformat"),
}
# Seconds each stage may take on a GPU; the grid gets whatever is left of the budget.
STAGE_LIMITS = {"paper_a": 230, "paper_b": 100}


def missing_modules(names) -> list[str]:
    return [m for m in names if importlib.util.find_spec(m) is None]


def versions(device) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "cpu_count": os.cpu_count(),
           "missing": {stage: missing_modules(names) for stage, names in NEEDS.items()}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        try:
            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    return out


def peak_bf16(device, n: int, warmup: int = 3, timed: int = 10) -> dict:
    """TFLOP/s of an ``n``^3 bf16 matmul on random data: the rate MFU is measured against."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(timed):
        a @ b
    sync()
    seconds = (time.perf_counter() - started) / timed
    return {"n": n, "seconds_per_matmul": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def _stage(name: str, argv: list[str], limit: float, env: dict | None = None) -> dict:
    """Run ``python -m <argv>`` with a time limit; its output goes straight to ours."""
    started = time.perf_counter()
    print(f"== {name}: python -m {' '.join(argv)} (limit {limit:.0f} s)", flush=True)
    if limit < 5:
        return {"state": "skipped", "reason": "no time left in the budget"}
    try:
        proc = subprocess.run([sys.executable, "-m", *argv], timeout=limit,
                              env={**os.environ, **(env or {})})
        state = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        state = "stopped at its time limit"
    return {"state": state, "seconds": time.perf_counter() - started, "command": argv}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for every JSON file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, to test the path on a CPU")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds for the whole run (default 540: inside a 10-minute call)")
    parser.add_argument("--cores", type=int, default=4, help="grid runs at once (default 4)")
    parser.add_argument("--grid-experiment", nargs="+", default=["paper_a", "paper_b"])
    parser.add_argument("--stages", nargs="+", default=["paper_a", "paper_b", "grid"],
                        choices=["paper_a", "paper_b", "grid"], help="which stages after the peak")
    args = parser.parse_args(argv)

    from helpers import training

    started = time.perf_counter()
    device = training.resolve_device(args.device)
    out = Path(args.out)
    kind = device.type
    report = {**report_header(device, "benchmarks.gpu_check", argv), "tiny": args.tiny,
              "budget_seconds": args.budget, "stages": {}}
    report["environment"] = versions(device)
    print(json.dumps(report["environment"], indent=2), flush=True)
    report["peak_bf16"] = peak_bf16(device, 256 if args.tiny else 8192)
    peak = report["peak_bf16"]["tflops"]
    print(f"peak bf16 matmul: {peak:.1f} TFLOP/s ({report['peak_bf16']['n']}^3)", flush=True)
    check_file = out / f"{kind}-check.json"
    save_report(report, check_file)

    if args.tiny:
        n_a = n_b = 5
        archs = {"paper_a": ["mobilenet_v3_small"], "paper_b": ["vgg16"]}
        workers, env = ["0"], {"BENCH_IMAGE_SIZE": "32"}
        grid_args = ["--fraction", "0.0001", "--epochs", "1"]
    else:
        n_a, n_b = 500, 500
        archs = {"paper_a": [*PAPER_A_ARCHS, "efficientnet_lite0"], "paper_b": ["vgg16"]}
        workers, env = [str(min(8, os.cpu_count() or 1))], {}
        grid_args = []
    left = lambda: args.budget - (time.perf_counter() - started)  # noqa: E731
    for setting, n in (("paper_a", n_a), ("paper_b", n_b)):
        if setting not in args.stages:
            continue
        gone = missing_modules(NEEDS["throughput"])
        if gone:
            report["stages"][setting] = {"state": "skipped", "reason": f"missing modules: {gone}"}
        else:
            limit = left() if args.tiny else min(STAGE_LIMITS[setting], left())
            report["stages"][setting] = _stage(setting, [
                "benchmarks.throughput", "--setting", setting, "--arch", *archs[setting],
                "--n-per-class", str(n), "--device", args.device, "--workers", *workers,
                "--peak-tflops", str(peak), "--out", str(out / f"{kind}-{setting}.json")], limit, env)
        save_report(report, check_file)
    if "grid" in args.stages:
        gone = missing_modules(NEEDS["throughput"] + NEEDS["grid"])
        if gone:
            report["stages"]["grid"] = {"state": "skipped", "reason": f"missing modules: {gone}"}
        else:
            report["stages"]["grid"] = _stage("grid", [
                "benchmarks.grid", "--experiment", *args.grid_experiment, *grid_args,
                "--cores", str(args.cores), "--out", str(out / f"grid-{kind}.json")], left())
    report["seconds"] = time.perf_counter() - started
    save_report(report, check_file)
    for name, stage in report["stages"].items():
        print(f"{name}: {stage['state']}" + (f" ({stage['reason']})" if "reason" in stage else
                                             f" in {stage['seconds']:.0f} s"))
    return 0 if all(s["state"] == "done" for s in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
