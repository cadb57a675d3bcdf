"""Backend selection and the package's import cost."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402
from kernels import KernelOps, get_kernel_ops  # noqa: E402
from kernels.backend import resolve_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPS = ["write_kv", "paged_prefill_attention", "paged_decode_attention", "rms_norm",
       "apply_rotary", "pack_blocks", "unpack_blocks"]


def test_torch_backend_holds_the_references():
    ops = get_kernel_ops("torch")
    assert isinstance(ops, KernelOps) and ops.backend == "torch"
    for name in OPS:
        assert getattr(ops, name) is getattr(kernels, name + "_ref")


def test_triton_backend_holds_the_kernels():
    ops = get_kernel_ops("triton", "cpu")
    assert ops.backend == "triton"
    for name in OPS:
        assert getattr(ops, name) is getattr(kernels, name)


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve_backend("auto", "cpu") == "torch"
    assert get_kernel_ops("auto", torch.device("cpu")).backend == "torch"
    assert resolve_backend("auto", "cuda") == "triton"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        get_kernel_ops("cuda-graphs")


def test_importing_kernels_does_not_import_triton():
    code = "import sys, kernels; kernels.get_kernel_ops('torch'); print('triton' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "False"


def test_triton_ops_work_through_kernel_ops():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ops = get_kernel_ops("triton", device)
    x = torch.randn(4, 64, device=device)
    w = torch.randn(64, device=device)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), kernels.rms_norm_ref(x, w, 1e-6))


def test_arguments_that_change_every_step_do_not_compile_new_variants():
    # Triton compiles a variant per value class of each int argument; a name that is not a
    # parameter would be ignored silently and the variant compiled inside a serving step
    import importlib
    import inspect
    from kernels._triton import LazyKernel
    attention_decode, attention_prefill, rms_norm = (
        importlib.import_module(f"kernels.{m}")
        for m in ("attention_decode", "attention_prefill", "rms_norm"))
    per_step = {attention_prefill._prefill_kernel: {"num_m_tiles", "num_seqs", "stride_bt"},
                attention_decode._decode_split_kernel: {"num_splits", "stride_bt"},
                attention_decode._decode_reduce_kernel: {"num_splits"},
                rms_norm._rms_norm_kernel: {"num_rows"}}
    for k, names in per_step.items():
        assert isinstance(k, LazyKernel) and set(k.do_not_specialize) == names
        assert names <= set(inspect.signature(k._fn).parameters), k.__name__
    from importlib.util import find_spec
    if find_spec("triton") is not None and find_spec("triton.experimental.gluon") is not None:
        ws = importlib.import_module("kernels.attention_prefill_ws")
        jit = ws._prefill_ws_kernel
        params = list(inspect.signature(jit.fn).parameters)
        for name in ("total", "num_m_tiles", "num_seqs", "stride_bt"):
            assert params.index(name) in jit.do_not_specialize or name in jit.do_not_specialize
