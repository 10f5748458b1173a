"""What the compile target can do: one table, filled once per process, read by the kernels.

ONNX Runtime's MLAS fills a table of kernel choices from CPUID once (``platform.cpp``); here the
facts that shape the fast backend's kernels come from the target Numba compiles for, which is
not always the CPU it runs on: ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` can ask for an older
instruction set (``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` builds AVX2 code on an AVX-512
machine; ``NUMBA_CPU_NAME=generic`` baseline x86-64). Numba hands LLVM the CPU name and a
feature string: the host's features unless ``NUMBA_CPU_FEATURES`` is set (an empty string
means the named CPU's own defaults). :func:`target` reads both the way Numba does.

From the features follow the vector registers the micro-kernels may fill:

================  ============  =========  ==============================================
target            vector bits   registers  micro-kernel tile (rows x columns, see _gemm)
================  ============  =========  ==============================================
AVX-512           512           32         6 x 32: 12 accumulators + 2 loads + 1 broadcast
AVX2 + FMA        256           16         6 x 16: 12 accumulators (ymm) + 2 + 1
NEON (aarch64)    128           32         6 x 16: 24 accumulators (q) + 4 + 1
SSE2 (baseline)   128           16         2 x 16: 8 accumulators (xmm) + 4 + 1
================  ============  =========  ==============================================

The tile is what fits in the register file without spilling; which schedule wins on a given
machine is measured (:mod:`._tune`), not assumed.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

#: LLVM CPU names whose default features include AVX-512F (used when the feature string is empty)
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake",
                "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "diamondrapids",
                "knl", "knm", "znver4", "znver5", "x86-64-v4")
#: ... AVX2 and FMA
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
              "lunarlake", "gracemont", "pantherlake", "znver1", "znver2", "znver3", "bdver4", "x86-64-v3",
              "goldmont", "tremont") + _AVX512_CPUS
_AVX512_BF16_CPUS = ("cooperlake", "sapphirerapids", "emeraldrapids", "graniterapids", "diamondrapids",
                     "znver4", "znver5")
_AMX_CPUS = ("sapphirerapids", "emeraldrapids", "graniterapids", "diamondrapids")


@dataclass(frozen=True)
class Target:
    """The compile target's facts that the kernels depend on."""
    machine: str          #: ``x86_64``, ``aarch64``, ...
    cpu_name: str         #: LLVM's name of the CPU Numba compiles for
    cpu_model: str        #: the processor's marketing name (``/proc/cpuinfo``), for reports
    features: frozenset   #: enabled LLVM features, without the ``+``
    vector_bits: int      #: widest float vector register
    vector_registers: int  #: how many of them
    fma: bool             #: fused multiply-add instructions
    mr: int               #: micro-kernel rows (see the table above)
    nr: int               #: micro-kernel columns: a multiple of 16

    @property
    def isa(self) -> str:
        """The instruction set the float32 kernels use, in one word."""
        if "avx512f" in self.features:
            return "avx512"
        if "avx2" in self.features and self.fma:
            return "avx2"
        if self.machine in ("aarch64", "arm64"):
            return "neon"
        return "sse2" if self.machine in ("x86_64", "AMD64", "i686", "x86") else "generic"

    @property
    def bf16_units(self) -> tuple:
        """The bfloat16 units the target has: ``amx``, ``avx512bf16`` (possibly both, or none)."""
        units = []
        if {"amx-bf16", "amx-tile"} <= self.features:
            units.append("amx")
        if "avx512bf16" in self.features:
            units.append("avx512bf16")
        return tuple(units)

    def describe(self) -> str:
        """One line for ``summary()``, ``bench`` and ``profile``."""
        extra = ", ".join(self.bf16_units)
        return (f"{self.cpu_model or self.cpu_name} ({self.machine}); kernels compiled for "
                f"{self.cpu_name}: {self.isa}" + (f" + {extra}" if extra else "")
                + f", micro-kernel {self.mr}x{self.nr}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _features(cpu_name: str, feature_string: str | None, host_features: str) -> frozenset:
    """The enabled features, as LLVM will see them."""
    if feature_string is None:
        feature_string = host_features
    enabled = {f[1:] for f in feature_string.split(",") if f.startswith("+")}
    if not feature_string.strip():  # the named CPU's own defaults
        name = cpu_name.lower()
        if name.startswith(_AVX2_CPUS):
            enabled |= {"avx", "avx2", "fma"}
        if name.startswith(_AVX512_CPUS):
            enabled |= {"avx512f"}
        if name.startswith(_AVX512_BF16_CPUS):
            enabled |= {"avx512bf16"}
        if name.startswith(_AMX_CPUS):
            enabled |= {"amx-bf16", "amx-tile"}
    return frozenset(enabled)


def make_target(machine: str, cpu_name: str, features: frozenset, cpu_model: str = "") -> Target:
    """The :class:`Target` of a machine, LLVM CPU name and feature set (the table above)."""
    arm = machine in ("aarch64", "arm64")
    if "avx512f" in features:
        bits, regs, mr, nr = 512, 32, 6, 32
    elif "avx2" in features and "fma" in features:
        bits, regs, mr, nr = 256, 16, 6, 16
    elif arm:
        bits, regs, mr, nr = 128, 32, 6, 16
    else:
        bits, regs, mr, nr = 128, 16, 2, 16
    fma = arm or "fma" in features or "avx512f" in features
    return Target(machine, cpu_name, cpu_model, features, bits, regs, fma, mr, nr)


@functools.lru_cache(maxsize=1)
def host_features() -> dict:
    """LLVM's feature flags of the CPU this process runs on (``{"avx2": True, ...}``; empty where
    LLVM cannot tell). Asked once: the call costs ~0.2 ms, a layer's whole time at batch 1."""
    try:
        import llvmlite.binding as ll
        return dict(ll.get_host_cpu_features())
    except Exception:  # noqa: BLE001 - LLVM cannot tell on some platforms
        return {}


@functools.lru_cache(maxsize=1)
def target() -> Target:
    """The target Numba compiles the kernels for, in this process."""
    import llvmlite.binding as ll
    from numba.core import config
    cpu_name = config.CPU_NAME or ll.get_host_cpu_name()
    host = ",".join(("+" if on else "-") + name for name, on in host_features().items())
    features = _features(cpu_name, config.CPU_FEATURES, host)
    return make_target(platform.machine(), cpu_name, features, _cpu_model())


def key() -> str:
    """A file-name-safe key for the compile target: what tuned schedules depend on."""
    t = target()
    raw = f"{t.cpu_model}-{t.cpu_name}-{t.isa}-{'+'.join(t.bf16_units) or 'nobf16'}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:120]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads() -> int:
    """Threads the kernels run on."""
    import numba
    return numba.get_num_threads()


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off environment variable (``0``, ``false``, ``no``, ``off``: off)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")
