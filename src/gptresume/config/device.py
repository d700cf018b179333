"""`train.bf16: auto`: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

The demo preset (examples/demo.yaml) uses it, so that one file is right on every machine: a GPU with bf16 (CUDA
compute capability 8 or later) trains in bf16 on the GPU, an older GPU or Apple's MPS in fp32, never with
`use_cpu`; a machine without a GPU gets `use_cpu: true` (it trains on the CPU anyway; Transformers accepts bf16 on
a CPU only with it), and bf16 only with AVX512-BF16 or AMX: without them bf16 autocast is many times slower than
fp32 (measured here: about 80 tokens/s instead of thousands). So the demo resolves on a CPU to what it was before
`auto` (bf16 with use_cpu, or fp32 with use_cpu), and runs made then resume unchanged. The resolved value
(`bf16: true/false`, and `use_cpu` when it was added) is what config.yaml and every manifest record, so a resume
on hardware that resolves differently is a changed `bf16`, refused like any other change (exactness needs the same
hardware anyway).
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


def accelerator() -> tuple[str | None, bool]:
    """(the accelerator Trainer would use: "cuda", "mps" or None for the CPU, whether it computes bf16 natively)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported(including_emulation=False))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", False  # bf16 autocast on MPS is partial: fp32
    return None, False


def resolve_precision(train: dict, device: tuple[str | None, bool] | None = None,
                      cpu_bf16: bool | None = None) -> dict:
    """`train` with `bf16: auto` replaced by what this machine does well (see the module docstring); unchanged
    when bf16 is not `auto`. `device` and `cpu_bf16` stand in for the probes (tests)."""
    if not isinstance(train, dict) or train.get("bf16") != AUTO:
        return train
    out = dict(train)
    kind, native = (device if device is not None else accelerator()) if not train.get("use_cpu") else (None, False)
    if kind is not None:  # trained on the GPU: use_cpu stays as given (absent)
        out["bf16"] = native
        return out
    out["bf16"] = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    out["use_cpu"] = True  # on the CPU: Transformers' condition for bf16 there, and what it does anyway
    return out
