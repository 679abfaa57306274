"""What this machine offers for inference, and how each engine and precision would run on it.

``auricle system`` prints it. The defaults auricle picks (threads, streams, batch
size, ``--precision auto``, the fp32 product path) depend on the CPU; this says
which were picked and why, so a slow or surprising run can be explained, and
bug reports can carry it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import metadata

from auricle import allocator
from auricle.cache import cache_dir
from auricle.inference.tuning import (
    cpu_features,
    cpu_model,
    default_batch_size,
    default_streams,
    default_threads,
    fastest_precision,
    trains_faster_in_bf16,
)
from auricle.inference.tuning import vector_isa as flags_vector_isa  # the report's field has the plain name
from auricle.onnx.cache import prepared_graphs

#: Where torch is absent (an install for exported files only): what the report says instead.
NO_TORCH = "not installed (exported files only; pip install torch==2.13.0 for the weights)"


@dataclass(frozen=True)
class EngineRoute:
    """How one engine/precision pair runs the encoder here."""

    engine: str
    precision: str
    available: bool
    route: str  # what runs it, in a few words
    note: str = ""  # why it is slow or unavailable, where it is

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"


@dataclass(frozen=True)
class SystemReport:
    cpu: str
    cores: int
    vector_isa: str  # ATen's CPU capability: DEFAULT, AVX2, AVX512, ... (without torch: from the CPU flags)
    avx2: bool
    vnni: bool
    native_bf16: bool
    amx: bool  # AMX bf16 tiles: where --precision auto takes bf16 for torch
    torch: str  # its version, or NO_TORCH
    onnxruntime: str | None
    threads: int
    streams: int
    batch_size: int
    auto_precision: dict[str, str]  # engine -> what --precision auto picks
    training_precision: str  # what `finetune` and `distill train` --precision auto train in on this CPU
    routes: list[EngineRoute]
    cache_dir: str
    exported_files: str  # how an `auricle export` file given as --checkpoint runs here
    prepared_graphs: int = 0  # whole models prepared for `--engine onnx` in the cache (auricle.onnx.prepared)
    freed_memory: str = ""  # what the `auricle` command does to malloc here (auricle.allocator)

    def to_dict(self) -> dict:
        return asdict(self)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_routes(features) -> list[EngineRoute]:
    """Described from the same decision the torch engine makes (:func:`torch_encoder_path`)."""
    from auricle.engines.torch import torch_encoder_path
    from auricle.engines.fused import bf16_attention, fp32_products, fused_supported, native_bf16

    products = "oneDNN, prepacked weights" if fp32_products() == "onednn" else "BLAS products (no AVX-512)"
    no_bf16 = "no oneDNN bf16 kernels on this CPU" if fused_supported("cpu", "fp32") else "no oneDNN in this build"
    described = {
        ("fp32", "fused"): (f"fused encoder, {products}", ""),
        ("fp32", "module"): ("the CED module (no oneDNN in this torch build)", ""),
        ("bf16", "fused"): ("fused encoder, oneDNN bf16, "
                            + ("fused attention kernel (AMX)" if bf16_attention() == "sdpa" else "attention as products"),
                            "" if native_bf16() else
                            "no native bf16 (avx512_bf16/AMX): converted products, may not beat fp32"),
        ("bf16", "autocast"): ("torch.autocast, emulated", f"{no_bf16}: several times slower than fp32"),
        ("int8", "fused"): ("fused encoder, FBGEMM dynamic int8", "" if features.vnni else
                            "no VNNI: slower than with it, still faster than fp32 on AVX2"),
        ("int8", "quantized"): ("quantize_dynamic Linear layers (no fused FBGEMM path)", ""),
    }
    return [EngineRoute("torch", precision, True, *described[precision, torch_encoder_path("cpu", precision)])
            for precision in ("fp32", "bf16", "int8")]


def _onnx_routes(version: str | None) -> list[EngineRoute]:
    if version is None:
        missing = "needs onnxruntime: pip install 'auricle[onnx]'"
        return [EngineRoute("onnx", precision, False, "-", missing) for precision in ("fp32", "int8")]
    return [
        EngineRoute("onnx", "fp32", True, f"ONNX Runtime {version}, fused Attention/BiasGelu graph"),
        EngineRoute("onnx", "int8", True, f"ONNX Runtime {version}, QAttention, 7-bit per-channel weights"),
    ]


def system_report() -> SystemReport:
    """Probe this machine (CPU flags, torch and ONNX Runtime builds); nothing is loaded or run.

    Works without torch installed too (an install for exported files only): the torch
    engines are then reported unavailable.
    """
    features = cpu_features()
    threads = default_threads()
    streams = default_streams(threads)
    onnxruntime = _version("onnxruntime")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        vector_isa, torch_version, torch_routes = (torch.backends.cpu.get_cpu_capability(), torch.__version__,
                                                   _torch_routes(features))
    else:
        vector_isa = flags_vector_isa()
        torch_version = NO_TORCH
        torch_routes = [EngineRoute("torch", precision, False, "-", "needs PyTorch") for precision in
                        ("fp32", "bf16", "int8")]
    cache = cache_dir()
    return SystemReport(
        cpu=cpu_model(),
        cores=features.cores,
        vector_isa=vector_isa,
        avx2=features.avx2,
        vnni=features.vnni,
        native_bf16=features.bf16,
        amx=features.amx,
        torch=torch_version,
        onnxruntime=onnxruntime,
        threads=threads,
        streams=streams,
        batch_size=default_batch_size("cpu", streams),
        auto_precision={engine: fastest_precision(features, engine) for engine in ("torch", "onnx")},
        training_precision="bf16 (autocast)" if trains_faster_in_bf16(features) else "fp32",
        routes=torch_routes + _onnx_routes(onnxruntime),
        cache_dir=str(cache),
        exported_files=(f"ONNX Runtime {onnxruntime}, without importing torch (tag, evaluate, serve, listen, embed "
                        f"--checkpoint FILE.onnx, or --engine onnx)" if onnxruntime
                        else "need onnxruntime: pip install 'auricle[onnx]'"),
        prepared_graphs=len(prepared_graphs(cache)),
        freed_memory=allocator.describe(),
    )
