#!/usr/bin/env bash
# Install agentkv with its test extras (CPU torch) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet "torch==2.13.0" -e ".[dev]"
# transformers 5.25 pulled in Hugging Face's `kernels` package; this repo's kernels/ shadows it and
# transformers' import of it fails. pyproject pins transformers below 5.25: drop a leftover copy.
if python3 -m pip show --quiet kernels >/dev/null 2>&1; then
    python3 -m pip uninstall --quiet --yes kernels
fi
export TOKENIZERS_PARALLELISM=false
python3 -m pytest -q -p no:cacheprovider "$@"
