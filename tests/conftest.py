"""Test set-up shared by the whole suite.

Without a CUDA device, Triton kernels run through the interpreter, which must be chosen before
anything imports triton. The embedded `tiny` model is built once per test run in a private cache,
removed when the run ends.
"""
import atexit
import os
import shutil
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "AGENTKV_TEST_XDG_CACHE_HOME" not in os.environ:
    # a private cache for this run (about 100 MB once the tiny model is built), removed when the
    # run ends; set AGENTKV_TEST_XDG_CACHE_HOME to a folder of your own to keep one between runs
    _CACHE = tempfile.mkdtemp(prefix="agentkv-test-cache-")
    os.environ["AGENTKV_TEST_XDG_CACHE_HOME"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = os.environ["AGENTKV_TEST_XDG_CACHE_HOME"]

# tests import their shared helpers (hf_models, ...) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
