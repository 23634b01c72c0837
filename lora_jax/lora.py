"""LoRA for Flax linen: the `LoRADense` layer, its configuration, and pure weight helpers.

A `LoRADense` is a drop-in `nn.Dense`: it keeps the `kernel` (in, out) and `bias` (out,)
parameter paths, so a pretrained checkpoint loads unchanged, and adds a low-rank update

    y = x @ kernel + bias + scale * dropout(x) @ lora_a @ lora_b

with `lora_a` of shape (in, r) and `lora_b` of shape (r, out). In weight terms the update is
dW = scale * lora_a @ lora_b, in the kernel's (in, out) layout; the paper writes it
dW = B A with A (r, in) and B (out, r), so our `lora_a` is the paper's A transposed.

Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = LoRADense(features=4, rank=2, alpha=8.0)
    >>> params = layer.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> sorted(params)
    ['bias', 'kernel', 'lora_a', 'lora_b']
    >>> merged = merge(params, alpha=8.0)  # a plain nn.Dense accepts these
    >>> sorted(merged)
    ['bias', 'kernel']

Mixed precision: `LoRADense(dtype="bfloat16")` computes x @ kernel as a bfloat16 x bfloat16
product accumulated and returned in float32 (`mixed_dot`), forward and backward; the LoRA path,
its factors and the output stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.scaling import SCALINGS, lora_scale  # noqa: F401 (re-exported: the public names)

# Initialisations of lora_a (lora_b always starts at zero, so dW = 0 at step 0).
A_INITS = ("gaussian", "kaiming_uniform")
# The leaves a LoRADense adds to nn.Dense's kernel/bias.
LORA_LEAVES = ("lora_a", "lora_b")
# Every model puts layer i's modules under a `layer_<i>` scope.
_LAYER_SCOPE = re.compile(r"layer_(\d+)")
# Matrix names that models accept as LoRA targets.
TARGET_NAMES = ("q", "k", "v", "o", "ffn_in", "ffn_out", "ffn_gate")
# Short forms used in sweeps: `targets=q,qv,qkvo`.
_SHORT_TARGETS = {c: c for c in "qkvo"}
# The compute dtypes of the projections (`LoRADense.dtype`, a model config's `dtype`).
COMPUTE_DTYPES = ("float32", "bfloat16")


def _error(value: Any, what: str, allowed: Iterable[Any], fix: str = "") -> ValueError:
    allowed = ", ".join(map(str, allowed))
    return ValueError(
        f"{what}={value!r} is not valid; allowed: {allowed}.{' ' + fix if fix else ''}"
    )


def check_rank(rank: Any, in_features: int | None = None, out_features: int | None = None) -> int:
    """Validate a LoRA rank: an integer in [0, min(in, out)]."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise _error(rank, "rank", ["a non-negative integer (0 = no LoRA)"], "Use e.g. `rank=8`.")
    if (
        in_features is not None
        and out_features is not None
        and rank > min(in_features, out_features)
    ):
        raise ValueError(
            f"rank={rank} is larger than min(in, out)={min(in_features, out_features)} for a "
            f"({in_features} x {out_features}) weight; allowed: 0..{min(in_features, out_features)}."
        )
    return rank


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Turn `"qv"`, `"q,v"`, `"q+ffn_in"`, `["q", "ffn_in"]` or `"all"` into a sorted tuple of
    target names. `+` joins names like `,` and is what a sweep needs: Hydra reads
    `targets=q,ffn_in` as two runs, `targets=q+ffn_in` as one.

    Unknown names raise an error listing the valid ones.
    """
    if isinstance(targets, str):
        if targets == "all":
            return TARGET_NAMES
        if targets in ("", "none"):
            return ()
        parts = targets.replace("+", ",").split(",")
        names: list[str] = []
        for part in parts:
            part = part.strip()
            if part in TARGET_NAMES:
                names.append(part)
            elif part and all(c in _SHORT_TARGETS for c in part):
                names.extend(_SHORT_TARGETS[c] for c in part)
            else:
                raise _error(
                    part,
                    "targets",
                    (*TARGET_NAMES, "or letters of qkvo, e.g. qv"),
                    "Join several with +, e.g. `targets=q+ffn_in`.",
                )
    else:
        names = [n for t in targets for n in parse_targets(t)]
    order = {n: i for i, n in enumerate(TARGET_NAMES)}
    return tuple(sorted(set(names), key=order.__getitem__))


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Where LoRA goes in a model and how it is parameterised.

    Attributes:
        rank: default rank r for every target (0 = no adapters: the head-only baseline).
        alpha: the numerator of the scaling.
        scaling: one of `SCALINGS`.
        a_init: initialisation of `lora_a`, one of `A_INITS`.
        dropout: dropout rate on the LoRA input path.
        targets: matrix names (see `TARGET_NAMES`; `"qv"` style short forms accepted).
        layers: layer indices that get adapters (None = every layer).
        rank_pattern: per-target rank overriding `rank`, e.g. {"q": 8, "v": 2}.
    """

    rank: int = 0
    alpha: float = 8.0
    scaling: str = "alpha_over_r"
    a_init: str = "gaussian"
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    layers: tuple[int, ...] | None = None
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.targets))
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern or {}))
        check_rank(self.rank)
        lora_scale(1, self.alpha, self.scaling)
        if self.a_init not in A_INITS:
            raise _error(self.a_init, "a_init", A_INITS, "Use e.g. `lora.a_init=gaussian`.")
        if not 0.0 <= self.dropout < 1.0:
            raise _error(
                self.dropout, "dropout", ["a rate in [0, 1)"], "Use e.g. `lora.dropout=0.1`."
            )
        for name, r in self.rank_pattern.items():
            if name not in self.targets:
                first = self.targets[0] if self.targets else "q"
                raise _error(
                    name,
                    "rank_pattern key",
                    self.targets,
                    f"Keys must be among `targets`, e.g. `lora.rank_pattern={{{first}:8}}`.",
                )
            check_rank(r)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def __hash__(self) -> int:  # a module holding it can be a static jit argument
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return hash(
            tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values)
        )

    def rank_for(self, target: str, layer: int) -> int:
        """The rank of the adapter on `target` in `layer` (0 if it gets none)."""
        if target not in self.targets or (self.layers is not None and layer not in self.layers):
            return 0
        return self.rank_pattern.get(target, self.rank)

    def check_layers(self, num_layers: int) -> None:
        """Raise if a requested layer index does not exist in a model with `num_layers`."""
        bad = [i for i in self.layers or () if not 0 <= i < num_layers]
        if bad:
            raise _error(
                bad,
                "layers",
                [f"indices in 0..{num_layers - 1}"],
                f"Use e.g. `lora.layers=[0,{num_layers - 1}]`, or `lora.layers=null` for all.",
            )

    def dense(self, target: str, layer: int, features: int, **kwargs: Any) -> LoRADense:
        """A `LoRADense` for `target` in `layer`, carrying this config's rank and scaling."""
        return LoRADense(
            features=features,
            rank=self.rank_for(target, layer),
            alpha=self.alpha,
            scaling=self.scaling,
            a_init=self.a_init,
            dropout=self.dropout,
            name=target,
            **kwargs,
        )


def check_dtype(dtype: Any) -> str:
    """The name of a compute dtype in `COMPUTE_DTYPES` (a name or a jnp dtype); raises otherwise."""
    name = dtype if isinstance(dtype, str) else getattr(jnp.dtype(dtype), "name", str(dtype))
    if name not in COMPUTE_DTYPES:
        raise _error(dtype, "dtype", COMPUTE_DTYPES, "Use e.g. `model.dtype=bfloat16`.")
    return name


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_dot(x: jax.Array, w: jax.Array, dtypes: tuple) -> jax.Array:
    return _mixed_dot_fwd(x, w, dtypes)[0]


def _mixed_dot_fwd(x, w, dtypes):
    x16, w16 = x.astype(dtypes[0]), w.astype(dtypes[0])
    # The residuals are the low-precision copies: half the bytes of float32 activations.
    if dtypes[3]:  # w is (out, in)
        y = jnp.einsum("...i,oi->...o", x16, w16, preferred_element_type=jnp.float32)
    else:
        y = jnp.dot(x16, w16, preferred_element_type=jnp.float32)
    return y, (x16, w16)


def _mixed_dot_bwd(dtypes, res, g):
    (x16, w16), (low, x_dtype, w_dtype, w_out_in) = res, dtypes
    # Autodiff of the forward would multiply the float32 cotangent with the low-precision
    # operand, which XLA:CPU computes as a float32 GEMM; rounding g first keeps the backward's
    # two GEMMs on the fast bf16 x bf16 -> f32 kernels too (AMX, AVX512-BF16).
    g16, lead = g.astype(low), tuple(range(x16.ndim - 1))
    f32 = jnp.float32
    if w_out_in:
        dx = jnp.dot(g16, w16, preferred_element_type=f32)
        dw = jnp.tensordot(g16, x16, axes=(lead, lead), preferred_element_type=f32)
    else:
        dx = jnp.dot(g16, w16.T, preferred_element_type=f32)
        dw = jnp.tensordot(x16, g16, axes=(lead, lead), preferred_element_type=f32)
    return dx.astype(x_dtype), dw.astype(w_dtype)  # dw of a frozen kernel is unused: XLA drops it


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def mixed_dot(
    x: jax.Array, w: jax.Array, dtype: Any = jnp.bfloat16, w_out_in: bool = False
) -> jax.Array:
    """x (..., in) @ w (in, out) with both operands rounded to `dtype` and the products
    accumulated and returned in float32, in the forward and in both backward products.

    `w_out_in`: w is stored (out, in), e.g. a tied LM head's embedding table (x @ w.T). Pass
    the table itself, not `table.T`: the gradient of `table.T`, reduced (a
    gradient norm), fails on XLA:CPU ("Unsupported element type for DotThunk::Execute: BF16 x
    BF16 = F32"); computed in the table's own layout it does not.

    Example:
        >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
        >>> mixed_dot(x, w).dtype
        dtype('float32')
    """
    return _mixed_dot(x, w, (jnp.dtype(dtype), x.dtype, w.dtype, w_out_in))


def layer_index(path: Iterable[str]) -> int | None:
    """The i of the `layer_<i>` element of a parameter path, or None outside the layers."""
    found = [int(m[1]) for p in path if (m := _LAYER_SCOPE.fullmatch(p))]
    return found[-1] if found else None


def _a_initializer(init: str) -> nn.initializers.Initializer:
    if init == "gaussian":
        # N(0, 1/in): the paper says "random Gaussian"; we pick the fan-in variance.
        return nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    if init == "kaiming_uniform":
        # loralib: kaiming_uniform_(a=sqrt(5)) on A (r, in), i.e. U(-1/sqrt(in), 1/sqrt(in)).
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    raise _error(init, "a_init", A_INITS)


class LoRADense(nn.Module):
    """`nn.Dense` with an optional low-rank update (see the module docstring).

    Attributes:
        features: output width.
        rank: LoRA rank r; 0 gives exactly `nn.Dense` (no LoRA params).
        alpha, scaling: the scale of A @ B is `SCALINGS[scaling](alpha, rank)`.
        a_init: initialisation of `lora_a` ("gaussian" or "kaiming_uniform"); `lora_b` starts at 0.
        dropout: dropout rate applied to the input of the LoRA path only.
        dtype: compute dtype of the base product x @ kernel: None or "float32" (exact float32),
            "bfloat16" (`mixed_dot`: bf16 operands, float32 accumulation and output). The
            LoRA path computes in its factors' dtype (float32) either way.
    """

    features: int
    use_bias: bool = True
    rank: int = 0
    alpha: float = 8.0
    scaling: str = "alpha_over_r"
    a_init: str = "gaussian"
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        in_features = x.shape[-1]
        check_rank(self.rank, in_features, self.features)
        kernel = self.param(
            "kernel", self.kernel_init, (in_features, self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        mixed = self.dtype is not None and check_dtype(self.dtype) != "float32"
        if mixed:  # the base product in low precision; the LoRA path below stays float32
            y = mixed_dot(x, kernel, self.dtype)
        else:
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
            y = jnp.dot(x, kernel, precision=self.precision)
        if bias is not None:
            y = y + bias
        if self.rank == 0:
            return y
        scale = lora_scale(self.rank, self.alpha, self.scaling)
        lora_a = self.param(
            "lora_a", _a_initializer(self.a_init), (in_features, self.rank), self.param_dtype
        )
        lora_b = self.param(
            "lora_b", nn.initializers.zeros_init(), (self.rank, self.features), self.param_dtype
        )
        h = nn.Dropout(self.dropout)(x, deterministic=deterministic) if self.dropout else x
        h, lora_a, lora_b = nn.dtypes.promote_dtype(
            h, lora_a, lora_b, dtype=None if mixed else self.dtype
        )
        return y + scale * jnp.dot(
            jnp.dot(h, lora_a, precision=self.precision), lora_b, precision=self.precision
        )


# ---- pure helpers on parameter trees ---------------------------------------------------------


def delta_w(
    lora_a: jax.Array, lora_b: jax.Array, alpha: float, scaling: str = "alpha_over_r"
) -> jax.Array:
    """The update dW = scale * lora_a @ lora_b, in the kernel's (in, out) layout."""
    return lora_scale(lora_a.shape[-1], alpha, scaling) * (lora_a @ lora_b)


def _is_adapted(node: Any) -> bool:
    return isinstance(node, Mapping) and "lora_a" in node and "lora_b" in node and "kernel" in node


def merge(params: Mapping[str, Any], alpha: float, scaling: str = "alpha_over_r") -> dict:
    """Fold every adapter into its kernel: kernel + dW, and drop `lora_a`/`lora_b`.

    The result has exactly the tree a model without LoRA (plain `nn.Dense`) expects, so
    inference costs nothing extra.
    """
    if _is_adapted(params):
        rest = {k: v for k, v in params.items() if k not in ("lora_a", "lora_b")}
        dw = delta_w(params["lora_a"], params["lora_b"], alpha, scaling)
        return {**rest, "kernel": params["kernel"] + dw.astype(params["kernel"].dtype)}
    if isinstance(params, Mapping):
        return {k: merge(v, alpha, scaling) for k, v in params.items()}
    return params


def adapters(params: Mapping[str, Any]) -> dict:
    """Only the `lora_a`/`lora_b` leaves of `params`, at their original paths."""
    out = {}
    for k, v in params.items():
        if k in ("lora_a", "lora_b"):
            out[k] = v
        elif isinstance(v, Mapping) and (sub := adapters(v)):
            out[k] = sub
    return out


def unmerge(
    merged: Mapping[str, Any],
    adapter_params: Mapping[str, Any],
    alpha: float,
    scaling: str = "alpha_over_r",
) -> dict:
    """Undo `merge`: kernel - dW, with the adapters put back. `adapter_params` is `adapters(p)`."""
    if "lora_a" in adapter_params:
        dw = delta_w(adapter_params["lora_a"], adapter_params["lora_b"], alpha, scaling)
        return {
            **merged,
            "kernel": merged["kernel"] - dw.astype(merged["kernel"].dtype),
            **adapter_params,
        }
    out = dict(merged)
    for k, sub in adapter_params.items():
        out[k] = unmerge(merged[k], sub, alpha, scaling)
    return out
