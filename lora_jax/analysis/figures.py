"""Small matplotlib helpers (Agg backend) for the rank analysis: phi heatmaps and spectra.

Each function draws on a given `ax`, or makes its own figure and saves it as PNG to `path`;
it returns the Axes (or the saved path when it made the figure).

The figures a sweep writes (`phi_figure`, `spectrum_plot`) are laid out by hand in inches:
no constrained layout or `bbox_inches="tight"`, whose text-measuring passes cost most of the
time, and a phi figure is one Axes of images with one colorbar (a 12-panel figure: 2.3 s of
CPU before, 0.2 s now).

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
from matplotlib.collections import LineCollection

__all__ = ["dynamics_plot", "phi_figure", "phi_heatmap", "spectrum_plot"]

DPI = 100
_CHAR_IN = 0.085  # width of an average character at 10 pt (DejaVu Sans), inches
# phi_figure layout, inches: one panel's image, and the room around it.
_PANEL_W, _PANEL_H = 2.3, 1.8
_LEFT, _RIGHT, _BOTTOM = 0.65, 0.85, 0.5  # y labels / shared colorbar / x labels of the last row
_TITLE_H, _LINE_H = 0.3, 0.22  # a panel title; one line of the figure title


def _save(fig, path: str | Path, tight: bool = False) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return str(path)


def _ticks(n: int) -> np.ndarray:
    """At most ~8 integer tick positions among 1..n, 1-based."""
    step = max(1, int(np.ceil(n / 8)))
    return np.arange(1, n + 1, step)


def _wrap(text: str, width_in: float) -> str:
    """Break `text` into lines that fit `width_in` inches, after spaces or commas (run names
    are Hydra override strings such as `rank=8,targets=qv,seed=0`)."""
    limit = max(16, int(width_in / _CHAR_IN))
    lines, line = [], ""
    for token in text.replace(",", ",\0").replace(" ", " \0").split("\0"):
        if line and len(line) + len(token) > limit:
            lines.append(line.rstrip())
            line = ""
        line += token
    return "\n".join([*lines, line.rstrip()])


def _phi_image(ax, grid: np.ndarray, extent: tuple[float, float, float, float]):
    """phi in [0, 1] over `extent` (left, right, bottom, top); undefined (NaN) cells grey."""
    return ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=plt.get_cmap("viridis").with_extremes(bad="lightgrey"),
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
        extent=extent,
    )


def _draw_phi(ax, grid: np.ndarray):
    r1, r2 = grid.shape
    im = _phi_image(ax, grid, (0.5, r2 + 0.5, r1 + 0.5, 0.5))
    ax.set_xticks(_ticks(r2))
    ax.set_yticks(_ticks(r1))
    return im


def _as_grid(grid) -> np.ndarray:
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"grid has shape {grid.shape}; allowed: a 2-D (r1, r2) phi grid.")
    return grid


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
    grid = _as_grid(grid)
    own = ax is None
    if own:
        _, ax = plt.subplots(
            figsize=(1.2 + 0.25 * min(grid.shape[1], 32), 1.0 + 0.25 * min(grid.shape[0], 24))
        )
    im = _draw_phi(ax, grid)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if own and path is not None:
        return _save(ax.figure, path, tight=True)  # one panel: the tight bbox is cheap
    return ax


def phi_figure(
    grids: Mapping[str, object],
    path: str | Path,
    xlabel: str = "j",
    ylabel: str = "i",
    suptitle: str = "",
    ncols: int | None = None,
) -> str:
    """Heatmaps in a grid of `ncols` columns (default: one row) and one 0..1 colorbar.

    E.g. {"Wq": g, "Wv": g, "random": baseline}, or one panel per layer and target. When
    every grid has the same shape, tick labels and axis labels are drawn on the outer panels
    only (left column, bottom of each column).

    The panels are images on one Axes whose data coordinates are the figure's inches, with
    tick labels as plain text: an Axes per panel (ticks, spines, layout) cost ~5x more.

    Returns:
        The saved PNG path.
    """
    if not grids:
        raise ValueError("grids is empty; allowed: a mapping title -> (r1, r2) phi grid.")
    arrays = {title: _as_grid(g) for title, g in grids.items()}
    n = len(arrays)
    ncols = min(ncols or n, n)
    nrows = -(-n // ncols)
    shared = len({g.shape for g in arrays.values()}) == 1
    gap_w = 0.25 if shared else _LEFT  # room for the next panel's y tick labels
    gap_h = _TITLE_H + (0.1 if shared else _BOTTOM)
    width = _LEFT + ncols * _PANEL_W + (ncols - 1) * gap_w + _RIGHT
    title = _wrap(suptitle, width - 0.2) if suptitle else ""
    top = _TITLE_H + (_LINE_H * (title.count("\n") + 1) + 0.1 if title else 0.0)
    height = top + nrows * _PANEL_H + (nrows - 1) * gap_h + _BOTTOM
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    segments, im = [], None  # panel frames and ticks: one LineCollection (one artist)
    for index, (name, grid) in enumerate(arrays.items()):
        row, col = divmod(index, ncols)
        x0 = _LEFT + col * (_PANEL_W + gap_w)
        y0 = top + row * (_PANEL_H + gap_h)  # top edge; y grows downwards (inches)
        x1, y1 = x0 + _PANEL_W, y0 + _PANEL_H
        r1, r2 = grid.shape
        im = _phi_image(ax, grid, (x0, x1, y1, y0))  # row i = 1 at the top, as in the paper
        segments.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
        ax.text((x0 + x1) / 2, y0 - 0.06, name, ha="center", va="bottom")
        if not shared or index + ncols >= n:  # no panel below this one
            for j in _ticks(r2):
                x = x0 + (j - 0.5) / r2 * _PANEL_W
                segments.append([(x, y1), (x, y1 + 0.05)])
                ax.text(x, y1 + 0.07, str(j), ha="center", va="top", fontsize="small")
            ax.text((x0 + x1) / 2, y1 + 0.27, xlabel, ha="center", va="top")
        if not shared or col == 0:
            for i in _ticks(r1):
                y = y0 + (i - 0.5) / r1 * _PANEL_H
                segments.append([(x0 - 0.05, y), (x0, y)])
                ax.text(x0 - 0.07, y, str(i), ha="right", va="center", fontsize="small")
            ax.text(x0 - 0.4, (y0 + y1) / 2, ylabel, ha="center", va="center", rotation=90)
    ax.add_collection(LineCollection(segments, colors="black", linewidths=0.8))
    ax.set_xlim(0.0, width)  # imshow and add_collection moved the limits
    ax.set_ylim(height, 0.0)
    grid_h = nrows * _PANEL_H + (nrows - 1) * gap_h
    cax = fig.add_axes(
        (
            (width - _RIGHT + 0.15) / width,
            (height - top - grid_h) / height,
            0.12 / width,
            grid_h / height,
        )
    )
    fig.colorbar(im, cax=cax, label="phi")
    if title:
        fig.suptitle(title, y=1 - 0.1 / height, va="top")
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
        ax, path: as in `phi_heatmap`. A figure made here has its legend to the right of the
            axes (it would hide the lines of a dozen adapters).
        normalize: divide each spectrum by its largest value.

    Returns:
        The saved path (str) when it saved a figure, else the Axes.
    """
    own = ax is None
    if own:
        # Axes 4.2 x 3.0 in at (0.75, 0.55); the width grows below to fit the legend.
        fig = plt.figure(figsize=(5.2, 4.0), dpi=DPI)
        ax = fig.add_axes((0.75 / 5.2, 0.55 / 4.0, 4.2 / 5.2, 3.0 / 4.0))
    if len(spectra) > 10:  # the default cycle repeats after 10 colours: 10 dark, 10 light
        colors = plt.get_cmap("tab20").colors
        ax.set_prop_cycle(color=colors[::2] + colors[1::2])
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
    if title and own:
        # A fixed y: the automatic title position measures every tick label of the Axes
        # (half the time of this figure); nothing is drawn above the Axes here.
        ax.set_title(_wrap(title, 4.2), y=1.0)
    elif title:
        ax.set_title(title)
    if not own:
        if spectra:
            ax.legend(fontsize="small")
        return ax
    fig = ax.figure
    top = 0.45 + _LINE_H * ax.get_title().count("\n")
    legend_w = 0.0
    if spectra:
        ncol = -(-len(spectra) // 16)  # at most 16 entries a column
        legend = ax.legend(
            fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=ncol
        )
        # One text-measuring pass for the legend alone, instead of a tight bbox of the figure.
        legend_w = legend.get_window_extent(fig.canvas.get_renderer()).width / DPI + 0.15
    width, height = 0.75 + 4.2 + max(legend_w, 0.25), 0.55 + 3.0 + top
    fig.set_size_inches(width, height)
    ax.set_position((0.75 / width, 0.55 / height, 4.2 / width, 3.0 / height))
    if path is not None:
        return _save(fig, path)
    return ax


# dynamics_plot's panels after phi: (title, key of a run's curves).
_DYNAMICS_PANELS = (
    ("amplification ||dW|| / ||U^T W V||", "amplification"),
    ("||dW||_F / ||W||_F", "dw_over_w"),
    ("effective rank of dW", "effective_rank"),
)
_TARGET_STYLES = ("-", "--", ":", "-.")


def _curves(ax, lines: list[tuple[str, list, dict]]) -> None:
    """One colour per run (or pair), one line style per target: (label, steps, {target: y})."""
    colors = plt.get_cmap("tab10").colors
    targets = sorted({t for _, _, by_target in lines for t in by_target})
    for i, (label, steps, by_target) in enumerate(lines):
        for target, y in by_target.items():
            style = _TARGET_STYLES[targets.index(target) % len(_TARGET_STYLES)]
            ax.plot(
                steps,
                y,
                style,
                color=colors[i % 10],
                marker="o",
                markersize=3,
                label=f"{label}, W{target}",
            )


def dynamics_plot(dynamics: Mapping, path: str | Path) -> str:
    """The `dynamics` block of analysis.json as four panels against the training step:
    phi(1, 1) of every rank and seed pair (random directions dotted), and per run the
    amplification, ||dW|| / ||W|| and effective rank of dW; one colour per run (or pair), one
    line style per target, averaged over layers. Saved as PNG to `path`; returns it."""
    from lora_jax.analysis.curves import run_labels, target_means

    fig, axes = plt.subplots(2, 2, figsize=(11.0, 7.5), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.91, wspace=0.22, hspace=0.32)
    pairs = [
        (f"r={p['ranks'][0]} vs {p['ranks'][1]} (seed {p['seeds'][0]})", p)
        for p in dynamics["rank_pairs"]
    ] + [
        (f"seed {p['seeds'][0]} vs {p['seeds'][1]} (r={p['ranks'][0]})", p)
        for p in dynamics["seed_pairs"]
    ]
    _curves(axes[0, 0], [(label, p["steps"], target_means(p["phi11"])) for label, p in pairs])
    for level in sorted({v for _, p in pairs for v in p["random_phi11"].values()}):
        axes[0, 0].axhline(level, color="grey", linestyle=":", linewidth=1)
    axes[0, 0].set_title("phi(1, 1) between the A factors of two runs (random: dotted)")
    labels = run_labels(dynamics["runs"])
    for ax, (title, key) in zip(axes.flat[1:], _DYNAMICS_PANELS, strict=True):
        lines = [
            (labels[name], e["steps"], target_means({m: c[key] for m, c in e["adapters"].items()}))
            for name, e in dynamics["runs"].items()
        ]
        _curves(ax, lines)
        ax.set_title(title)
    for ax in axes.flat:
        ax.set_xlabel("training step")
        if ax.lines:
            ax.legend(fontsize="x-small")
    fig.suptitle("Rank measurements at each kept checkpoint (mean over layers)")
    return _save(fig, path)
