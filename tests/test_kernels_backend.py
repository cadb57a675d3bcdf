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
