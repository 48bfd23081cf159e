"""packft.track.plots: the figures carry the right data and save as real PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packft.track.plots import length_histogram, row_fill_histogram, save_figure, training_curves


def test_length_histogram_marks_seq_length(tmp_path: Path) -> None:
    lengths = np.array([5, 100, 200, 511, 512, 900], dtype=np.int32)
    fig = length_histogram(lengths, 512)
    ax = fig.axes[0]
    xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert xs == [511, 512]
    assert sum(patch.get_height() for patch in ax.patches) == lengths.size
    assert "over capacity: 2" in ax.get_title()
    out = save_figure(fig, tmp_path / "plots" / "lengths.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".*.tmp"))


def test_row_fill_histogram_counts_rows() -> None:
    fig = row_fill_histogram(np.array([511, 505, 256]), 512)
    ax = fig.axes[0]
    heights = np.array([p.get_height() for p in ax.patches])
    assert heights.sum() == 3
    assert heights[-1] == 2  # 511/512 and 505/512 fall in the top bin
    assert "rows=3" in ax.get_title()


def test_bad_seq_length() -> None:
    with pytest.raises(ValueError, match="seq_length"):
        length_histogram(np.array([1]), 0)
    with pytest.raises(ValueError, match="seq_length"):
        row_fill_histogram(np.array([1]), -1)


def test_length_histogram_takes_counts_and_names_what_was_cut() -> None:
    fig = length_histogram(
        np.array([100, 600, 900]), 512, weights=np.array([5, 2, 1]),
        cut={"truncated": 2, "dropped": 1, "split": 0, "tokens_cut": 1200},
    )  # fmt: skip
    ax = fig.axes[0]
    assert sum(patch.get_height() for patch in ax.patches) == 8
    assert "n=8, over capacity: 3" in ax.get_title()
    assert "truncated 2, dropped 1, 1,200 tokens cut" in ax.get_title()
    assert "split" not in ax.get_title() and "before truncation" in ax.get_xlabel()
    nothing = length_histogram(np.array([10]), 512, cut={"truncated": 0}).axes[0].get_title()
    assert nothing.endswith("nothing cut")


def test_training_curves_plot_loss_and_lr() -> None:
    fig = training_curves([1, 2, 3], [3.0, 2.5, 2.0], [1e-4, 5e-5, 1e-5])
    loss_ax, lr_ax = fig.axes
    assert list(loss_ax.get_lines()[0].get_ydata()) == [3.0, 2.5, 2.0]
    assert list(lr_ax.get_lines()[0].get_ydata()) == [1e-4, 5e-5, 1e-5]
    assert "3 steps, final loss 2.0000" in loss_ax.get_title()
