"""The papers' own values as the pages quote them: their headline pairs, their range of
ImageNet gains and their design settings, all read from ``helpers/published.yaml``.

Glued by ``notebooks/summary.ipynb``: ``paper_a_*``, ``paper_b_*`` and ``block_size``.
"""

from __future__ import annotations

from typing import Any

from . import metrics
from .params import PAIR
from .report import glue_name


def paper_gain_range(dataset: str) -> str:
    """'2.8–4.8 points': the range of ImageNet − scratch test accuracy the paper published."""
    values = metrics.PAPER_VALUES[dataset]["values"]
    gains = [100 * (v["test_accuracy"] - values[(a, h, "scratch")]["test_accuracy"])
             for (a, h, arm), v in values.items() if arm == "imagenet" and (a, h, "scratch") in values]
    lo, hi = min(gains), max(gains)
    return f"{lo:.1f} points" if lo == hi else f"{lo:.1f}–{hi:.1f} points"


def paper_value(dataset: str, arch: str, head: str, arm: str, metric: str = "test_accuracy") -> float:
    """One published value from published.yaml, with a clear error when it is not there."""
    try:
        return metrics.PAPER_VALUES[dataset]["values"][(arch, head, arm)][metric]
    except KeyError:
        raise KeyError(f"{metrics.PUBLISHED_FILE} has no {metric} for {dataset} {arch}/{head}/{arm}") from None


def paper_headlines() -> dict[str, Any]:
    """Glue name -> each paper's headline pair and its range of ImageNet gains, named after the
    paper and arch: ``paper_a_test_acc_vgg11_imagenet``, ``paper_a_gain_range``."""
    out = {}
    for ds, paper in metrics.PAPER_VALUES.items():
        arch, head = paper["headline"]
        for arm in PAIR:
            name = glue_name(paper["name"], "test_acc", arch, "" if head == "replace" else head, arm)
            out[name] = paper_value(ds, arch, head, arm)
        out[glue_name(paper["name"], "gain_range")] = paper_gain_range(ds)
    return out


def paper_settings() -> dict[str, str]:
    """Glue name -> text of every design setting published.yaml transcribes, named after the
    paper (``paper_a_per_class`` -> "1,345"), paper A's fixed normalisation (``paper_a_normalize``),
    and this package's split shares (``split_ratio``) and block size (``block_size``)."""
    from .data.splits import BLOCK_SIZE, ratio_text
    from .models import PAPER_A_STATS

    def text(value) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.0e}".replace("e-0", "e-")   # 1e-4, as the pages write rates
        return f"{value:,}" if isinstance(value, int) else str(value)

    (mean, *_), (std, *_) = PAPER_A_STATS
    out = {"block_size": str(BLOCK_SIZE), "split_ratio": ratio_text(),   # this package's own
           "paper_a_normalize": f"mean {mean} and standard deviation {std}"}
    for paper in metrics.PAPER_VALUES.values():
        prefix = glue_name(paper["name"])
        out.update({glue_name(prefix, k): text(v) for k, v in paper["settings"].items()})
    return out

