#!/usr/bin/env bash
# The main job: set up .venv on first use, then run the GRADIEND demo (extra arguments go to `gradiend-peft demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gradiend-peft demo "$@"
