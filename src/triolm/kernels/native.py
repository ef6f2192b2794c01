"""Build (once, cached on disk) and call triolm's native CPU kernels.

The library is compiled from the `.cpp` files beside this module with the system C++
compiler for this very CPU (`-march=native`) into ~/.cache/triolm/kernels/, keyed by a
hash of the sources, flags, compiler and CPU flags; later starts load it in milliseconds. Set
TRIOLM_NATIVE=0 to disable it (TRIOLM_NATIVE_FLAGS adds compiler flags, e.g.
-DPF_AHEAD=8192 to try another prefetch distance; TRIOLM_KERNEL_CACHE moves the cache). When
it cannot be built (no compiler, not x86/Linux), `lib()` returns None and the model uses its
pure-torch paths: same results, slower.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE_DIR = Path(__file__).parent

_FLAGS = ["-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=c++17",
          "-fno-math-errno", "-Wall"] + os.environ.get("TRIOLM_NATIVE_FLAGS", "").split()
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False

_i64, _int, _float, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "tl_has_avx512": ([], _int),
    "tl_set_spin_us": ([_int], None),
    "tl_set_expand_min_rows": ([_i64], None),
    "tl_set_att_chunk": ([_i64], None),
    "tl_linear": ([_int, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64, _i64, _i64, _int, _int], None),
    "tl_set_inreg_max_rows": ([_i64], None),
    "tl_dequant_blocks": ([_int, _ptr, _ptr, _i64, _i64, _int], None),
    "tl_dequant_q8_0": ([_ptr, _ptr, _ptr, _i64, _i64, _int], None),
    "tl_f16_to_f32": ([_ptr, _ptr, _i64, _int], None),
    "tl_silu_mul": ([_ptr, _ptr, _i64, _i64], None),
    "tl_rms_norm": ([_ptr, _i64, _ptr, _ptr, _i64, _i64, _i64, _float], None),
    "tl_decode_attention": ([_ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _int, _ptr, _i64, _ptr,
                             _ptr, _ptr, _int, _ptr, _i64, _i64, _i64, _i64, _i64, _float, _int],
                            None),
    "tl_decode_step": ([_ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64, _float, _float, _float, _int], None),
    "tl_prefill_attention": ([_ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _i64, _i64, _i64, _i64, _i64, _float,
                              _int], _int),
    "tl_moe_ffn": ([_ptr, _ptr, _i64, _ptr, _i64, _i64, _int], None),
}
# Gemma's layers (gemma_decode.cpp)
_SIGNATURES.update({
    "tl_decode_attention_windowed": ([_ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _int, _ptr, _i64, _ptr,
                                      _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _float, _int,
                                      _i64, _float], None),
    "tl_gelu_tanh_mul": ([_ptr, _ptr, _i64, _i64], None),
    "tl_gemma_decode_step": ([_ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _i64, _float, _float,
                              _i64, _float, _int], None),
})


def cache_dir() -> Path:
    env = os.environ.get("TRIOLM_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "triolm" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _sources() -> list[Path]:
    """Every C++ file of the library; headers count towards the cache key too."""
    return sorted(p for p in _SOURCE_DIR.iterdir() if p.suffix in (".cpp", ".h"))


def _build(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    texts = [f"{p.name}\0{p.read_text()}" for p in _sources()]
    key = hashlib.sha256("\0".join([*texts, " ".join(_FLAGS), version, _cpu_flags()]).encode())
    out = cache_dir() / f"triolm_kernels_{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "a+") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if out.exists():
                return out
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / out.name
                units = [str(p) for p in _sources() if p.suffix == ".cpp"]
                proc = subprocess.run([cxx, *_FLAGS, *units, "-o", str(target)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"compiling the native kernels failed:\n{proc.stderr[-2000:]}")
                os.replace(target, out)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    return out


def lib() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when disabled or unbuildable (logged once).
    A call during a build (`prepare_async`) waits for it."""
    if _tried:  # set only once the outcome is known
        return _lib
    with _lock:
        if not _tried:
            _load()
        return _lib


def _load() -> None:
    global _lib, _tried
    try:
        _lib = _build_and_open()
    finally:
        _tried = True


def _build_and_open() -> ctypes.CDLL | None:
    if os.environ.get("TRIOLM_NATIVE", "1") in ("0", "false", "no", "off"):
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    cxx = _compiler()
    if cxx is None:
        log.warning("no C++ compiler found: using the slower pure-torch kernels")
        return None
    try:
        path = _build(cxx)
        dll = ctypes.CDLL(str(path))
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(dll, name)
            fn.argtypes, fn.restype = args, res
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("native kernels unavailable (%s): using the slower pure-torch kernels", exc)
        return None
    return dll


def available() -> bool:
    return lib() is not None


def prepare_async() -> None:
    """Start building/loading the library in a background thread (a first build takes a
    few seconds of compiler time; overlapping it with reading weights keeps start-up
    short). `lib()` waits for it."""
    if not _tried:
        threading.Thread(target=lib, name="triolm-kernels-build", daemon=True).start()


def loop_busy_flag() -> ctypes.c_int | None:
    """The kernels' `tl_loop_busy` flag (see runtime/loop_core.py); None while the library
    is not loaded (this never builds it)."""
    dll = _lib if _tried else None
    return None if dll is None else ctypes.c_int.in_dll(dll, "tl_loop_busy")


def num_threads() -> int:
    return torch.get_num_threads()


#: Weight formats understood by the kernels (`tl_linear`, `tl_decode_step`); the block
#: kinds and W_PARTS are defined in quant_blocks.h and iq4_blocks.h.
W_F32, W_F16, W_Q8_0 = 0, 1, 2
W_PARTS = 32
#: GGUF block types the kernels read as the file stores them -> their kind.
BLOCK_KINDS = {"BF16": 3, "Q4_0": 4, "Q4_1": 5, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
               "Q2_K": 9, "Q3_K": 10, "Q4_K": 11, "Q5_K": 12, "Q6_K": 13,
               "IQ4_NL": 20, "IQ4_XS": 21}  # iq4_blocks.h

#: KV cache element types understood by `tl_decode_attention` / `tl_decode_step`.
KV_KINDS = {torch.float32: 0, torch.float16: 1}


# ------------------------------------------------------------------ plans
# A plan is an int64 table of named slots (pointers as integers) a model writes once and
# a kernel walks every call; the slots are named once, in decode_plan.h, and read here.

def _plan_enums(text: str) -> dict[str, tuple[str, ...]]:
    """`namespace::Enum` -> its enumerator names in order, without the closing size."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    enums: dict[str, tuple[str, ...]] = {}
    for space, body in re.findall(r"namespace (\w+) \{(.*?)\}  // namespace", text, flags=re.S):
        for name, items in re.findall(r"enum (\w+) \{(.*?)\};", body, flags=re.S):
            names = [n.strip() for n in items.split(",") if n.strip()]
            enums[f"{space}::{name}"] = tuple(names[:-1])
    return enums


_PLANS = _plan_enums((_SOURCE_DIR / "decode_plan.h").read_text())


class PlanLayout:
    """One plan's slot names: a header, then rows (layers or experts) of the same slots."""

    def __init__(self, space: str, row: str):
        self.header = _PLANS[f"{space}::Header"]
        self.row = _PLANS[f"{space}::{row}"]

    def pack(self, header: Mapping[str, int], rows: Sequence[Mapping[str, int]]) -> torch.Tensor:
        """The int64 table, each slot taken by name: a missing or unknown name is an error."""
        table = _ordered(self.header, header)
        for row in rows:
            table += _ordered(self.row, row)
        return torch.tensor(table, dtype=torch.int64)


def _ordered(names: tuple[str, ...], values: Mapping[str, int]) -> list[int]:
    if set(values) != set(names):
        raise ValueError(f"plan slots {sorted(set(values) ^ set(names))} missing or unknown")
    return [int(values[n]) for n in names]


#: `tl_decode_step` (decode_step.cpp): llama-family decoders, MoE ones included.
DECODE_PLAN = PlanLayout("plan", "Layer")
#: `tl_moe_ffn` (moe_kernels.cpp): one sparse MLP, a row per expert.
MOE_PLAN = PlanLayout("moe_plan", "Expert")
#: `tl_gemma_decode_step` (gemma_decode.cpp).
GEMMA_PLAN = PlanLayout("gemma_plan", "Layer")
