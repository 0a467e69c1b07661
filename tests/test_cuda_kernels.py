"""CuPy checks that need no GPU: the module imports, the no-device error is clear, and every
CUDA kernel source compiles with NVRTC for float and double."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends import get_backend
from backends.cupy_backend import SPECS, standalone_source

ARCH = "-arch=compute_80"
ROOT = Path(__file__).resolve().parents[1]


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as exc:
        pytest.skip(f"CuPy is not installed: {exc}")
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC shared library could not be loaded
        pytest.skip(f"NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12): {exc}")
    return nvrtc


def compile_with_nvrtc(source: str) -> str:
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source, "kernel.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, (ARCH,))
        except nvrtc.NVRTCError as exc:
            raise AssertionError(f"{exc}\n{nvrtc.getProgramLog(prog)}\n{source}") from exc
        return (
            nvrtc.getPTX(prog).decode()
            if isinstance(nvrtc.getPTX(prog), bytes)
            else str(nvrtc.getPTX(prog))
        )
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("ctype", ["float", "double"])
@pytest.mark.parametrize("key", sorted(SPECS))
def test_kernel_compiles_with_nvrtc(key, ctype):
    ptx = compile_with_nvrtc(standalone_source(SPECS[key], ctype))
    assert SPECS[key].name in ptx
    # float kernels must not silently compute in double (a stray double literal would)
    if ctype == "float":
        assert ".f64" not in ptx, f"{key} computes in double precision when T is float"


def test_every_bias_grad_kernel_has_its_tiled_variant():
    """The NVRTC check above covers the two passes of the tiled bias gradient too."""
    warp = {key for key in SPECS if key.endswith("_bias_grad") and "_tiled" not in key}
    assert warp, "no bias-gradient kernels"
    for key in warp:
        assert key.replace("_bias_grad", "_tiled_bias_grad") in SPECS
    assert "column_sums_of_tiles" in SPECS


def test_broken_kernel_fails_to_compile():
    """The check above can fail: a typo in a kernel body is a compile error."""
    spec = SPECS["relu"]._replace(operation="a = z > T(0) ? z : T(0)")  # missing ';'
    with pytest.raises(AssertionError, match="NVRTC_ERROR_COMPILATION"):
        compile_with_nvrtc(standalone_source(spec, "float"))


def test_cupy_module_imports_without_cupy():
    """With CuPy made unimportable, backends, backprop and CupyBackend import, CuPy is not
    imported by them, and asking for the backend is a RuntimeError that says what to
    install (in a fresh interpreter, so nothing imported before counts)."""
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import backends, backprop\n"
        "from backends import CupyBackend, get_backend\n"
        "assert CupyBackend.name == 'cupy' and sys.modules['cupy'] is None\n"
        "try:\n"
        "    get_backend('cupy')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'pip install -e ".[cuda12]"' in done.stdout


def test_get_backend_cupy_error_is_clear():
    try:
        import cupy
    except ImportError:
        with pytest.raises(RuntimeError, match=r'pip install -e "\.\[cuda12\]"'):
            get_backend("cupy")
        return
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        with pytest.raises(RuntimeError, match="no usable CUDA device") as info:
            get_backend("cupy")
        assert str(exc) in str(info.value)  # the driver's own message is included
    else:
        pytest.skip("a CUDA device is present: the no-device error cannot occur")
