#!/usr/bin/env bash
# Sets up the reference implementation gradiend==0.2.3 in its own virtual environment, benchmarks/.ref-venv,
# with the same torch as ours (2.13.0, installed first). It is a baseline to measure against, never a dependency
# of gradiend_peft: nothing of ours imports it, and it is not installed into the project's environment.
#
#   bash benchmarks/setup_reference.sh            # create (or complete) benchmarks/.ref-venv
#   REF_VENV=/some/where bash benchmarks/setup_reference.sh
#
# Add benchmarks/.ref-venv/ to .gitignore (the folder is large and machine-specific).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${REF_VENV:-$HERE/.ref-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned to ours, so that gradiend's "torch>=2.0" does not pull another build
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet "gradiend==0.2.3"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
print("reference venv ready: gradiend", md.version("gradiend"), "torch", torch.__version__,
      "transformers", md.version("transformers"))
EOF
