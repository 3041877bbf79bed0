"""The budget meter: what a config costs, measured without training or real weights.

Conventions:
- ``params``: trainable parameters. ``model_bytes``: the size of ``torch.save(state_dict_at(model,
  dtype))``, buffers included, counted exactly by saving uninitialised tensors into a byte counter.
- Storage dtypes: fp32, fp16, bf16 (floating tensors cast), int8 (each floating tensor stored as
  int8 plus one fp32 scale under ``<key>._scale``); integer buffers are kept as they are.
- ``macs``: multiply-accumulates of one image at ``data.image_size`` (32 px unless resized) in eval mode, counted by torch's
  FlopCounterMode on meta tensors (conv, linear, matmul); ``flops = 2 * macs``.
- ``train_memory_mb``: an estimate of peak training memory at the config's batch size: weights,
  gradients, optimizer state, and every layer's output kept for backward (at the autocast dtype).
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hps.trainers.config import TrainConfig
from hps.trainers.data import Shape, data_shape, input_side
from hps.trainers.device import autocast_dtype, resolve_device
from hps.trainers.errors import ModelChanged

STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
_OPT_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "radam": 2}


@dataclass(frozen=True)
class Measurement:
    params: int
    model_bytes: dict[str, int]  # storage dtype -> bytes of the saved state dict
    macs: int
    flops: int
    train_memory_mb: float
    num_classes: int
    image_size: int  # the side MACs and memory are counted at (``data.image_size``, else the images' own)
    in_channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def state_dict_at(model: nn.Module | dict[str, torch.Tensor], dtype: str = "fp32") -> dict[str, torch.Tensor]:
    """The state dict as stored at ``dtype`` (see module doc for int8)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r}; choose one of {', '.join(STORAGE_DTYPES)}")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not v.is_meta:  # saved from CUDA, each tensor carries its "cuda:0" location: bytes model_bytes never counted
            v = v.detach().cpu()
        if not v.is_floating_point():
            out[k] = v
        elif dtype == "int8" and v.is_meta:  # the layout alone, for the meter
            out[k] = torch.empty(v.shape, dtype=torch.int8, device="meta")
            out[f"{k}._scale"] = torch.empty((), device="meta")
        elif dtype == "int8":
            scale = v.detach().abs().amax().float().clamp_min(1e-12) / 127
            out[k] = (v.detach() / scale).round().clamp(-127, 127).to(torch.int8)
            out[f"{k}._scale"] = scale.reshape(())
        else:
            out[k] = v.detach().to(STORAGE_DTYPES[dtype])
    return out


def save_state(state_dict: dict[str, torch.Tensor], path: str | Path) -> int:
    """Write ``state_dict`` as the meter counts it (torch names a saved file's archive after the file,
    so this saves to memory first): the file has exactly :func:`saved_bytes` bytes. Returns them."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    Path(path).write_bytes(buf.getvalue())
    return buf.getbuffer().nbytes


def state_dict_from(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 state dict back from one stored by :func:`state_dict_at` (int8 scaled back)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in stored.items():
        if k.endswith("._scale"):
            continue
        scale = stored.get(f"{k}._scale")
        out[k] = v.float() * scale if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


class _ByteCounter:
    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def saved_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    """Exact ``torch.save`` size; meta tensors are replaced by uninitialised ones of the same shape."""
    real = {k: torch.empty(v.shape, dtype=v.dtype) if v.is_meta else v for k, v in state_dict.items()}
    counter = _ByteCounter()
    torch.save(real, counter)  # type: ignore[arg-type]
    return counter.n


def _meta_model(cfg: TrainConfig, shape: Shape) -> nn.Module:
    with torch.device("meta"):
        return cfg.model.build(shape.num_classes, shape.channels, input_side(cfg.data, shape))


def count_macs(model: nn.Module, device: str | torch.device = "meta", size: int = 32,
               channels: int = 3) -> tuple[int, int]:
    """(MACs of one ``size`` x ``size`` image, elements of every leaf module's output per image)."""
    outputs = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal outputs
        if isinstance(out, torch.Tensor):
            outputs += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.empty(1, channels, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return fc.get_total_flops() // 2, outputs


def measure(cfg: TrainConfig, dtypes: tuple[str, ...] = tuple(STORAGE_DTYPES), shape: Shape | None = None) -> Measurement:
    """Parameters, saved bytes per storage dtype, MACs/FLOPs and a memory estimate for ``cfg`` at
    its data's shape (classes, channels, side: :func:`data_shape`, or ``shape``). The network's
    figures are kept per network (model section, data shape, side): a study measures the same one
    again and again (each trial's pre-screen, warm starts, the space's smallest config)."""
    shape = shape or data_shape(cfg.data)
    side = input_side(cfg.data, shape)
    params, sizes, macs, act_elems = _network_figures(cfg, shape, side, dtypes)
    act_bytes = 4 if autocast_dtype(cfg.train.precision, resolve_device(cfg.train.device)) is None else 2
    weights = params * 4 * (2 + _OPT_STATES[cfg.optimizer.name])
    views = 3 if cfg.augment.augmix_jsd else 1  # AugMix JSD trains on three views of every image
    memory = weights + act_elems * cfg.train.batch_size * views * act_bytes
    return Measurement(params, sizes, macs, 2 * macs, round(memory / 2**20, 1), shape.num_classes, side, shape.channels)


_FIGURES: dict[str, tuple[int, dict[str, int], int, int]] = {}
_KEEP = 512  # networks whose figures are kept (a few hundred bytes each)


def _network_figures(cfg: TrainConfig, shape: Shape, side: int, dtypes: tuple[str, ...]) -> tuple[int, dict[str, int], int, int]:
    """(params, saved bytes per dtype, MACs, activation elements per image) of the config's network;
    kept unless a user's builder is not pinned to its file's sha256 (its code could change)."""
    from hps.trainers.models.check import is_own

    key = json.dumps([cfg.model.model_dump(), dataclasses.astuple(shape), side, sorted(dtypes)], sort_keys=True,
                     default=str)
    if key in _FIGURES:
        return _FIGURES[key]
    model = _meta_model(cfg, shape)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs, act_elems = count_macs(model, size=side, channels=shape.channels)
    sd = model.state_dict()
    figures = params, {d: saved_bytes(state_dict_at(sd, d)) for d in dtypes}, macs, act_elems
    if not is_own(cfg.model.name) or cfg.model.sha256:
        if len(_FIGURES) >= _KEEP:
            _FIGURES.pop(next(iter(_FIGURES)))
        _FIGURES[key] = figures
    return figures


@dataclass(frozen=True)
class Measured:
    """What the budget judged: the meter's parameter count and file bytes at the storage dtype."""

    params: int
    model_bytes: int
    dtype: str = "fp32"


def check_measured(model: nn.Module, measured: Measured, name: str) -> None:
    """Refuse to train a network other than the one measured (:class:`ModelChanged`): its trainable
    parameters and the bytes of its saved state at the storage dtype must be the meter's."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = saved_bytes(state_dict_at(model, measured.dtype))
    if (params, size) != (measured.params, measured.model_bytes):
        raise ModelChanged(f"model.name {name!r}: the network built to train has {params:,} parameters and {size:,} "
                           f"bytes at {measured.dtype}, the one measured for the budget {measured.params:,} and "
                           f"{measured.model_bytes:,}; the builder must return the same network for the same arguments")
