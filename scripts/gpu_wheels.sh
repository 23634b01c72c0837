#!/usr/bin/env bash
# Fill .whl/ (never committed: /.whl/ is in .git/info/exclude) with what scripts/gpu_check.sh
# needs on the lent GPU machine and that machine's image lacks. That machine has no network;
# its python3 is CPython 3.12 (x86-64) with jax 0.11.2 + CUDA 13 plugin, flax, optax, orbax,
# numpy, scipy, tokenizers, safetensors, pytest(-xdist, -timeout), hypothesis, ...
# (/work/.library/device/KINDS.md lists them).
#
#   bash scripts/gpu_wheels.sh          # run in the checkout that the device tool sends (the
#                                       # session's own): it fills the .whl/ of the current
#                                       # directory's repository, wherever this script lies
#
# It puts in .whl/:
#   *.whl                 cp312 manylinux x86-64 (or pure-python) wheels, --no-deps, the
#                         versions of .venv where the image lacks the package: grain,
#                         hydra-core, omegaconf, antlr4, tensorflow-datasets and its deps,
#                         gguf (tests/test_models_llama imports it). Not wandb: no code path of
#                         the check imports it (logger=none; lora_jax.tracking imports lazily).
#   fallback/             protobuf 7.36.2, put in front only where the image's protobuf is
#                         too old for tensorflow_metadata (>= 6.31.1)
#   minilm_shapes/        all-MiniLM-L6-v2's config.json, tokenizer.json and the names, dtypes
#                         and shapes of model.safetensors (not the 90 MB of weights: the check
#                         writes random weights of those shapes on the device)
#   lora_jax_cache/       the prepared MR data (tensorflow_datasets/mr_polarity, ~5 MB),
#                         the check's LORA_JAX_CACHE
# and prints the size of what travels (tracked files + .whl; the limit is 64 MiB).
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
W=.whl
PIP=${PIP:-.venv/bin/python -m pip}
PY=${PY:-.venv/bin/python}
git check-ignore -q .whl/x || { echo "add /.whl/ to .git/info/exclude first"; exit 1; }
mkdir -p "$W"

# Binary and pure-python wheels, one version each (two of one package stop the install).
BINARY=(
  grain==0.2.18 array-record==0.8.6 dm-tree==0.1.10
  hydra-core==1.3.8 omegaconf==2.3.1
  tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  immutabledict==4.3.1 toml==0.10.2 simple-parsing==0.1.9 docstring-parser==0.18.0
  termcolor==3.3.0 importlib-resources==7.1.0 portpicker==1.6.0 gguf==0.19.0
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$W" "${BINARY[@]}"
# protobuf for tensorflow_metadata's generated code (>= 6.31.1), used by the check only if the
# image's is older (kept apart: .whl/*.whl must not shadow the image's protobuf).
mkdir -p "$W/fallback"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$W/fallback" protobuf==7.36.2
# Only sdists exist on PyPI for these two (pure python): build the wheels here.
$PIP wheel -q --no-deps -w "$W" antlr4-python3-runtime==4.9.3 promise==2.3

# MiniLM's shapes and tokenizer (the weights are written at random on the device).
MINILM=$($PY -c "from lora_jax import models; print(models.minilm_folder())")
mkdir -p "$W/minilm_shapes"
cp "$MINILM/config.json" "$MINILM/tokenizer.json" "$W/minilm_shapes/"
$PY - "$MINILM/model.safetensors" "$W/minilm_shapes/tensors.json" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
meta = header.pop("__metadata__", None)
json.dump({"source": "all-MiniLM-L6-v2 model.safetensors header (names, dtypes, shapes)",
           "metadata": meta,
           "tensors": {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}},
          open(sys.argv[2], "w"), indent=0)
EOF

# The prepared MR data (`python -m lora_jax.data.assets` made it).
CACHE=$($PY -c "from lora_jax.data import assets; print(assets.cache_dir())" 2>/dev/null \
        || echo "${LORA_JAX_CACHE:-$HOME/.cache/lora_jax}")
test -d "$CACHE/tensorflow_datasets/mr_polarity" || { echo "no MR data in $CACHE: run make install"; exit 1; }
rm -rf "$W/lora_jax_cache" && mkdir -p "$W/lora_jax_cache/tensorflow_datasets"
cp -r "$CACHE/tensorflow_datasets/mr_polarity" "$W/lora_jax_cache/tensorflow_datasets/"

# One version of each distribution.
ls "$W"/*.whl | sed -E 's#.*/##; s/-[0-9].*//' | tr 'A-Z' 'a-z' | tr '-' '_' | sort | uniq -d \
  | { if read -r dup; then echo "two versions of $dup in $W"; exit 1; fi; }
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb "$W" | cut -f1)
total=$(( tracked + ${untracked:-0} + whl ))
printf 'travels: tracked %.1f MiB + untracked %.1f MiB + .whl %.1f MiB = %.1f MiB (limit 64)\n' \
  "$(echo "$tracked/1048576" | bc -l)" "$(echo "${untracked:-0}/1048576" | bc -l)" \
  "$(echo "$whl/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
test "$total" -lt $((60 * 1048576)) || { echo "too close to the 64 MiB limit"; exit 1; }
