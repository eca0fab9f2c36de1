"""Plotting shared by the families' reports: matplotlib without a display, PNG bytes, log axes
labelled in plain numbers, one colour and line style per run, mean ± 2σ bands over seeds.

matplotlib is imported on first use, so reading runs and writing tables never pays for it.
Figures are returned as PNG bytes; each family writes them where it wants.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["band", "curve_png", "line_style", "plain_log_y", "png_bytes", "pyplot"]


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display; also safe under ssh and CI
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _tick(value: float, _pos: Any = None) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def plain_log_y(ax: Any) -> None:
    """Log y axis labelled 200 / 1,000 / 6,000 rather than 2x10^2; minor labels in short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    if hi / lo < 30:  # under ~1.5 decades there are too few major ticks to read values off
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(_tick))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def line_style(i: int) -> dict[str, str]:
    """Colour and line style of the i-th line: ten colours, then the next line style."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def band(ax: Any, xs: list[float], series: list[list[float]], style: dict[str, str], label: str) -> None:
    """Mean line and, with two or more series, a mean ± 2σ band (σ over the series at each x)."""
    import numpy as np

    a = np.array(series, dtype=float)  # (seeds, len(xs)), NaN where a seed has no value
    count = (~np.isnan(a)).sum(0)
    mean = np.full(len(xs), np.nan)
    mean[count > 0] = np.nanmean(a[:, count > 0], axis=0)  # NaN where no seed has a value (not drawn)
    ax.plot(xs, mean, linewidth=1.6, label=label, **style)
    if a.shape[0] > 1:
        ok = count > 1
        sd = np.zeros_like(mean)
        sd[ok] = np.nanstd(a[:, ok], axis=0, ddof=1)
        # Steps and classes are never negative: the band's lower edge stops at 0.
        ax.fill_between(np.array(xs)[ok], np.maximum(mean - 2 * sd, 0)[ok], (mean + 2 * sd)[ok],
                        color=style["color"], alpha=0.18,
                        linewidth=0)


def curve_png(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> bytes:
    """Label, grid and legend a one-panel line plot and return it as PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig)
