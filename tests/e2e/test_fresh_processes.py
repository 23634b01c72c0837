"""What only a fresh Python process shows: which modules an import loads (the audit's reader
without JAX, the analysis without the layers above it, a train step without Hydra or the
loaders), and a JAX started with 4 fake CPU devices (the flag must precede JAX's import)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import FIXTURES, ROOT

HUB = FIXTURES / "hub_layouts"
# lora_jax's packages above the analysis layer (tests/unit/test_layers.py: the layering)
ABOVE_ANALYSIS = ("train", "models", "data", "planted", "sweep", "report", "fused")


def test_the_adapter_reader_runs_without_jax() -> None:
    """The audit reads 8B adapters in seconds: importing the reader must not start JAX."""
    code = "import sys, lora_jax.peft_adapter; print(sorted(m for m in sys.modules if m in ('jax', 'flax')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_analysis_loads_nothing_above_it():
    code = (
        "import sys, lora_jax.analysis.updates; "
        "print(' '.join(m for m in sys.modules if m.startswith('lora_jax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    above = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in ABOVE_ANALYSIS]
    assert not above, f"importing lora_jax.analysis.updates loads {above}"
    assert "omegaconf" not in out.stdout and "hydra" not in out.stdout


def test_a_train_step_process_loads_no_loader_metrics_or_hydra():
    """What `benchmarks.step`'s step process imports (a task, the objective, the step) leaves out
    Grain, SciPy, scikit-learn, Hydra and the heavy frameworks: ~110 MB of its peak RSS."""
    code = (
        "import sys; from lora_jax import data, models; "
        "from lora_jax.train.objectives import classification; "
        "from lora_jax.train.steps import make_train_step; "
        "from lora_jax.train.precision import cast_frozen; data.get_task('mr'); "
        "print(' '.join(m.split('.')[0] for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = {"grain", "scipy", "sklearn", "hydra", "omegaconf", "orbax", "tensorflow", "torch"}
    assert not heavy & set(out.stdout.split())


def test_tensors_go_to_their_fsdp_shards_as_they_are_read(tmp_path):
    """On 4 fake CPU devices (a subprocess: the flag must precede JAX's import; NPROC=8 keeps
    XLA's thread pools from deadlocking on 2 cores), `load_model(place=parallel.placer(mesh))`
    puts every tensor where `param_sharding` says, one device holding a quarter of each big
    kernel, with the host holding one tensor at a time, and the logits unchanged."""
    code = textwrap.dedent(
        f"""
        import jax, numpy as np
        from lora_jax.lora import LoRAConfig
        from lora_jax.models.pretrained import load_decoder
        from lora_jax.train import parallel
        assert jax.device_count() == 4
        mesh = parallel.data_mesh(fsdp=4)
        pre = load_decoder({str(HUB / "llama2")!r}, LoRAConfig(rank=2, targets="q+k+v+o"),
                           tokenizer=False, place=parallel.placer(mesh))
        want = parallel.param_sharding(pre.params, mesh)
        base = {{p: x for p, x in jax.tree_util.tree_leaves_with_path(pre.params)
                if p[-1].key not in ("lora_a", "lora_b")}}
        wanted = dict(jax.tree_util.tree_leaves_with_path(want))
        for path, x in base.items():
            assert x.sharding.is_equivalent_to(wanted[path], x.ndim), (path, x.sharding)
        ffn = pre.params["decoder"]["layer_0"]["ffn"]["ffn_in"]["kernel"]  # (64, 64): rows split
        assert [s.data.shape for s in ffn.addressable_shards] == [(16, 64)] * 4
        head = pre.params["lm_head"]["kernel"]  # (64, 128): the vocab axis split
        assert [s.data.shape for s in head.addressable_shards] == [(64, 32)] * 4
        ref = np.load({str(HUB / "llama2.npz")!r})
        logits = pre.module.apply({{"params": pre.params}}, ref["input_ids"])
        np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-5, rtol=0)
        print("OK", len(base))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NPROC": "8",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "OK 21" in proc.stdout, proc.stderr[-4000:]
