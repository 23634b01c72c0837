"""Small matplotlib helpers (Agg backend) for the rank analysis: phi heatmaps and spectra.

Each function draws on a given `ax`, or makes its own figure and saves it as PNG to `path`;
it returns the Axes (or the saved path when it made the figure).

Example:
    >>> import numpy as np
    >>> phi_heatmap(np.eye(4), path="/tmp/phi.png", title="A (r=4) vs A (r=4)")
    '/tmp/phi.png'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["phi_figure", "phi_heatmap", "spectrum_plot"]


def _save(fig, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _ticks(n: int) -> np.ndarray:
    """At most ~8 integer tick positions among 1..n, 1-based."""
    step = max(1, int(np.ceil(n / 8)))
    return np.arange(1, n + 1, step)


def phi_heatmap(
    grid,
    ax=None,
    path: str | Path | None = None,
    title: str = "",
    xlabel: str = "j",
    ylabel: str = "i",
    colorbar: bool = True,
):
    """Fig. 3 style heatmap of a phi grid: rows i (lower rank), columns j (higher rank), 0..1.

    Row i = 1 is at the top, as in the paper. NaN entries (undefined directions) are grey.

    Args:
        grid: (r1, r2) array, [i - 1, j - 1] = phi(i, j).
        ax: Axes to draw on; if None a new figure is made (and saved when `path` is given).
        path: PNG destination when `ax` is None.
        title, xlabel, ylabel: labels. colorbar: draw a 0..1 colorbar.

    Returns:
        The saved path (str) when it saved a figure, else the Axes.
    """
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"grid has shape {grid.shape}; allowed: a 2-D (r1, r2) phi grid.")
    own = ax is None
    if own:
        _, ax = plt.subplots(
            figsize=(1.2 + 0.25 * min(grid.shape[1], 32), 1.0 + 0.25 * min(grid.shape[0], 24))
        )
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    r1, r2 = grid.shape
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5),
    )
    ax.set_xticks(_ticks(r2))
    ax.set_yticks(_ticks(r1))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if own and path is not None:
        return _save(ax.figure, path)
    return ax


def phi_figure(
    grids: Mapping[str, object],
    path: str | Path,
    xlabel: str = "j",
    ylabel: str = "i",
    suptitle: str = "",
    ncols: int | None = None,
) -> str:
    """Heatmaps in a grid of `ncols` columns (default: one row), one colorbar each.

    E.g. {"Wq": g, "Wv": g, "random": baseline}, or one panel per layer and target.

    Returns:
        The saved PNG path.
    """
    if not grids:
        raise ValueError("grids is empty; allowed: a mapping title -> (r1, r2) phi grid.")
    ncols = min(ncols or len(grids), len(grids))
    nrows = -(-len(grids) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.0 * ncols, 3.2 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(grids) :]:
        ax.set_axis_off()
    for ax, (title, grid) in zip(axes.flat, grids.items(), strict=False):
        phi_heatmap(grid, ax=ax, title=title, xlabel=xlabel, ylabel=ylabel)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def spectrum_plot(
    spectra: Mapping[str, object],
    ax=None,
    path: str | Path | None = None,
    title: str = "",
    normalize: bool = False,
):
    """Singular values of dW against their index (1-based), one line per run, log y axis.

    Args:
        spectra: label -> singular values (any order; sorted descending here). Zeros are not
            drawn (log scale).
        ax, path: as in `phi_heatmap`.
        normalize: divide each spectrum by its largest value.

    Returns:
        The saved path (str) when it saved a figure, else the Axes.
    """
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(5.0, 3.5))
    for label, s in spectra.items():
        s = np.sort(np.asarray(s, dtype=float).ravel())[::-1]
        if normalize and s.size and s[0] > 0:
            s = s / s[0]
        k = np.arange(1, s.size + 1)
        keep = s > 0
        ax.plot(k[keep], s[keep], marker="o", markersize=3, label=str(label))
    ax.set_yscale("log")
    ax.set_xlabel("index k")
    ax.set_ylabel("s_k / s_1" if normalize else "singular value s_k of dW")
    if title:
        ax.set_title(title)
    if spectra:
        ax.legend(fontsize="small")
    if own and path is not None:
        return _save(ax.figure, path)
    return ax
