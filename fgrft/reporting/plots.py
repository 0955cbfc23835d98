"""PNG plots: accuracy per model and benchmark with CI bars; paired differences with CIs.

Matplotlib runs headless (Agg). One accuracy figure per table (scale, scorer,
prompt) and one forest plot of paired differences per (scale, scorer), so a
figure never mixes numbers that the tables keep apart.
"""
from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fgrft.reporting.assemble import Report  # noqa: E402
from fgrft.reporting.paired import PairedResult  # noqa: E402
from fgrft.reporting.eval_runs import fmt_t  # noqa: E402
from fgrft.reporting.tables import COLUMNS, Row, TableKey  # noqa: E402

DPI = 130


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _two_lines(comparison: str) -> str:
    """What differs on the first line, what the two runs share below it."""
    head, sep, rest = comparison.partition(" · ")
    return _wrap(head, 42) + ("\n" + _wrap(rest, 42) if sep else "")


TOY_TITLE = "TOY SCALE: the embedded model under thesis labels, numbers mean nothing\n"
# Average character width of the title font, in font sizes (DejaVu Sans runs about 0.55-0.6).
_CHAR_WIDTH = 0.6


def fit_title(text: str, fig_width_in: float, fontsize: float) -> str:
    """``text`` wrapped to the figure's width, so a narrow figure never clips its title."""
    per_line = max(20, int(fig_width_in * 72 / (fontsize * _CHAR_WIDTH)))
    return "\n".join(textwrap.fill(line, per_line) if line else line for line in text.split("\n"))


def items_note(counts: dict[str, int]) -> str:
    """How many items were scored: one number when every benchmark column has the same count."""
    counts = {c: n for c, n in counts.items() if c != "avg" and n}
    if not counts:
        return ""
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        return f"{n} items" + (f" per column ({len(counts)} columns)" if len(counts) > 1 else "")
    return "items: " + ", ".join(f"{c} {n}" for c, n in counts.items())


def _title_color(scale: str) -> str:
    return "red" if scale == "toy" else "black"


def accuracy_plot(key: TableKey, rows: list[Row], path: Path) -> Path:
    """Grouped bars: one group per benchmark column, one bar per row, 95% CI (or ±sd) whiskers,
    and the thesis's value where a claim exists (black diamond)."""
    columns = [c for c in COLUMNS if any(c in r.cells for r in rows)]
    n = len(rows)
    width = 0.8 / max(n, 1)
    fig_w = max(10.0, 4.5 + len(columns) * (0.5 + 0.35 * n))  # room for the legend on the right
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    cmap = plt.get_cmap("tab10")
    thesis_labelled = False  # one legend entry for all thesis markers
    for i, row in enumerate(rows):
        xs, ys, lo, hi, thesis_x, thesis_y = [], [], [], [], [], []
        for j, column in enumerate(columns):
            cell = row.cells.get(column)
            if cell is None:
                continue
            x = j + (i - (n - 1) / 2) * width
            y = cell.mean * 100
            if cell.ci and not math.isnan(cell.ci[0]):
                low, high = cell.ci[0] * 100, cell.ci[1] * 100
            elif cell.sd is not None:
                low, high = y - cell.sd * 100, y + cell.sd * 100
            else:
                low = high = y
            xs.append(x), ys.append(y), lo.append(y - low), hi.append(high - y)
            shown = row.checks.get(column)
            if shown is not None:
                thesis_x.append(x), thesis_y.append(shown.claim.value)
        label = f"{row.label}, T={fmt_t(row.temperature)}"
        ax.bar(xs, ys, width * 0.92, color=cmap(i % 10), label=_wrap(label), zorder=2)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
        if thesis_x:
            ax.scatter(thesis_x, thesis_y, marker="D", s=28, color="black", zorder=4,
                       label=None if thesis_labelled else "thesis (published)")
            thesis_labelled = True
    ax.set_xticks(range(len(columns)), [c if c != "avg" else "avg\n(item-weighted)" for c in columns])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    toy = TOY_TITLE if key.scale == "toy" else ""
    counts = {c: max((r.cells[c].items or r.cells[c].total or 0) for r in rows if c in r.cells) for c in columns}
    note = items_note(counts)
    title = f"{toy}Accuracy with 95% CI — {key.title}" + (f" — {note}" if note else "")
    fig.suptitle(fit_title(title, fig_w, 11), fontsize=11, color=_title_color(key.scale))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def paired_plot(scale: str, scorer: str, results: list[PairedResult], path: Path) -> Path:
    """Forest plot, one panel per benchmark column: A − B per comparison with its bootstrap CI.

    Comparisons are rows shared by all panels and the x axis is shared, so a
    gap on MedQA and one on PubMedQA are read on the same scale. Blue: McNemar
    p < 0.05; the p-value sits above each point.
    """
    columns = [c for c in (*COLUMNS,) if any(r.column == c for r in results)]
    columns += sorted({r.column for r in results} - set(columns))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in results:
        counts[(r.comparison, r.column)] += 1

    def name(r: PairedResult) -> str:
        # Seed replicates of one comparison get a row each, named by their seeds.
        if counts[(r.comparison, r.column)] > 1:
            return f"{r.comparison} [{r.a_runs[0].replicate or r.a_runs[0].short_id}]"
        return r.comparison

    comparisons = list(dict.fromkeys(name(r) for r in results))  # table order, top-down
    cells = {(name(r), r.column): r for r in results}
    extent = max(max(abs(r.ci_low), abs(r.ci_high)) for r in results) * 100
    limit = max(2.0, math.ceil(extent * 1.15))
    fig_w = 3.4 + 2.3 * len(columns)
    fig, axes = plt.subplots(1, len(columns), sharey=True, squeeze=False,
                             figsize=(fig_w, 1.3 + 0.55 * len(comparisons)))
    ys = {c: len(comparisons) - 1 - i for i, c in enumerate(comparisons)}
    for ax, column in zip(axes[0], columns):
        for comparison, y in ys.items():
            r = cells.get((comparison, column))
            if r is None:
                continue
            d, low, high = r.difference * 100, r.ci_low * 100, r.ci_high * 100
            color = "tab:blue" if r.p_value < 0.05 else "tab:gray"
            ax.errorbar([d], [y], xerr=[[d - low], [high - d]], fmt="o", color=color, ecolor=color, capsize=3,
                        markersize=5)
            ax.annotate(f"p={r.p_value:.2g}", (d, y), xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=7, color=color,
                        bbox=dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.85))
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-0.6, len(comparisons) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(column if column != "avg" else "avg (item-weighted)", fontsize=10)
        ax.set_xlabel("A − B (pp)", fontsize=9)
    axes[0][0].set_yticks(list(ys.values()), [_two_lines(c) for c in ys], fontsize=8)
    toy = TOY_TITLE if scale == "toy" else ""
    note = items_note({c: max(r.n_items for r in results if r.column == c) for c in columns})
    title = (f"{toy}Paired differences with 95% bootstrap CI — scale {scale}, scorer {scorer}"
             + (f", {note}" if note else "") + " (blue: McNemar p < 0.05)")
    fig.suptitle(fit_title(title, fig_w, 10), fontsize=10, color=_title_color(scale))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    paths = []
    for key, rows in report.tables.items():
        if rows:
            paths.append(accuracy_plot(key, rows, out_dir / f"accuracy_{key.slug}.png"))
    by_group: dict[tuple[str, str], list[PairedResult]] = defaultdict(list)
    for r in report.paired.compared:
        by_group[(r.scale, r.scorer)].append(r)
    for (scale, scorer), results in by_group.items():
        paths.append(paired_plot(scale, scorer, results, out_dir / f"paired_{scale}_{scorer}.png"))
    return paths
