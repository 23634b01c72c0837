"""Find the adapters in a parameter tree, and summarise their spectra for live logging."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
from flax import traverse_util

from lora_jax.analysis.spectrum import spectrum_summary
from lora_jax.lora import layer_index, lora_scale


def find_leaves(params: Mapping[str, Any], *names: str) -> dict[tuple[int, str], dict[str, Any]]:
    """{(layer, module): {name: leaf}} for the leaves called `names` in `params`.

    The layer is the index of the `layer_<i>` path element (-1 if none) and the module the
    leaf's parent name (`q`, `v`, `ffn_in`...), the convention every model family follows.
    """
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        if path[-1] in names and len(path) > 1:
            layer = layer_index(path)
            found.setdefault((-1 if layer is None else layer, path[-2]), {})[path[-1]] = leaf
    return dict(sorted(found.items()))


def find_adapters(params: Mapping[str, Any]) -> dict[tuple[int, str], tuple[Any, Any]]:
    """{(layer, target): (lora_a, lora_b)} for every adapter in `params`."""
    return {
        k: (v["lora_a"], v["lora_b"]) for k, v in find_leaves(params, "lora_a", "lora_b").items()
    }


@functools.partial(jax.jit, static_argnames=("alpha", "scaling"))
def adapter_spectra(params: Mapping[str, Any], alpha: float, scaling: str) -> dict[str, jax.Array]:
    """`spectrum/layer_<i>/<target>/<summary>` scalars for every adapter (one jitted call)."""
    out = {}
    for (layer, target), (a, b) in find_adapters(params).items():
        summary = spectrum_summary(a, b, lora_scale(a.shape[1], alpha, scaling))
        out.update({f"spectrum/layer_{layer}/{target}/{k}": v for k, v in summary.items()})
    return out
