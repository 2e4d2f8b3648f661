"""What a prepared folder holds, in words, tables and a figure: for the log, the data-prep
notebook and the book."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from .splits import SPLIT_NAMES


def save_samples(path: Path, images, labels, split, class_names, mean, std, synthetic: bool,
                 title: str, seed: int, per_class: int = 4) -> None:
    """Figure: per class, ``per_class`` raw train images then the same ones normalised."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    k = len(class_names)
    fig = Figure(figsize=(2.0 * per_class * 2, 2.1 * k + 1.0), dpi=90)
    axes = fig.subplots(k, 2 * per_class, squeeze=False)
    m = np.asarray(mean)[:, None, None]
    s = np.asarray(std)[:, None, None] + 1e-8
    for row, cls in enumerate(class_names):
        pool = np.flatnonzero((labels == row) & (split == "train"))
        pick = rng.choice(pool, size=min(per_class, len(pool)), replace=False) if len(pool) else []
        for j in range(per_class):
            for half in (0, 1):
                ax = axes[row, j + half * per_class]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(pick):
                    ax.axis("off")
                    continue
                img = images[pick[j]]
                if half == 0:
                    ax.imshow(img.transpose(1, 2, 0))
                else:
                    z = (img / 255.0 - m) / s
                    ax.imshow(np.clip((z + 2.5) / 5.0, 0, 1).transpose(1, 2, 0))
                if row == 0 and j == 0:
                    ax.set_title("raw (uint8)" if half == 0 else "normalised (z, ±2.5)", fontsize=9)
            axes[row, 0].set_ylabel(cls, fontsize=11)
    if synthetic:
        fig.suptitle(f"SYNTHETIC DATA (phantoms, not patient images)\n{title}",
                     color="crimson", fontweight="bold", fontsize=12)
    else:
        fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.995, bottom=0.01, top=1 - 0.9 / fig.get_figheight(),
                        wspace=0.04, hspace=0.06)   # fixed layout: tight_layout is slow
    fig.savefig(path)


def _reason_kind(reason: str) -> str:
    """'truncated image: ...' -> 'truncated image'; 'hidden file (.x)' -> 'hidden file'."""
    return reason.split(":")[0].split(" (")[0]


def reason_counts(skipped: list[tuple[str, str]]) -> dict[str, int]:
    return dict(Counter(_reason_kind(reason) for _, reason in skipped))


def print_summary(info: dict, out: Path) -> None:
    tag = "SYNTHETIC DATA" if info["synthetic"] else "real data"
    print(f"[data] {info['dataset']} ({tag}) from {info['source_dir']}")
    print(f"[data] {info['n_images']} images at {info['image_size']} px, {info['split']} split, "
          f"seed {info['seed']}; {info['n_skipped']} files skipped, "
          f"{info['n_discarded_by_balance']} discarded to balance")
    reasons = {k: v for k, v in info["skipped_reasons"].items()}
    if reasons:
        print("[data] not used: " + "; ".join(f"{v} {k}" for k, v in sorted(reasons.items())))
        print(f"[data] every file not used is listed with its reason in {out / 'skipped.csv'}")
    print(counts_table(info).to_string())
    print(f"[data] prepared -> {out}")


def source_note(info: dict) -> str:
    """One Markdown line saying where the images came from; loud when they are synthetic."""
    if info["synthetic"]:
        return ("**SYNTHETIC DATA**: phantom images drawn by `helpers.data`, not patient images. "
                "Nothing here says anything about real radiographs or CT scans. "
                "Pass `data_dir` to use the real Kaggle download.")
    return f"Real data from `{info['source_dir']}`."


def counts_table(info: dict):
    """Images per class and split, with totals (a pandas DataFrame)."""
    import pandas as pd

    table = pd.DataFrame(info["counts"]).T.reindex(columns=list(SPLIT_NAMES))
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table


def stats_table(info: dict):
    """Per-channel normalisation statistics of the train split ([0, 1] scale)."""
    import pandas as pd

    return pd.DataFrame({"mean": info["mean"], "std": info["std"]}, index=["R", "G", "B"])


def skipped_summary(folder: str | os.PathLike):
    """Files not used, counted by reason, from skipped.csv (empty table when none)."""
    import pandas as pd

    skipped = pd.read_csv(Path(folder) / "skipped.csv", keep_default_na=False)
    if skipped.empty:
        return pd.DataFrame({"files": [0], "example": [""]}, index=pd.Index(["(no file skipped)"], name="reason"))
    kind = skipped["reason"].map(_reason_kind)
    table = skipped.assign(reason=kind).groupby("reason").agg(files=("path", "size"),
                                                               example=("path", "first"))
    return table.sort_values("files", ascending=False)
