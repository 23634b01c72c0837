"""The plot helpers write readable PNGs and cope with NaN grids and zero spectra."""

import matplotlib.pyplot as plt
import numpy as np

from lora_jax.analysis.figures import phi_figure, phi_heatmap, spectrum_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_phi_heatmap_saves_png_and_draws_on_given_axes(tmp_path):
    grid = np.random.default_rng(0).uniform(size=(8, 64))
    grid[5:] = np.nan  # undefined directions are drawn grey, not as a value
    path = phi_heatmap(grid, path=tmp_path / "sub" / "phi.png", title="A r=8 vs r=64")
    assert _is_png(path)
    fig, ax = plt.subplots()
    assert phi_heatmap(grid, ax=ax, colorbar=False) is ax
    image = ax.get_images()[0]
    assert image.get_clim() == (0.0, 1.0)
    # Row i = 1 at the top, columns j = 1..64: extent (left, right, bottom, top).
    assert image.get_extent() == [0.5, 64.5, 8.5, 0.5]
    plt.close(fig)


def test_phi_figure_side_by_side_with_random_baseline(tmp_path):
    rng = np.random.default_rng(1)
    grids = {"Wq": rng.uniform(size=(8, 8)), "Wv": rng.uniform(size=(8, 8)), "random": np.eye(8)}
    path = phi_figure(grids, tmp_path / "fig4.png", xlabel="j (seed 2)", ylabel="i (seed 1)")
    assert _is_png(path)


def test_spectrum_plot_log_scale_skips_zeros(tmp_path):
    spectra = {"r=4": [3.0, 1.0, 0.5, 0.0], "r=8": np.geomspace(10, 1e-3, 8), "init": np.zeros(4)}
    assert _is_png(spectrum_plot(spectra, path=tmp_path / "spec.png", normalize=True))
    fig, ax = plt.subplots()
    spectrum_plot(spectra, ax=ax)
    assert ax.get_yscale() == "log"
    assert len(ax.lines[0].get_xdata()) == 3  # the zero singular value is not drawn
    plt.close(fig)


def test_phi_figure_panels_keep_a_readable_size(tmp_path):
    # One row of 6 layers per target, as the sweep analysis draws a rank pair; a last row with
    # a missing panel; grids of different shapes (each panel then has its own tick labels).
    open_before = set(plt.get_fignums())
    rng = np.random.default_rng(2)
    grids = {f"layer_{i}/{t}": rng.uniform(size=(4, 8)) for t in "qv" for i in range(6)}
    grids["layer_0/q"][2:] = np.nan
    path = phi_figure(grids, tmp_path / "pair.png", suptitle="phi(A r=4, A r=8, i, j)", ncols=6)
    height, width = plt.imread(path).shape[:2]
    assert width >= 6 * 200 and height >= 2 * 150, (width, height)  # >= ~2 x 1.5 in a panel
    seeds = {**grids, "random Gaussian": rng.uniform(size=(4, 8))}
    assert _is_png(phi_figure(seeds, tmp_path / "seeds.png", ncols=7))
    mixed = {"r=8 vs 64": rng.uniform(size=(8, 64)), "r=1 vs 2": rng.uniform(size=(1, 2))}
    assert _is_png(phi_figure(mixed, tmp_path / "mixed.png", suptitle="x," * 80))
    assert set(plt.get_fignums()) == open_before  # every figure made here is closed
