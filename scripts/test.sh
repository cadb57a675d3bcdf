#!/usr/bin/env bash
# Install agentkv with its test extras (CPU torch) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet "torch==2.13.0" -e ".[dev]"
export TOKENIZERS_PARALLELISM=false
python3 -m pytest -q -p no:cacheprovider "$@"
