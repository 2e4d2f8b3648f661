"""The study's named protocols beside its defaults: how a reader calls each one, which only
checks another's budget, what a protocol changed for the arms it trained itself, and whether a
budget was enough (the budget-doubling check).

A protocol is ``protocols: {name: TrainSettings}`` in the experiment file; its runs carry its name
(``RunId.protocol``). Runs an arm would train exactly as under the defaults are the defaults'
(``study.load`` lends them; ``params.same_training``).
"""
from __future__ import annotations

import pandas as pd

from . import experiment as ex
from . import metrics, models
from .study import _groups, correctness, seed_interval


KINDS = ("converged", "inputs", "recipe", "check", "budget")


def kind(exp: dict, protocol: str) -> str:
    """What a protocol is, from its settings: "converged" (the defaults, with early stopping),
    "inputs" (the same but for the input normalisation), "recipe" (augmentation or a cosine
    schedule), "check" (another protocol's budget doubled: :func:`checks`), or "budget" (a fixed
    budget, such as a paper's)."""
    settings = {**exp["defaults"], **exp["protocols"].get(protocol, {})}
    if checks(exp, protocol):
        return "check"
    if settings.get("augment") or settings.get("lr_schedule") == "cosine":
        return "recipe"
    if not settings.get("early_stopping_patience"):
        return "budget"
    if not protocol:
        return "converged"
    same = {k: v for k, v in settings.items() if k != "normalize"} == {
        k: v for k, v in exp["defaults"].items() if k != "normalize"}
    return "inputs" if same else "budget"


def protocol_title(exp: dict, protocol: str) -> str:
    """A protocol in a reader's words, from its settings, as "<name>: <detail>" (see :func:`kind`)."""
    settings = {**exp["defaults"], **exp["protocols"].get(protocol, {})}
    patience = settings.get("early_stopping_patience", 0)
    what = kind(exp, protocol)
    if what == "converged":
        tuned = any(e.get("tune") for e in exp["grid"])
        return (f"to convergence (early stopping, patience {patience}, cap {settings.get('epochs')} epochs)"
                + (", each arm at its own learning rate, chosen on validation" if tuned else ""))
    if what in ("recipe", "check"):
        budgets = sorted({int(r["epochs"]) for rid, r in ex.runs(exp).items() if rid.protocol == protocol})
        parts = (["per-image augmentation"] if settings.get("augment") else []) + [
            f"{'AdamW' if settings.get('optimizer') == 'adamw' else 'Adam'}"
            + (f" (weight decay {settings.get('weight_decay'):g})" if settings.get("weight_decay") else ""),
            f"{settings.get('warmup_epochs', 0)} warm-up epochs then a cosine to zero over "
            + " or ".join(map(str, budgets)) + " epochs",
            "best epoch on validation"]
        if settings.get("normalize") == "weights":
            parts.append("each pretrained arm on its weights' own inputs")
        return f"the standard recipe{' at twice the budget' if what == 'check' else ''}: " + ", ".join(parts)
    if what == "inputs":
        return ("own input normalisation: to convergence as above, but each pretrained arm fed the inputs its "
                "ImageNet weights were trained on; scratch arms unchanged")
    stop = f"early stopping (patience {patience})" if patience else "no early stopping"
    budget = f"{settings.get('epochs')} epochs at lr {settings.get('lr', 1e-4):g}, {stop}"
    if not protocol:
        return f"a fixed budget: {budget}"
    name = protocol.replace("paper_a", "paper A").replace("paper_b", "paper B")
    return f"{name}'s budget: {budget}"


def short_title(exp: dict, protocol: str) -> str:
    """A narrow table cell: "paper A", "the standard recipe", "own input normalisation"."""
    return protocol_title(exp, protocol).partition(":")[0].removesuffix("'s budget")


def checks(exp: dict, protocol: str) -> str | None:
    """The protocol whose budget ``protocol`` checks (every entry of it takes its rate from that
    protocol's sweep: the same recipe at a longer budget), else None."""
    entries = [e for e in exp["grid"] if (e.get("protocol") or "") == protocol]
    sources = {(e.get("tune") or {}).get("protocol") for e in entries}
    return next(iter(sources)) if entries and len(sources) == 1 and None not in sources else None


def answer_protocols(exp: dict) -> list[str]:
    """The named protocols whose runs answer the question (not those that only check another's
    budget), in file order."""
    return [p for p in exp["protocols"] if not checks(exp, p)]


def answering(exp: dict, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` (a ``protocol`` column) that answer the question: the default
    protocol's and the answer protocols'; a budget check's runs only say whether a budget was enough."""
    return table[table["protocol"].isin(["", *answer_protocols(exp)])].reset_index(drop=True)


def protocol_shift(runsets: dict[str, metrics.RunSet], protocol: str, arch: str = models.REFERENCE_ARCH) -> pd.DataFrame:
    """What ``protocol`` changed, per dataset, split and arm that it trained itself (not
    borrowed): the arm's accuracy under the defaults and under ``protocol`` on the seeds both
    have, and the difference, paired by image and seed, with its interval."""
    rows = []
    for ds, runset in runsets.items():
        groups = _groups(runset, arch)
        for (a, head, split, fraction, p, arm), runs in groups.items():
            base = groups.get((a, head, split, fraction, "", arm))
            if p != protocol or fraction != 1 or not base:
                continue
            new, old = correctness(runs), correctness(base)
            if new.equals(old.reindex_like(new)) and {r.path for r in runs} == {r.path for r in base}:
                continue   # the same runs (borrowed)
            seeds = sorted(set(new.columns) & set(old.columns))
            if not seeds:
                continue
            new, old = new[seeds], old.loc[new.index, seeds]
            ci, method = seed_interval(ds, new, old, runs)
            rows.append({"dataset": ds, "split": split, "arm": arm, "seeds": len(seeds),
                         "before": float(old.to_numpy().mean()), "after": float(new.to_numpy().mean()),
                         "difference": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "interval": method,
                         "lr_before": sorted({r.params.get("lr") for r in base}),
                         "lr_after": sorted({r.params.get("lr") for r in runs})})
    return pd.DataFrame(rows, columns=["dataset", "split", "arm", "seeds", "before", "after", "difference",
                                       "ci_low", "ci_high", "interval", "lr_before", "lr_after"])


def budget_checks(exp: dict, runsets: dict[str, metrics.RunSet], noise: float = 0.01) -> pd.DataFrame:
    """The budget-doubling check of every protocol that has one: per network and arm, seed 0's
    best validation accuracy at the protocol's budget and at twice it (the same rate, the one
    its sweep chose), and whether doubling gained more than ``noise`` (about one point on 600
    validation images: the budget was not enough)."""
    rows = []
    for longer in exp["protocols"]:
        base = checks(exp, longer)
        if not base:
            continue
        stage = min(n for rid, n in ex.stages(exp).items() if rid.protocol == longer)
        for ds, runset in runsets.items():
            got = {(r.arch, r.head, r.split, r.arm, r.id.protocol): r for r in runset.runs
                   if r.id.protocol in (base, longer) and r.seed == 0 and r.id.train_fraction == 1}
            for (a, head, split, arm, p), short in got.items():
                if p != base:
                    continue
                long_run = got.get((a, head, split, arm, longer))
                gain = None if long_run is None else long_run.metrics["best_val_acc"] - short.metrics["best_val_acc"]
                rows.append({"dataset": ds, "split": split, "arch": a, "head": head, "arm": arm,
                             "lr": short.params.get("lr"), "epochs": short.params.get("epochs"),
                             "best_val_acc": short.metrics["best_val_acc"], "best_epoch": short.metrics["best_epoch"],
                             "long_epochs": None if long_run is None else long_run.params.get("epochs"),
                             "long_best_val_acc": None if long_run is None else long_run.metrics["best_val_acc"],
                             "long_best_epoch": None if long_run is None else long_run.metrics["best_epoch"],
                             "gain": gain, "long_stage": stage,
                             "enough": None if gain is None else bool(gain <= noise)})
    return pd.DataFrame(rows, columns=["dataset", "split", "arch", "head", "arm", "lr", "epochs", "best_val_acc",
                                       "best_epoch", "long_epochs", "long_best_val_acc", "long_best_epoch", "gain",
                                       "enough", "long_stage"])
