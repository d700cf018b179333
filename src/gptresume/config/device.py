"""`train.bf16: auto`: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

The demo preset (examples/demo.yaml) uses it, so that one file is right on every machine: a GPU with bf16 (CUDA
compute capability 8 or later) trains in bf16 on the GPU; a CPU with AVX512-BF16 or AMX trains in bf16 with
`use_cpu: true` (Transformers refuses bf16 on a CPU otherwise, and a machine without a GPU trains there anyway);
any other machine trains in fp32, since bf16 autocast on a CPU without native bf16 is many times slower (measured
here: about 80 tokens/s instead of thousands). The resolved value (`bf16: true/false`, and `use_cpu` when it was
added) is what config.yaml and every manifest record, so a resume on hardware that resolves differently is a
changed `bf16`, refused like any other change (exactness needs the same hardware anyway).
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """AVX512-BF16 or AMX in /proc/cpuinfo's flags (Linux). Elsewhere (no /proc/cpuinfo) False: fp32 is the safe
    choice when it cannot be told."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo


def cuda_bf16() -> tuple[bool, bool]:
    """(a CUDA GPU is visible, it computes bf16 natively)."""
    import torch

    if not torch.cuda.is_available():
        return False, False
    return True, bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(train: dict, gpu: tuple[bool, bool] | None = None, cpu_bf16: bool | None = None) -> dict:
    """`train` with `bf16: auto` replaced by what this machine does well (see the module docstring); unchanged
    when bf16 is not `auto`. `gpu` and `cpu_bf16` stand in for the probes (tests)."""
    if not isinstance(train, dict) or train.get("bf16") != AUTO:
        return train
    out = dict(train)
    on_gpu, gpu_bf16 = (gpu if gpu is not None else cuda_bf16()) if not train.get("use_cpu") else (False, False)
    if on_gpu:
        out["bf16"] = gpu_bf16
        return out
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    out["bf16"] = native
    if native:
        out["use_cpu"] = True  # Transformers' condition for bf16 on a CPU; this machine trains there anyway
    return out
