"""Test set-up shared by the whole suite.

Without a CUDA device, Triton kernels run through the interpreter, which must be chosen before
anything imports triton. The embedded `tiny` model is built once per test run in a private cache.
"""
import os
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_CACHE = tempfile.mkdtemp(prefix="agentkv-test-cache-")
os.environ.setdefault("AGENTKV_TEST_XDG_CACHE_HOME", _CACHE)
os.environ["XDG_CACHE_HOME"] = os.environ["AGENTKV_TEST_XDG_CACHE_HOME"]

# tests import their shared helpers (hf_models, ...) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
