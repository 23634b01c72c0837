"""Threefry lowered without its CPU loop (`lora_jax.train.threefry_cpu`) computes the same
hash: the Random123 known answers and a NumPy Threefry-2x32 on many counters; and a dropout
step's program holds no loop once a train step has been built."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from lora_jax.train.threefry_cpu import unroll_threefry_on_cpu

MASK = 0xFFFFFFFF
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry_numpy(key: tuple[int, int], x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Threefry-2x32, 20 rounds (Salmon et al. 2011), in uint64 arithmetic masked to 32 bits."""
    ks = [key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA]
    x0, x1 = (x0.astype(np.uint64) + ks[0]) & MASK, (x1.astype(np.uint64) + ks[1]) & MASK
    for i in range(5):
        for r in ROTATIONS[i % 2]:
            x0 = (x0 + x1) & MASK
            x1 = (((x1 << np.uint64(r)) | (x1 >> np.uint64(32 - r))) & MASK) ^ x0
        x0 = (x0 + ks[(i + 1) % 3]) & MASK
        x1 = (x1 + ks[(i + 2) % 3] + i + 1) & MASK
    return np.concatenate([x0, x1]).astype(np.uint32)


def _threefry_jit(key: tuple[int, int], count: np.ndarray) -> np.ndarray:
    k = jnp.asarray(key, jnp.uint32)
    return np.asarray(jax.jit(threefry_2x32)(k, jnp.asarray(count)))


def test_unrolled_threefry_gives_the_known_answers_and_numpys_bits():
    unroll_threefry_on_cpu()
    # Random123's known answers for threefry2x32_20 (as JAX's own tests use them)
    known = [
        ((0x0, 0x0), (0x0, 0x0), (0x6B200159, 0x99BA4EFE)),
        ((MASK, MASK), (MASK, MASK), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, count, expected in known:
        count = np.asarray(count, np.uint32)
        assert tuple(_threefry_jit(key, count)) == expected
        assert tuple(_threefry_numpy(key, count[:1], count[1:])) == expected
    counts = np.random.default_rng(0).integers(0, 2**32, 2 * 4096, dtype=np.uint64)
    key = (0x9E3779B9, 0x7F4A7C15)
    np.testing.assert_array_equal(
        _threefry_jit(key, counts.astype(np.uint32)),
        _threefry_numpy(key, counts[:4096], counts[4096:]),
    )


def test_a_dropout_program_holds_no_loop_on_cpu():
    unroll_threefry_on_cpu()

    def dropped_sum(x, key):
        keep = jax.random.bernoulli(key, 0.9, x.shape)
        return jnp.where(keep, x / 0.9, 0.0).sum()

    grad = jax.jit(jax.grad(dropped_sum))
    text = grad.lower(jnp.ones((8, 64)), jax.random.key(0)).as_text()
    assert "stablehlo.while" not in text
