"""The training device and the autocast dtype a config resolves to (shared by the trainer and the meter)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. ``auto`` is bf16 on CUDA devices that run it natively (Ampere and
    later), fp32 elsewhere: torch counts emulated bf16 as supported, and a T4 would pick it and run slower."""
    if precision == "auto":
        # a CUDA config measured on a machine without CUDA (the meter) counts as bf16
        ok = device.type == "cuda" and (not torch.cuda.is_available()
                                        or torch.cuda.is_bf16_supported(including_emulation=False))
        return torch.bfloat16 if ok else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
