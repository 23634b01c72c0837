"""A fixed parameter budget shared among weight types (the paper's Table 5).

Table 5 asks which weight matrices to adapt when the number of trainable LoRA parameters is
fixed: the budget of rank 8 on one type buys rank 4 on two types or rank 2 on four (in GPT-3
every type is d x d). `solve_rank` gives the largest uniform rank that a target set can have
within a budget; for types of different shapes (FFN, GQA's k/v) it counts exact parameters.

Example (MiniLM: every attention matrix is 384 x 384, 6 layers):
    >>> shapes = {t: (384, 384) for t in "qkvo"}
    >>> budget = lora_param_count(shapes, ("q",), rank=8, num_layers=6)
    >>> [solve_rank(shapes, t, budget, num_layers=6) for t in ("q", "qv", "qkvo")]
    [8, 4, 2]

    python -m lora_jax.budget --model minilm --rank 8 --on q --sets q,k,v,o,qk,qv,qkvo
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from lora_jax.lora import parse_targets

Shapes = Mapping[str, tuple[int, int]]
# Every model in the registry whose config is not available offline (BERT, RoBERTa, GPT-2 from
# the hub) has d x d attention matrices, so a budget over these needs no shapes.
_SQUARE_TARGETS = ("q", "k", "v", "o")


def lora_param_count(shapes: Shapes, targets: Sequence[str], rank: int, num_layers: int) -> int:
    """Trainable LoRA parameters of rank `rank` on every target: r * (in + out) per matrix."""
    missing = [t for t in parse_targets(targets) if t not in shapes]
    if missing:
        raise ValueError(
            f"targets={','.join(missing)} do not exist in this model; allowed: {', '.join(shapes)}."
        )
    return sum(rank * sum(shapes[t]) for t in parse_targets(targets)) * num_layers


def solve_rank(shapes: Shapes, targets: str | Sequence[str], budget: int, num_layers: int) -> int:
    """The largest uniform rank of `targets` whose parameter count fits within `budget`."""
    per_rank = lora_param_count(shapes, targets, 1, num_layers)
    rank = budget // per_rank
    if rank < 1:
        raise ValueError(
            f"a budget of {budget:,} parameters does not buy rank 1 on targets={targets!r} "
            f"({per_rank:,} parameters); allowed: a budget >= {per_rank:,}. Raise "
            "lora.budget_rank or adapt fewer weight types."
        )
    return rank


def budget_rank(known: tuple[Shapes, int] | None, targets: str, rank: int, on: str) -> int:
    """The rank of `targets` under the budget "rank `rank` on the targets `on`".

    `known` is (shapes, num_layers) from `models.target_shapes`, or None when the model's config
    is not available offline; then only d x d attention targets can be solved (their shape
    cancels out).
    """
    if known is None:
        named = (*parse_targets(targets), *parse_targets(on))
        outside = [t for t in named if t not in _SQUARE_TARGETS]
        if outside:
            raise ValueError(
                f"targets {','.join(outside)} need the model's shapes to share a budget, and its "
                "config is not available offline; allowed without it: q, k, v, o. Download the "
                "model once (run it with a network) or use attention targets."
            )
        shapes, num_layers = dict.fromkeys(_SQUARE_TARGETS, (1, 1)), 1
    else:
        shapes, num_layers = known
    budget = lora_param_count(shapes, on, rank, num_layers)
    return solve_rank(shapes, targets, budget, num_layers)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ranks of target sets under a fixed budget.")
    parser.add_argument("--model", default="minilm", help="a registered model name or folder")
    parser.add_argument("--rank", type=int, default=8, help="the budget: this rank ...")
    parser.add_argument("--on", default="q", help="... on these targets (default: q)")
    parser.add_argument("--sets", default="q,k,v,o,qk,qv,qkvo", help="target sets to solve")
    args = parser.parse_args()
    from lora_jax.models import target_shapes

    known = target_shapes(args.model)
    print(f"budget: rank {args.rank} on {args.on} of {args.model}")
    print("| targets | rank | LoRA params |\n|---|---|---|")
    for targets in args.sets.split(","):
        rank = budget_rank(known, targets, args.rank, args.on)
        count = "?" if known is None else f"{lora_param_count(known[0], targets, rank, known[1]):,}"
        print(f"| {targets} | {rank} | {count} |")


if __name__ == "__main__":
    main()
