"""Training throughput: the project's engine against the papers' way of doing it.

    python -m benchmarks.throughput                        # every arch, both settings, this device
    python -m benchmarks.throughput --arch mobilenet_v3_small resnet18 --setting paper_a
    python -m benchmarks.throughput --scale                # wall time vs images / resolution
    python -m benchmarks.throughput --bf16                 # ours in fp32 against bf16 autocast
    python -m benchmarks.throughput --augment              # ours with per-image augmentation

For each arch and setting, on the same prepared synthetic data, the same model and the same
hyperparameters, in the same process run (each variant in its own child process, so peak
memory is its own):

- ``ours``: helpers.training's engine (uint8 data resident on the device, on-device
  normalisation; on CUDA channels_last, bf16 autocast, torch.compile, no per-batch syncs);
- ``naive``: torchvision ImageFolder + transforms + DataLoader decoding the files every
  epoch, fp32, default memory format, with its best number of loader workers (0 or all cores).

One warm-up epoch, then one timed epoch of training plus validation (``--timed-epochs K``:
the fastest of K, for a shared machine). Results (images/s, the
ratio ours/naive, peak memory, and on CUDA the model FLOP/s from torch's FLOP counter and its
share of the GPU's dense bf16 peak) are printed and written as JSON with the device, library
versions and git commit.

``--bf16`` times ours twice per arch, fp32 and bf16 autocast, and prints the ratio: what
``models.ArchSpec.cpu_bf16`` records. It says whether the CPU computes bf16 natively; without
it (no AVX512-BF16 or AMX) bf16 is emulated and the ratio says nothing about a CPU that has it.

``--augment`` times ours twice per arch, without and with the recipe's per-image augmentation
(helpers.augment, inside the engine on whole batches), and prints what it adds to a training
epoch: the target is at most 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SETTINGS = {
    # name: dataset, image size, batch size, head
    "paper_a": ("covid_radiography", 128, 16, "replace"),
    "paper_b": ("ct_kidney", 200, 100, "dense1024"),
}
PAPER_A_ARCHS = ("resnet18", "vgg11", "alexnet", "mobilenet_v3_large", "mobilenet_v3_small")
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from NVIDIA's data sheets.
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
RESULTS_DIR = Path("benchmarks") / "results"


class _NullBar:
    def update(self, n=1):
        pass


def _peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def _prepare(dataset: str, image_size: int, n_per_class: int):
    from helpers import data

    folder = data.prepare(dataset, image_size=image_size, balance=False, seed=0,
                          n_per_class=n_per_class, progress=False)
    return data.load_prepared(folder)


def _params(arch, head, image_size, batch_size, device, compile_):
    from helpers import training

    return training.validate_params({
        "arch": arch, "head": head, "pretrained": False, "image_size": image_size,
        "batch_size": batch_size, "epochs": 2, "device": device, "compile": compile_,
        "normalize": "dataset", "lr": 1e-4,
    })


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_epochs() -> int:
    return int(os.environ.get("BENCH_TIMED_EPOCHS", "1"))


def _fastest(times: list[tuple[float, float]]) -> tuple[float, float]:
    """(train, val) seconds of the fastest timed epoch (the first epoch is the warm-up): on a
    shared machine the others' load only ever adds time."""
    return min(times[1:], key=sum)


def _flops_per_image(model, image_size, device, train: bool) -> float:
    """Model FLOPs of one image (forward, or forward + backward) from torch's counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        if train:
            model.train()
            model(x).sum().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def run_ours(arch, setting, n_per_class, device_name, compile_="auto", bf16="auto", augment="false") -> dict:
    import torch

    from helpers import training

    dataset, size, batch, head = SETTINGS[setting]
    prepared = _prepare(dataset, size, n_per_class)
    params = _params(arch, head, size, batch, device_name, "auto")
    device = training.resolve_device(params["device"])
    # The engine's defaults ("auto"): compile on CUDA only; bf16 as training resolves it.
    params = {**params, "compile": device.type == "cuda" if compile_ == "auto" else compile_ == "true",
              "bf16": training.resolve_bf16(bf16 if bf16 == "auto" else bf16 == "true", device, arch),
              "augment": augment == "true", "dataset": dataset}
    torch.manual_seed(0)
    model = training._build(params, len(prepared.class_names), device)
    optimizer = training.make_optimizer(model, params, device)
    engine = training._Engine(prepared, params, device)
    step_model = training._compile(model, params["compile"], device)
    times = []
    for epoch in range(1, 2 + _timed_epochs()):  # warm-up (compile, cudnn autotune), then timed
        _sync(device)
        t0 = time.perf_counter()
        engine.train_epoch(step_model, optimizer, 0, epoch, _NullBar())
        _sync(device)
        t1 = time.perf_counter()
        val_loss, val_acc = engine.evaluate(model, "val")
        float(val_acc)
        _sync(device)
        times.append((t1 - t0, time.perf_counter() - t1))
    n_train, n_val = len(engine.y["train"]), len(engine.y["val"])
    result = _result("ours", arch, setting, device, model, size, n_train, n_val, *_fastest(times))
    result["compiled"] = params["compile"]
    result["bf16"] = params["bf16"]
    result["augment"] = params["augment"]
    return result


def run_naive(arch, setting, n_per_class, device_name, workers) -> dict:
    """The papers' loop: ImageFolder + transforms + DataLoader, fp32, default memory format."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from helpers import data, training

    dataset, size, batch, head = SETTINGS[setting]
    prepared = _prepare(dataset, size, n_per_class)
    params = _params(arch, head, size, batch, device_name, False)
    device = training.resolve_device(params["device"])
    root = data.find_class_root(prepared.info["source_dir"], dataset)
    mean, std = training.run_stats(params, prepared)
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    folder = datasets.ImageFolder(str(root), transform=tf,
                                  is_valid_file=lambda p: os.sep + "masks" + os.sep not in p)
    by_path = {Path(p).resolve(): i for i, (p, _) in enumerate(folder.samples)}
    split = dict(zip((Path(prepared.info["source_dir"]) / p for p in prepared.paths), prepared.split))
    index = {"train": [], "val": []}
    for path, part in split.items():
        if part in index:
            index[part].append(by_path[path.resolve()])
    loaders = {part: DataLoader(Subset(folder, idx), batch_size=batch, shuffle=part == "train",
                                num_workers=workers, persistent_workers=workers > 0,
                                pin_memory=device.type == "cuda")
               for part, idx in index.items()}
    torch.manual_seed(0)
    model = training._build({**params, "compile": False}, len(prepared.class_names), device)
    model = model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    times = []
    for _ in range(1 + _timed_epochs()):
        _sync(device)
        t0 = time.perf_counter()
        model.train()
        for x, y in loaders["train"]:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-batch logging sync
        _sync(device)
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for x, y in loaders["val"]:
                model(x.to(device)).argmax(1).eq(y.to(device)).sum().item()
        _sync(device)
        times.append((t1 - t0, time.perf_counter() - t1))
    result = _result("naive", arch, setting, device, model, size, len(index["train"]),
                     len(index["val"]), *_fastest(times))
    result["workers"] = workers
    return result


def _result(variant, arch, setting, device, model, size, n_train, n_val, train_s, val_s) -> dict:
    import torch

    seconds = train_s + val_s
    out = {"variant": variant, "arch": arch, "setting": setting, "device": device.type,
           "n_train": n_train, "n_val": n_val, "train_seconds": train_s, "val_seconds": val_s,
           "images_per_s": (n_train + n_val) / seconds}
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        base = getattr(model, "_orig_mod", model)
        flops = (_flops_per_image(base, size, device, True) * n_train
                 + _flops_per_image(base, size, device, False) * n_val)
        out["model_tflops_per_s"] = flops / seconds / 1e12
        name = torch.cuda.get_device_name()
        peak = _peak_tflops(name)
        out["gpu"] = name
        out["mfu"] = out["model_tflops_per_s"] / peak if peak else None
        out.update(peak_tflops=peak, peak_source="data sheet")
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _child(args: list[str]) -> dict:
    """Run one measurement in a fresh process; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--child", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def report_header(device, module: str, argv: list[str] | None) -> dict:
    """What every result file starts with: when, on what, with which versions, by which command."""
    import torch

    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device.type,
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "cpu_count": os.cpu_count(), "command": command_line(module, argv),
            "versions": _versions(), "git_commit": _git_commit()}


def save_report(report: dict, out: str | os.PathLike) -> None:
    from helpers import atomic

    atomic.write_text(out, json.dumps(report, indent=2) + "\n")  # a stopped run leaves a whole file
    print(f"wrote {out}")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that made a result file, for its provenance."""
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *map(shlex.quote, args)])


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pillow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def compare(archs, settings, n_per_class, device, workers_options, compile_="auto",
            peak_tflops=None, on_row=None) -> list[dict]:
    """Ours against naive per arch and setting; ``on_row(rows)`` after each (to save as it goes).

    ``peak_tflops``: the GPU's measured bf16 matmul rate; MFU is taken against it instead of
    the data sheet's number.
    """
    rows = []
    for setting in settings:
        for arch in (archs or (PAPER_A_ARCHS if setting == "paper_a" else ("vgg16",))):
            common = [arch, setting, str(n_per_class), device]
            ours = _child(["ours", *common, compile_])
            naive = [_child(["naive", *common, str(w)]) for w in workers_options]
            ok = [n for n in naive if "error" not in n]
            best = max(ok, key=lambda r: r["images_per_s"]) if ok else naive[0]
            row = {"arch": arch, "setting": setting, "ours": ours, "naive": best,
                   "naive_tried": naive}
            if "error" not in ours and "error" not in best:
                row["ratio"] = ours["images_per_s"] / best["images_per_s"]
            if peak_tflops and "model_tflops_per_s" in ours:
                ours.update(mfu=ours["model_tflops_per_s"] / peak_tflops, peak_tflops=peak_tflops,
                            peak_source="measured")
            rows.append(row)
            _print_row(row)
            if on_row:
                on_row(rows)
    return rows


def compare_bf16(archs, n_per_class, device, on_row=None) -> list[dict]:
    """Ours in fp32 and in bf16 autocast per arch (paper A's setting): the train-step ratio."""
    rows = []
    for arch in archs or ("resnet18", "vgg11", "efficientnet_lite0", "mobilenet_v3_large"):
        common = [arch, "paper_a", str(n_per_class), device, "false"]
        fp32, bf16 = _child(["ours", *common, "false"]), _child(["ours", *common, "true"])
        row = {"arch": arch, "fp32": fp32, "bf16": bf16}
        if "error" in fp32 or "error" in bf16:
            print(f"bf16 {arch:20s} error: {fp32.get('error') or bf16.get('error')}", flush=True)
        else:
            row["train_ratio"] = fp32["train_seconds"] / bf16["train_seconds"]
            row["ratio"] = bf16["images_per_s"] / fp32["images_per_s"]
            print(f"bf16 {arch:20s} fp32 {fp32['images_per_s']:7.1f} img/s  bf16 {bf16['images_per_s']:7.1f} "
                  f"img/s  ratio {row['ratio']:4.2f}x (training alone {row['train_ratio']:4.2f}x)", flush=True)
        rows.append(row)
        if on_row:
            on_row(rows)
    return rows


def compare_augment(archs, n_per_class, device, on_row=None) -> list[dict]:
    """Ours without and with per-image augmentation per arch (paper A's setting, bf16 as the
    engine resolves it): what augmenting adds to a training epoch."""
    rows = []
    for arch in archs or ("efficientnet_lite0", "resnet18"):
        common = [arch, "paper_a", str(n_per_class), device, "false", "auto"]
        plain, augmented = _child(["ours", *common, "false"]), _child(["ours", *common, "true"])
        row = {"arch": arch, "plain": plain, "augmented": augmented}
        if "error" in plain or "error" in augmented:
            print(f"augment {arch:20s} error: {plain.get('error') or augmented.get('error')}", flush=True)
        else:
            row["train_ratio"] = augmented["train_seconds"] / plain["train_seconds"]
            print(f"augment {arch:20s} plain {plain['train_seconds']:6.2f} s  augmented "
                  f"{augmented['train_seconds']:6.2f} s per training epoch  ratio {row['train_ratio']:4.3f}x "
                  f"({row['train_ratio'] - 1:+.1%}; target at most +10%)", flush=True)
        rows.append(row)
        if on_row:
            on_row(rows)
    return rows


def _print_row(row):
    o, n = row["ours"], row["naive"]
    if "error" in o or "error" in n:
        print(f"{row['setting']:8s} {row['arch']:20s} error: {o.get('error') or n.get('error')}")
        return
    mfu = f"  MFU {o['mfu']:.1%}" if o.get("mfu") is not None else ""
    print(f"{row['setting']:8s} {row['arch']:20s} ours{' (compiled)' if o.get('compiled') else ''} "
          f"{o['images_per_s']:8.1f} img/s  "
          f"naive {n['images_per_s']:8.1f} img/s (workers={n['workers']})  "
          f"ratio {row['ratio']:5.2f}x  peak mem ours {o['peak_mem_mb']:.0f} MB / "
          f"naive {n['peak_mem_mb']:.0f} MB{mfu}", flush=True)


def scale(device, arch="resnet18") -> list[dict]:
    """Wall time of one training epoch of ours at three data sizes and three resolutions."""
    rows = []
    for n_per_class, size in [(50, 64), (100, 64), (200, 64), (100, 32), (100, 128)]:
        setting_size = ["ours", arch, "paper_a", str(n_per_class), device]
        os.environ["BENCH_IMAGE_SIZE"] = str(size)
        result = _child(setting_size)
        result.update(n_per_class=n_per_class, image_size=size)
        rows.append(result)
        if "error" not in result:
            print(f"scale {arch} {n_per_class:4d}/class {size:4d}px: {result['n_train']} train "
                  f"images, {result['train_seconds'] + result['val_seconds']:.2f} s/epoch, "
                  f"{result['images_per_s']:.1f} img/s", flush=True)
    os.environ.pop("BENCH_IMAGE_SIZE", None)
    return rows


def saved_reports(folder: str | os.PathLike = RESULTS_DIR, pattern: str = "*.json"):
    """``(file name, report)`` of every saved result file matching ``pattern``, by name."""
    for path in sorted(Path(folder).glob(pattern)):
        yield path.name, json.loads(path.read_text())


def results_index(folder: str | os.PathLike = RESULTS_DIR):
    """Every saved result file with when, where, at which commit and by which command it was made."""
    import pandas as pd

    rows = []
    for name, report in saved_reports(folder):
        rows.append({"file": name, "created": report.get("created"),
                     "device": report.get("device_name"),
                     "commit": (report.get("git_commit") or "")[:10],
                     "command": report.get("command", "not recorded")})
    return pd.DataFrame(rows)


def load_results(folder: str | os.PathLike = RESULTS_DIR):
    """Every saved comparison as one table (for the book's performance page)."""
    import pandas as pd

    rows = []
    for name, report in saved_reports(folder):
        for row in report.get("rows", []):
            o, n = row["ours"], row["naive"]
            if "error" in o or "error" in n:
                continue
            rows.append({
                "file": name, "device": report["device_name"], "setting": row["setting"],
                "arch": row["arch"], "ours img/s": round(o["images_per_s"], 1),
                "ours compiled": o.get("compiled"),
                "naive img/s": round(n["images_per_s"], 1), "naive workers": n.get("workers"),
                "ours/naive": round(row["ratio"], 2),
                "peak MB ours": round(o["peak_mem_mb"]), "peak MB naive": round(n["peak_mem_mb"]),
                "MFU": None if o.get("mfu") is None else round(o["mfu"], 3),
            })
    # Versions and commits are in the results index; the file name links the two tables.
    return pd.DataFrame(rows).set_index("file") if rows else pd.DataFrame(rows)


def load_bf16(folder: str | os.PathLike = RESULTS_DIR):
    """Every saved fp32-against-bf16 comparison (``--bf16``), with whether that machine computes
    bf16 natively and whether the arch table turns bf16 on for a native-bf16 CPU."""
    import pandas as pd

    from helpers import models

    rows = []
    for name, report in saved_reports(folder, "*-bf16.json"):
        for r in report.get("bf16_rows", []):
            if "ratio" not in r:
                continue
            rows.append({"file": name,   # the results index gives each file's machine
                         "native bf16": "yes" if report.get("native_bf16") else "no (emulated)",
                         "arch": models.ARCHS[r["arch"]].label,
                         "fp32 img/s": round(r["fp32"]["images_per_s"], 1),
                         "bf16 img/s": round(r["bf16"]["images_per_s"], 1),
                         "bf16/fp32": round(r["ratio"], 2),
                         "used on a native CPU": "yes" if models.ARCHS[r["arch"]].cpu_bf16 else "no"})
    return pd.DataFrame(rows).set_index("file") if rows else pd.DataFrame(rows)


def load_scale(folder: str | os.PathLike = RESULTS_DIR):
    import pandas as pd

    rows = []
    for _, report in saved_reports(folder, "*-scale.json"):
        for r in report.get("scale", []):
            if "error" not in r:
                rows.append({"device": report["device_name"], "images/class": r["n_per_class"],
                             "train images": r["n_train"], "image px": r["image_size"],
                             "s/epoch": round(r["train_seconds"] + r["val_seconds"], 2),
                             "img/s": round(r["images_per_s"], 1)})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--arch", nargs="*", default=None)
    parser.add_argument("--setting", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--n-per-class", type=int, default=100,
                        help="synthetic images per class (default 100)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", nargs="*", type=int, default=None,
                        help="loader workers to try for naive (default: 0 and all cores)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile for ours (default auto: the engine's default, CUDA only)")
    parser.add_argument("--timed-epochs", type=int, default=1,
                        help="timed epochs after the warm-up; the fastest counts (default 1)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's measured bf16 matmul TFLOP/s for MFU (default: data sheet)")
    parser.add_argument("--scale", action="store_true", help="measure wall time vs data size")
    parser.add_argument("--bf16", action="store_true", help="ours in fp32 against bf16 autocast, per arch")
    parser.add_argument("--augment", action="store_true", help="ours without and with per-image augmentation")
    parser.add_argument("--out", default="", help="JSON file (default benchmarks/results/<device>.json)")
    args = parser.parse_args(argv)

    if args.child:
        variant, arch, setting, n, device, *rest = args.child
        if os.environ.get("BENCH_IMAGE_SIZE"):
            ds, _, batch, head = SETTINGS[setting]
            SETTINGS[setting] = (ds, int(os.environ["BENCH_IMAGE_SIZE"]), batch, head)
        if variant == "ours":
            result = run_ours(arch, setting, int(n), device, *rest)
        else:
            result = run_naive(arch, setting, int(n), device, int(rest[0]))
        print(json.dumps(result))
        return 0

    from helpers import training

    if args.timed_epochs < 1:
        parser.error("--timed-epochs must be at least 1")
    os.environ["BENCH_TIMED_EPOCHS"] = str(args.timed_epochs)  # read by the child processes
    device = training.resolve_device(args.device)
    workers = args.workers if args.workers is not None else sorted({0, os.cpu_count() or 1})
    report = {**report_header(device, "benchmarks.throughput", argv), "n_per_class": args.n_per_class,
              "timed_epochs": args.timed_epochs}
    kind = "-scale" if args.scale else "-bf16" if args.bf16 else "-augment" if args.augment else ""
    out = args.out or RESULTS_DIR / f"{device.type}{kind}.json"
    if args.scale:
        report["scale"] = scale(args.device)
    elif args.augment:
        report["augment_rows"] = compare_augment(args.arch, args.n_per_class, args.device,
                                                 on_row=lambda rows: save_report({**report, "augment_rows": rows}, out))
    elif args.bf16:
        native = device.type == "cuda" or training.cpu_has_bf16()
        report["native_bf16"] = native
        print(f"{device.type}: bf16 {'native' if native else 'NOT native (emulated): ratios below 1 expected'}")
        report["bf16_rows"] = compare_bf16(args.arch, args.n_per_class, args.device,
                                           on_row=lambda rows: save_report({**report, "bf16_rows": rows}, out))
    else:
        # Saved after every arch, so a run stopped at a time limit keeps what it measured.
        report["rows"] = compare(args.arch, args.setting, args.n_per_class, args.device, workers,
                                 args.compile, args.peak_tflops,
                                 on_row=lambda rows: save_report({**report, "rows": rows}, out))
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
