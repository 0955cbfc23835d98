"""Report figures read right: titles fit the figure, and say how many items were scored."""
from __future__ import annotations

from types import SimpleNamespace

from fgrft.reporting import plots


def _capture(monkeypatch) -> list:
    figures: list = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    return figures


def _inside(fig) -> bool:
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    width = fig.get_size_inches()[0] * fig.dpi
    return box.x0 >= 0 and box.x1 <= width


def test_paired_plot_title_fits_one_benchmark_column_and_names_the_item_count(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    # The report of four MedMCQA replays: one benchmark column, thesis scorer.
    results = [SimpleNamespace(comparison=f"model{i} − model{i + 1} · FGRFT, T=0.5", column="MedMCQA",
                               difference=0.01 * i, ci_low=0.01 * i - 0.02, ci_high=0.01 * i + 0.02,
                               p_value=0.3, n_items=1000) for i in range(3)]
    plots.paired_plot("full", "thesis", results, tmp_path / "paired.png")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert "1000 items" in title and "McNemar" in title
    assert _inside(fig), title
    assert (tmp_path / "paired.png").stat().st_size > 0


def test_fit_title_wraps_only_what_does_not_fit():
    short = "Accuracy"
    assert plots.fit_title(short, 5.7, 10) == short
    long = "word " * 60
    lines = plots.fit_title(long.strip(), 5.7, 10).split("\n")
    assert len(lines) > 1 and all(len(line) <= int(5.7 * 72 / (10 * plots._CHAR_WIDTH)) for line in lines)


def test_items_note_says_per_column_counts():
    assert plots.items_note({"MedQA": 8, "PubMedQA": 8, "avg": 16}) == "8 items per column (2 columns)"
    assert plots.items_note({"MedMCQA": 1000}) == "1000 items"
    assert plots.items_note({"MedQA": 8, "MedMCQA": 7}) == "items: MedQA 8, MedMCQA 7"
