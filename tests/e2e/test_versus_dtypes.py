"""`make bench` compares only the dtypes it is asked for, and by default bfloat16 only where the
CPU multiplies it in hardware: without it torch's bfloat16 4096² matmul alone took minutes on an
AVX2 EPYC, and the numbers measure an emulation (benchmarks/versus_peft.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.versus_peft import versus_dtypes


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f": True, "avx512_bf16": False, "amx_bf16": False}, ["float32"]),
        ({"avx512f": True, "avx512_bf16": True, "amx_bf16": False}, ["float32", "bfloat16"]),
        ({"avx512_bf16": False, "amx_bf16": True}, ["float32", "bfloat16"]),
        ({}, ["float32"]),
    ],
)
def test_auto_compares_bfloat16_only_on_bf16_hardware(flags, expected):
    assert versus_dtypes("auto", flags) == expected


def test_asked_dtypes_are_taken_as_given():
    assert versus_dtypes("bfloat16", {}) == ["bfloat16"]
    assert versus_dtypes("float32,bfloat16", {}) == ["float32", "bfloat16"]


def test_the_matmul_job_measures_only_the_asked_dtypes():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--one", "matmul", "--dtypes", "float32"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    assert set(row["matmul_gflops"]) == {"float32"} and row["matmul_gflops"]["float32"] > 0
