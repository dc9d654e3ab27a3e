"""Model families, one file each, and the loader that finds and reads checkpoints."""
import torch


def fuse(sd: dict, groups: dict[str, tuple[str, ...]]) -> dict:
    """Concatenate per-layer projections that run as one GEMM (e.g. q, k, v into qkv), weights and biases."""
    out = dict(sd)
    for name in list(sd):
        for fused, parts in groups.items():
            if name.endswith(f".{parts[0]}.weight") or name.endswith(f".{parts[0]}.bias"):
                prefix, suffix = name.split(f".{parts[0]}.")
                keys = [f"{prefix}.{p}.{suffix}" for p in parts]
                if all(k in out for k in keys):
                    out[f"{prefix}.{fused}.{suffix}"] = torch.cat([out.pop(k) for k in keys])
    return out


def residual_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The residual stream stays at least float32: with 16-bit weights only GEMM inputs are rounded,
    not the running sum of 30 layers (in float32 and float64 nothing changes)."""
    return torch.promote_types(weight_dtype, torch.float32)
