"""The math of truncation curves and of the forgetting measure, on arrays.

- `truncation_ranks`, `truncated_kernels`: the ranks k = 0, 1, 2, 4, ... up to full, and
  W_0 + SVD_k(dW) of every matrix (Eckart-Young: at full k that is W_0 + dW exactly);
- `rank_for_gain`: the smallest k whose task metric keeps a share (90%) of the gain of the
  whole update over k = 0 (the task's own rank, read off the curve; for a loss, its drop);
- `similarity_kept`: how well the pairwise cosine similarities of sentence embeddings keep
  their order under a fine-tuned model (Spearman against the pretrained model's), the
  forgetting measure of a sentence encoder: 1 keeps everything, 1 - it is what was lost
  (a decoder's is its LM loss increase on held-out text: `evals.model_evals`).

The models themselves are evaluated above this layer (`lora_jax.evals.kernel_eval`).

Example:
    >>> truncation_ranks(6)
    [0, 1, 2, 4, 6]
    >>> rank_for_gain([0, 1, 2, 4], [0.5, 0.6, 0.78, 0.8])
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from lora_jax.analysis.full_update import truncate

__all__ = ["rank_for_gain", "similarity_kept", "truncated_kernels", "truncation_ranks"]

GAIN_SHARE = 0.9


def truncation_ranks(full: int) -> list[int]:
    """0, then the powers of two below `full`, then `full` itself."""
    if full < 0:
        raise ValueError(f"full={full} is not valid; allowed: a rank >= 0.")
    ks, k = [0], 1
    while k < full:
        ks.append(k)
        k *= 2
    return ks + ([full] if full > 0 else [])


def truncated_kernels(w0: Mapping, svds: Mapping, k: int) -> dict:
    """{key: W_0 + SVD_k(dW)} for every key of `svds` (`update_svd(dW)` per matrix); a matrix
    whose dW has fewer than k singular values keeps all of them."""
    return {
        key: np.asarray(w0[key] + truncate(None, min(k, len(svd[1])), svd), np.float32)
        for key, svd in svds.items()
    }


def rank_for_gain(
    ks: Sequence[int],
    values: Sequence[float],
    share: float = GAIN_SHARE,
    lower_is_better: bool = False,
) -> int | None:
    """The smallest k whose value keeps `share` of the whole update's gain over k = 0.

    Args:
        ks: ascending ranks, starting at 0 and ending at the full rank.
        values: the task metric at each k, higher is better (a loss: `lower_is_better`,
            the gain is then the drop of the loss).

    Returns:
        That k (only the ks evaluated count), or None when the update gains nothing.
    """
    if len(ks) != len(values) or not ks or ks[0] != 0:
        raise ValueError(f"ks={list(ks)} must start at 0 and match values={list(values)}.")
    if lower_is_better:
        values = [-v for v in values]
    gain = values[-1] - values[0]
    if not gain > 0:
        return None
    return next(k for k, v in zip(ks, values, strict=True) if v - values[0] >= share * gain)


def _pairwise_cosines(embeddings: np.ndarray) -> np.ndarray:
    """The cosine of every pair i < j of rows, as one vector."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    i, j = np.triu_indices(len(e), k=1)
    return np.einsum("pd,pd->p", e[i], e[j])


def similarity_kept(base: np.ndarray, tuned: np.ndarray) -> float:
    """Spearman correlation between the pairwise cosine similarities of the same sentences'
    embeddings under the pretrained model (`base`, (n, d)) and a fine-tuned one (`tuned`).

    1 when the fine-tuned model orders every pair of sentences as the pretrained one did (any
    rotation or rescaling of the embeddings keeps it); about 0 when it kept nothing.
    """
    if base.shape[0] != tuned.shape[0] or base.shape[0] < 3:
        raise ValueError(
            f"embeddings of {base.shape[0]} and {tuned.shape[0]} sentences; allowed: the same "
            "sentences, at least 3."
        )
    return float(scipy.stats.spearmanr(_pairwise_cosines(base), _pairwise_cosines(tuned))[0])
