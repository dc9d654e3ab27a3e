"""In-memory HF models as lengthwise modules that share their parameters (`lw.from_hf`).

The module's parameters are the HF model's own `nn.Parameter` objects: nothing is copied (the data pointers
are the same), and a weight changed in one is changed in the other. Where lengthwise fuses projections (q|k|v,
gate|up) and HF keeps them as separate tensors, one fused weight could only be a copy; there the fused
`nn.Linear` becomes a `SplitLinear` of the parts (models/__init__.py): one GEMM per part and one concat of the
activations, the same numbers in the same layout. Nothing of HF's is patched, wrapped or changed: its modules
are only read, its parameters keep their `requires_grad`, and its model keeps its train/eval mode.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import LengthwiseError
from . import SplitLinear, bert, llama
from .load import FAMILIES, HF_ARCHS, _config

RENAME = {"llama": (llama.rename, llama.FUSED), "bert": (bert.rename, bert.FUSED)}


def arch_of(model) -> str:
    """The HF architecture of an in-memory model, one of HF_ARCHS (by class name: a subclass may change forward)."""
    name = type(model).__name__
    if not isinstance(model, nn.Module) or name not in HF_ARCHS:
        raise LengthwiseError(f"from_hf takes an in-memory HF model ({', '.join(HF_ARCHS)}), got {name}")
    return name


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The one device and floating dtype all of the model's parameters share (a model split over devices, or of
    mixed dtypes, cannot be shared as one lengthwise module)."""
    kinds = {(p.device, p.dtype) for p in model.parameters()}
    if len(kinds) != 1:
        shown = ", ".join(sorted(f"{d}/{str(t).removeprefix('torch.')}" for d, t in kinds))
        raise LengthwiseError(f"the {type(model).__name__}'s parameters are on several devices or dtypes ({shown}): "
                              "move it to one (model.to(device, dtype)) before from_hf")
    dev, dtype = kinds.pop()
    if dev.type == "meta" or not dtype.is_floating_point:
        raise LengthwiseError(f"the {type(model).__name__}'s weights are {dev.type}/{dtype}: from_hf needs "
                              "materialized floating-point weights (a quantized or meta model cannot be shared)")
    return dev, dtype


def _shell(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    """An nn.Linear around existing parameters, allocating nothing."""
    with torch.device("meta"):
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = weight
    if bias is not None:
        lin.bias = bias
    return lin


def share(model: nn.Module, **kw) -> nn.Module:
    """The lengthwise module (Llama or Bert) of an in-memory HF model, its parameters HF's own objects; kw go to
    the family's constructor (positions=, residual=). Returned in eval mode."""
    arch = arch_of(model)
    family = HF_ARCHS[arch]
    what = f"the config of the {arch} passed to from_hf"
    cfg = _config(FAMILIES[family].config, {**model.config.to_dict(), "architectures": [arch]}, what)
    rename, fused = RENAME[family]
    ours = rename(dict(model.named_parameters(remove_duplicate=False)), cfg, "hf")  # a tied head: under both names
    with torch.device("meta"):
        module = FAMILIES[family].model(cfg, **kw)
    for name, sub in list(module.named_modules()):
        key = next((k for k in fused if name == k or name.endswith("." + k)), None)
        if key is None:
            continue
        prefix = name[:len(name) - len(key)]
        parts = [f"{prefix}{p}" for p in fused[key]]
        missing = [p for p in parts if f"{p}.weight" not in ours]
        if missing:
            raise LengthwiseError(f"the {arch} lacks the weight lengthwise calls {missing[0]}.weight: is it a complete "
                                  f"{arch}?")
        split = SplitLinear(*(_shell(ours.pop(f"{p}.weight"), ours.pop(f"{p}.bias", None)) for p in parts))
        if sum(p.out_features for p in split.parts) != sub.out_features or any(
                p.in_features != sub.in_features or (p.bias is None) != (sub.bias is None) for p in split.parts):
            raise LengthwiseError(f"the {arch}'s {', '.join(fused[key])} of {prefix.rstrip('.') or 'the model'} do "
                                  f"not add up to the [{sub.out_features}, {sub.in_features}] projection its config implies")
        parent, leaf = name.rpartition(".")[::2] if "." in name else ("", name)
        setattr(module.get_submodule(parent), leaf, split)
    for name, p in list(module.named_parameters()):
        if not p.is_meta:
            continue  # a part of a SplitLinear: HF's already
        if name not in ours:
            raise LengthwiseError(f"the {arch} lacks the weight lengthwise calls {name}: is it a complete {arch}?")
        if tuple(ours[name].shape) != tuple(p.shape):
            raise LengthwiseError(f"the {arch}'s weight for {name} has shape {tuple(ours[name].shape)}, its config "
                                  f"implies {tuple(p.shape)}")
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent), leaf, ours[name])
    return module.eval()
