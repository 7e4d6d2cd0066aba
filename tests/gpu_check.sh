#!/usr/bin/env bash
# The GPU check (what it runs and reports: tests/gpu_check.py's docstring). Unattended, about 5 minutes
# on one modern GPU; without CUDA it only writes the report with every row skipped.
#   bash tests/gpu_check.sh [--out DIR] [--smoke-on-cpu] [--keep-work]     (default DIR: gpu-check/)
# PYTHON picks the interpreter (default: python), as in run_all.sh. Exit status 1 if a check FAILED.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" tests/gpu_check.py "$@"
