"""Thread and batch defaults picked from the machine (cores, bf16 and VNNI support).

Every default here can be overridden (``--threads``, ``--batch-size``,
``threads=`` / ``batch_size=`` in Python); they exist so that a plain
``auricle tag`` uses the hardware sensibly without flags.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: Windows per model call on a CPU with one stream. Batching amortises the per-call
#: overhead, but the activations of a call should stay cache-sized: on the 2-core
#: development VM 4 ten-second windows were as fast as 8 or faster (up to +13%) for
#: torch fp32 and int8 in four interleaved comparisons, bf16 and ONNX int8 were mixed
#: (+-10%), and 2 was slower (benchmarks/batch_size.py, docs/benchmarks.md).
CPU_BATCH_SIZE = 4
#: Windows per stream per call with several streams (auricle.inference.streams). On the
#: tagging path with two one-thread streams (benchmarks/batch_size.py --streams 2
#: --tagging-path, ced-mini) calls of 2 were fastest for torch fp32 and int8 (29.6 and
#: 55.5 clips/s vs 27.7 and 47.4 for 1, 29.5 and 48.2 for 4); ONNX int8 preferred 1
#: (59.0 vs 55.3), all within wide ranges. A call of 2 x streams windows keeps every
#: stream busy.
STREAM_BATCH_SIZE = 2
#: Larger batches keep an accelerator busy; memory is plentiful there.
ACCELERATOR_BATCH_SIZE = 32


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers for inference."""

    cores: int
    bf16: bool  # native bfloat16 dot products (avx512_bf16, amx_bf16)
    vnni: bool  # int8 dot products (avx512_vnni, avx_vnni, amx_int8)
    avx2: bool = False  # 256-bit integer SIMD: what FBGEMM's and ONNX Runtime's int8 kernels need at least
    amx: bool = False  # AMX bfloat16 tile products (amx_bf16): Intel Sapphire Rapids and later

    def to_dict(self) -> dict:
        return {"cores": self.cores, "bf16": self.bf16, "vnni": self.vnni, "avx2": self.avx2, "amx": self.amx}


def _cpuinfo(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str] | None:
    """The first processor's ``key: value`` fields of /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    fields = _cpuinfo(cpuinfo) or {}  # not Linux: no flags known, so no special claims
    return set((fields.get("flags") or fields.get("Features") or "").split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family and model numbers (``AMD EPYC, family 25 model 1``), as far as known.

    Virtual machines often report only a vendor's family name; the numbers tell the
    generation apart (AMD family 25 model 1 is Zen 3, model 17 Zen 4).
    """
    fields = _cpuinfo(cpuinfo)
    if fields is None:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or fields.get("Model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (container limits)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cores, quota) if quota is not None else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs a cgroup quota allows, rounded up; None without one.

    Docker's ``--cpus`` and Kubernetes CPU limits set a quota, not an affinity mask: on a
    64-core host a container limited to 2 CPUs still sees 64, and 64 threads would be throttled.
    cgroup v2 keeps it in ``cpu.max`` ("max" or "QUOTA PERIOD"), v1 in ``cpu.cfs_quota_us``
    (-1: none) and ``cpu.cfs_period_us``.
    """
    for folder in (root, root / "cpu", root / "cpu,cpuacct"):
        try:
            if (folder / "cpu.max").is_file():
                fields = (folder / "cpu.max").read_text().split()
                if fields[0] == "max":
                    return None
                return max(1, math.ceil(int(fields[0]) / int(fields[1])))
            if (folder / "cpu.cfs_quota_us").is_file():
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                if quota <= 0:
                    return None
                return max(1, math.ceil(quota / int((folder / "cpu.cfs_period_us").read_text())))
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            return None
    return None


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    flags = _cpu_flags(cpuinfo)
    return CpuFeatures(
        cores=usable_cores(),
        bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
        vnni=bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        avx2="avx2" in flags,
        amx="amx_bf16" in flags,
    )


#: How a training run may compute: ``auto`` resolves per machine (auricle.devices.training_bf16).
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")


def trains_faster_in_bf16(features: CpuFeatures) -> bool:
    """Whether training steps under bf16 autocast beat fp32 on this CPU: with bf16 dot products (avx512_bf16
    or AMX) they ran 1.4-1.9x faster (docs/benchmarks.md); without, autocast emulates bf16 and is slower."""
    return features.bf16


def vector_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What ATen's CPU capability would be (AVX512, AVX2, DEFAULT), from the CPU flags, without torch.

    ATen takes AVX512 only with the VL, BW and DQ subsets, each level only with FMA,
    and ``ATEN_CPU_CAPABILITY`` can cap it lower.
    """
    flags = _cpu_flags(cpuinfo)
    levels = ["DEFAULT"]
    if {"avx2", "fma"} <= flags:
        levels.append("AVX2")
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
            levels.append("AVX512")
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    return levels[-1] if cap not in levels else levels[levels.index(cap)]


def default_threads() -> int:
    """One compute thread per usable core: the model is compute bound, so more threads only contend."""
    return usable_cores()


def default_streams(threads: int | None = None) -> int:
    """Concurrent model calls on a CPU: one per thread.

    On the 2-core development VM two one-thread streams beat one two-thread call
    for every engine and size except ced-tiny in torch bf16/int8 (ced-mini: +6%
    torch fp32, +34% torch int8, +16% ONNX int8; docs/benchmarks.md); larger
    machines were not measured, and ``--streams`` overrides it.
    """
    return threads or default_threads()


def default_batch_size(device: str = "cpu", streams: int | None = None) -> int:
    """Windows per model call: enough for every stream (``streams=None``: the default count)."""
    if not str(device).startswith("cpu"):
        return ACCELERATOR_BATCH_SIZE
    return max(CPU_BATCH_SIZE, STREAM_BATCH_SIZE * (streams or default_streams()))


def fastest_precision(features: CpuFeatures | None = None, engine: str = "torch") -> str:
    """The precision expected to run fastest here: bf16 with AMX (torch), int8 with VNNI, bf16 with native bf16,
    int8 with AVX2, else fp32.

    What ``--precision auto`` picks; auricle never lowers precision unasked. The ``onnx``
    engine gets fp32 where torch would get bf16 without VNNI, and int8 with AMX: ONNX Runtime
    has no bf16 path on the CPU here. With AMX tiles (a 2-core Intel Xeon VM, ced-mini)
    torch bf16 ran 110-112 clips/s against 75-77 for torch int8, and agrees better with fp32;
    with VNNI but no AMX (AVX-512 AMD Zen 4) int8 wins (59.5 against 49.9).
    Without VNNI int8 products are slower than with it, but on an AVX2-only AMD
    Zen 3 they still beat fp32 by far (ced-mini, 2 streams: torch int8 26.7 and
    ONNX int8 30.0 clips/s against 20.5 in fp32; ced-base 4.9 and 5.1 against
    2.9; benchmarks/results/engines_zen3.json).
    """
    features = features or cpu_features()
    if features.amx and features.bf16:
        return "bf16" if engine == "torch" else "int8"
    if features.vnni:
        return "int8"
    if features.bf16:
        return "bf16" if engine == "torch" else "fp32"  # ONNX Runtime has no bf16 path here
    if features.avx2:
        return "int8"
    return "fp32"
