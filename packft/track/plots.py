"""The plots logged with every pack run (sample lengths, row fill) and training run (curves).

* :func:`length_histogram`: how long the samples are *before* any truncation, with the sequence
  length (and the row capacity ``seq_length - 1``) drawn as vertical lines, so overlong samples
  stand out; the title counts what was cut (samples truncated, dropped, split; tokens lost).
* :func:`row_fill_histogram`: real tokens per packed row as a fraction of ``seq_length``; a tight
  pack is a spike just below 1.0 (a row always keeps at least one pad).
* :func:`training_curves`: loss and learning rate over the optimizer steps of a training run.

Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state), so they
are safe to create in worker threads and never open a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packft.core.atomic import atomic_writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["length_histogram", "row_fill_histogram", "save_figure", "training_curves"]


def _new_figure(title: str) -> tuple[Figure, object]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def length_histogram(
    lengths: np.ndarray,
    seq_length: int,
    *,
    bins: int = 60,
    weights: np.ndarray | None = None,
    cut: dict[str, int] | None = None,
    before_truncation: bool = True,
) -> Figure:
    """Histogram of sample lengths (tokens) with ``seq_length`` and the row capacity marked.

    Args:
        lengths: sample lengths before truncation (any integer dtype); with ``weights``, the
            distinct lengths and ``weights`` their counts.
        seq_length: the packed row length.
        bins: number of histogram bins.
        weights: samples per length (None: one per entry of ``lengths``).
        cut: what truncation removed, named in the title: ``truncated``, ``dropped``,
            ``split`` (samples) and ``tokens_cut``.
        before_truncation: False when only the stored (already cut) lengths were available.

    Raises:
        ValueError: ``seq_length`` is not positive.
    """
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    data = np.asarray(lengths, dtype=np.int64)
    counts = np.ones(data.size, np.int64) if weights is None else np.asarray(weights, np.int64)
    n, over = int(counts.sum()), int(counts[data > seq_length - 1].sum())
    when = "before truncation" if before_truncation else "as stored (after truncation)"
    title = f"Sample lengths {when} (n={n:,}, over capacity: {over:,})"
    if cut:
        parts = [f"{k} {int(cut[k]):,}" for k in ("truncated", "dropped", "split") if cut.get(k)]
        if cut.get("tokens_cut"):
            parts.append(f"{int(cut['tokens_cut']):,} tokens cut")
        title += "\n" + (", ".join(parts) if parts else "nothing cut")
    fig, ax = _new_figure(title)
    top = max(int(data.max()) if data.size else 0, seq_length) + 1
    ax.hist(data, bins=np.linspace(0, top, bins + 1), weights=counts, color="#4C72B0")
    ax.axvline(seq_length, color="#C44E52", linestyle="--", label=f"seq_length = {seq_length}")
    ax.axvline(seq_length - 1, color="#DD8452", linestyle=":", label="row capacity")
    ax.set_xlabel(f"tokens per sample ({when})")
    ax.set_ylabel("samples")
    ax.legend()
    return fig


def training_curves(steps: np.ndarray, loss: np.ndarray, lr: np.ndarray) -> Figure:
    """Loss (left axis) and learning rate (right axis) against the optimizer step."""
    steps, loss, lr = (np.asarray(a, dtype=np.float64) for a in (steps, loss, lr))
    final = f", final loss {loss[-1]:.4f}" if loss.size else ""
    fig, ax = _new_figure(f"Training: {steps.size:,} steps{final}")
    ax.plot(steps, loss, color="#4C72B0", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    right = ax.twinx()
    right.plot(steps, lr, color="#DD8452", linestyle="--", label="lr")
    right.set_ylabel("learning rate")
    right.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(handles=ax.get_lines() + right.get_lines(), loc="upper right")
    return fig


def row_fill_histogram(row_tokens: np.ndarray, seq_length: int, *, bins: int = 50) -> Figure:
    """Histogram of row fill = real tokens / ``seq_length`` over the packed rows.

    Args:
        row_tokens: real (non-pad) tokens per row.
        seq_length: the packed row length.
        bins: number of bins over [0, 1].

    Raises:
        ValueError: ``seq_length`` is not positive.
    """
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    fill = np.asarray(row_tokens, dtype=np.float64) / float(seq_length)
    mean = float(fill.mean()) if fill.size else 0.0
    fig, ax = _new_figure(f"Row fill (rows={fill.size:,}, mean={mean:.2%})")
    ax.hist(fill, bins=np.linspace(0.0, 1.0, bins + 1), color="#55A868")
    ax.axvline(mean, color="#C44E52", linestyle="--", label=f"mean = {mean:.3f}")
    ax.set_xlabel("real tokens / seq_length")
    ax.set_ylabel("rows")
    ax.set_xlim(0.0, 1.0)
    ax.legend()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (:func:`packft.core.atomic.atomic_writer`: readers never
    see half an image, a failed write leaves the previous one)."""
    path = Path(path)
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path
