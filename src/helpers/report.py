"""Page formatting: tables for readers, figures as images, glue helpers and the one
synthetic/incomplete banner. The evaluate page is :mod:`helpers.evaluation`; the papers' own
values, as the pages quote them, :mod:`helpers.papers`.

Book pages cite notebook outputs by glue name (myst-nb ``{glue}``, ``{glue:text}``), scoped by
the notebook they come from (``generated/evaluate_ct_kidney.ipynb::table1``), so every name is
written out literally where it is glued and ``grep`` finds its origin. Tables are pandas
Stylers (:func:`styled`), figures PNG images (:func:`figure_image`); numbers a sentence needs
are glued as text that says "not run on this machine" when their runs are missing.

Glued by ``notebooks/explain.ipynb`` (:func:`glue_explain`): ``explain_banner``, ``explain``
(figure), ``explain_summary``, ``explain_note``, ``explain_arch``.
"""

from __future__ import annotations

import html
import re
import weakref
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import atomic, metrics, models
from .params import ARMS, arm_title

SYNTHETIC_SUFFIX = " — SYNTHETIC DATA"
# Display names: one table per kind. An arch or arm not listed shows under its own name.
ARCH_TITLES = {name: spec.label for name, spec in models.ARCHS.items()}  # the arch table's labels
NOT_RUN = "not run on this machine"  # headline text for a number whose runs did not happen
MISSING_LINK = "reproducibility.html#missing-runs"  # the full table of missing runs and reasons


def arm_color(arm: str) -> str:
    """The arm table's colour; a from-* arm gets a stable one of its own."""
    if arm in ARMS:
        return ARMS[arm].color
    others = sns.color_palette("Dark2").as_hex()
    return others[sum(map(ord, arm)) % len(others)]


# ------------------------------------------------------------------------- glue


def glue_name(*parts: Any) -> str:
    """Stable glue key from parts: lower case, non-alphanumerics collapsed to '_'."""
    text = "_".join(str(p) for p in parts if str(p) != "")
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def glue(name: str, value: Any, display: bool = False) -> None:
    """myst_nb.glue under a name checked to be stable."""
    from myst_nb import glue as myst_glue

    if name != glue_name(name):
        raise ValueError(f"glue name {name!r} is not normalised; use glue_name(...) -> {glue_name(name)!r}")
    if isinstance(value, (float, np.floating)):
        value = float(value)
    myst_glue(name, value, display=display)


# ------------------------------------------------------------------------ files


def write_text(path: str | Path, text: str) -> Path:
    return atomic.write_text(Path(path), text)


def save_figure(fig: plt.Figure, out_dir: str | Path, stem: str, dpi: int = 130) -> list[Path]:
    """Save a figure as PNG and SVG (atomically)."""
    return [atomic.save_figure(fig, Path(out_dir) / f"{stem}.{ext}", dpi) for ext in ("png", "svg")]


def _flat_columns(df: pd.DataFrame) -> pd.DataFrame:
    if isinstance(df.columns, pd.MultiIndex):
        df = df.copy()
        df.columns = [" | ".join(str(c) for c in col) for col in df.columns]
    return df


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str, markdown: bool = True,
                index: bool = False) -> list[Path]:
    """Write a table as CSV (and Markdown), atomically."""
    flat = _flat_columns(df)
    out = [atomic.write(Path(out_dir) / f"{stem}.csv", lambda p: flat.to_csv(p, index=index))]
    if markdown:
        out.append(write_text(Path(out_dir) / f"{stem}.md", flat.to_markdown(index=index) + "\n"))
    return out


# ---------------------------------------------------------------------- banners


def synthetic_suffix(synthetic: bool | None) -> str:
    if synthetic is True:
        return SYNTHETIC_SUFFIX
    if synthetic is None:
        return " — DATA SOURCE NOT RECORDED"
    return ""


_WEIGHTS_REASON = re.compile(r"ImageNet weights for (\S+) are not cached")


def _names(items: Sequence[str], most: int = 4) -> str:
    items = list(dict.fromkeys(items))
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def missing_summary(gaps: Sequence[tuple[str, str]]) -> list[str]:
    """One short sentence per cause of the runs that did not run (Markdown)."""
    weights, pending, other = [], [], []
    for run, why in gaps:
        m = _WEIGHTS_REASON.search(str(why))
        if m:
            weights.append(m[1])
        elif str(why) == "not run":  # no status yet: the workflow has not reached it
            pending.append(Path(run).name)
        else:
            other.append((Path(run).name, str(why)))
    lines = []
    if weights:
        lines.append(f"No ImageNet weights on this machine for {_names(weights)}: run "
                     "`python -m helpers.weights fetch` (or `unpack` a weights pack), then `make report`.")
    if pending:
        lines.append(f"{len(pending)} not tried yet ({_names(pending, 2)}): `make report` runs them.")
    if other:
        first = (other[0][1].splitlines() or ["no reason recorded"])[0]
        first = first if len(first) <= 90 else first[:87] + "…"
        lines.append(f"{len(other)} failed ({_names([r for r, _ in other], 2)}); first reason: {first}")
    return lines


def banner(runset: metrics.RunSet | None = None, *, synthetic: bool | None = None,
           missing: Sequence[tuple[str, str]] = (), expected: Sequence[str] = (), total: int | None = None,
           experiment: str = "", link: str = "", fmt: str = "html") -> str:
    """The one admonition about synthetic data and runs that did not run: a title and one short
    paragraph, however many runs are missing; the full per-run reasons live in one table (``link``).

    ``missing``: (run folder or name, reason) pairs; ``runset`` adds its missing, incomplete and
    mismatched runs; ``expected``: run names the grid should have (absent ones count as missing);
    ``total``: runs in the grid, for "n of total"; ``link``: where the full table is (relative to
    the page showing the banner; "" = no link). Returns "" when there is nothing to warn about.
    ``fmt``: "html" (renders in Jupyter and the book) or "myst" (a ``{warning}`` directive).
    """
    if fmt not in ("html", "myst"):
        raise ValueError(f"fmt must be 'html' or 'myst'; got {fmt!r}")
    gaps = list(missing)
    if runset is not None:
        synthetic = runset.synthetic if synthetic is None else synthetic
        gaps += list(runset.missing) + list(runset.incomplete)
        gaps += [(str(r.path), "metrics.json disagrees with the recomputation: " + "; ".join(r.mismatches))
                 for r in runset.mismatched]
        have = {r.name for r in runset.runs} | {Path(p).name for p, _ in gaps}
        gaps += [(name, "not found") for name in expected if name not in have]
    titles, sentences = [], []
    if synthetic is True:
        titles.append("Synthetic data")
        source = f" (experiment `{experiment}`)" if experiment else ""
        sentences.append(f"Every number and figure comes from synthetic phantoms{source}, not from patients.")
    elif synthetic is None and runset is not None and runset.runs:
        titles.append("Data source not recorded")
        sentences.append("Some runs do not record whether their data were synthetic or real.")
    if gaps:
        noun = "run" if len(gaps) == 1 and not total else "runs"
        titles.append(f"{len(gaps)}{f' of {total}' if total else ''} {noun} did not run")
        sentences += missing_summary(gaps)
        if link:
            sentences.append(f"[Every missing run and why]({link}).")
    if not titles:
        return ""
    title = " · ".join(titles)
    body = " ".join(sentences)
    if fmt == "myst":
        return f":::{{warning}} {title}\n{body}\n:::\n"
    from markdown_it import MarkdownIt

    html_body = MarkdownIt("commonmark", {"html": False}).render(body)
    return (f'<div class="admonition warning report-banner"><p class="admonition-title">{html.escape(title)}</p>'
            f"{html_body}</div>")


def markdown_html(text: str):
    """Markdown as an HTML display object: myst-nb pastes text/html across pages, not text/markdown."""
    from IPython.display import HTML
    from markdown_it import MarkdownIt

    return HTML(MarkdownIt("commonmark").enable("table").render(text or ""))


# --------------------------------------------------------------- tables for readers


TITLED_COLUMNS = ("arm", "arm_a", "arm_b")


def _decimals(values: pd.Series, digits: int) -> int:
    """The fewest decimals, at most ``digits``, that show every value as it is."""
    return next((d for d in range(digits) if np.allclose(values, values.round(d), rtol=0, atol=1e-9)), digits)


def styled(df: pd.DataFrame, digits: int = 3, caption: str = "", styler=None):
    """A table as a reader sees it (pandas Styler): no index, "—" for absent values, floats
    rounded to ``digits``, every row (no truncation), arms by their titles, in a frame that
    scrolls sideways instead of overflowing the page (``.report-table`` in book/_static)."""
    from IPython.display import HTML

    if styler is None:
        # A meaningful index (class names, say) becomes a column: the index column itself is hidden.
        df = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df.copy()
        for col in TITLED_COLUMNS:
            if col in df.columns:
                df[col] = df[col].map(lambda a: arm_title(str(a)) if isinstance(a, str) else a)
        df.columns = [str(c).replace("_", " ") for c in df.columns]
        text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        styler = df.style.hide(axis="index").format(precision=digits, na_rep="—")
        for col in df.columns:   # a column already rounded (img/s to 0.1) keeps its own decimals
            if pd.api.types.is_float_dtype(df[col]) and len(df[col].dropna()):
                styler = styler.format(precision=_decimals(df[col].dropna(), digits), na_rep="—", subset=[col])
            elif df[col].dtype == object:   # a column of counts and a share: each float as it was rounded
                floats = pd.Series([v for v in df[col] if isinstance(v, float) and not np.isnan(v)], dtype=float)
                if len(floats):
                    d = _decimals(floats, digits)
                    styler = styler.format(lambda v, d=d: f"{v:.{d}f}" if isinstance(v, float) else v,
                                           na_rep="—", subset=[col])
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    # The caption sits above the frame, so that it wraps at page width instead of scrolling.
    note = f'<p class="report-caption">{html.escape(caption)}</p>' if caption else ""
    return HTML(f'{note}<div class="report-table">{styler.to_html()}</div>')


_PNG_CACHE: "weakref.WeakKeyDictionary[plt.Figure, dict[int, bytes]]" = weakref.WeakKeyDictionary()


def figure_image(fig: plt.Figure, dpi: int = 110, min_width: int = 300):
    """A figure as PNG bytes (IPython Image): what myst-nb pastes across pages is the image,
    never the Figure's text form. Displayed at its natural width, at least ``min_width`` px.

    Drawn once per figure and dpi: a notebook shows a figure and glues it, and the two must be
    the same bytes. myst-nb writes a pasted image's file only where the notebook itself shows
    that image, and a constrained-layout figure drawn twice can come out different, which left
    a page with a broken image."""
    import io

    from IPython.display import Image

    drawn = _PNG_CACHE.setdefault(fig, {})
    if dpi not in drawn:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        drawn[dpi] = buf.getvalue()
    plt.close(fig)
    width = int(fig.get_size_inches()[0] * dpi)
    return Image(data=drawn[dpi], format="png", width=max(width, min_width))


def glue_explain(res) -> list[str]:
    """Glue the explanation figure, its summary and note (pages cite
    ``generated/explain_<dataset>.ipynb::<name>``)."""
    from IPython.display import HTML

    items: dict[str, Any] = {
        "explain_banner": HTML(res.banner()),
        "explain": figure_image(res.figure, min_width=600),
        "explain_summary": styled(res.summary),
        "explain_note": markdown_html(res.note),
        "explain_arch": res.arch,
    }
    for name, value in items.items():
        glue(name, value, display=False)
    return list(items)
