"""packft.plots: the figures carry the right data and save as real PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packft.plots import length_histogram, row_fill_histogram, save_figure


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
