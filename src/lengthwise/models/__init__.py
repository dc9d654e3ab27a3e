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


class SplitLinear(torch.nn.Module):
    """One fused projection (q|k|v, gate|up) kept as its parts: the outputs of several Linears side by side,
    [T, sum of out_features], laid out as the fused nn.Linear's. from_hf builds it where a model keeps the parts
    as separate tensors, which one fused weight could only hold as a copy: one GEMM per part, then one concat."""

    def __init__(self, *parts: torch.nn.Linear):
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)


def embedding(rows: int, dim: int) -> torch.nn.Module:
    """nn.Embedding(rows, dim). Built on the meta device (a checkpoint's skeleton in lw.load, whose weights are
    assigned next) it skips the N(0, 1) init: on meta tensors that init goes through torch._refs, whose first
    use imports torch._dynamo, about 2 s of every load for nothing."""
    if torch.get_default_device().type == "meta":
        return torch.nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
    return torch.nn.Embedding(rows, dim)


def residual_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The residual stream stays at least float32: with 16-bit weights only GEMM inputs are rounded,
    not the running sum of 30 layers (in float32 and float64 nothing changes)."""
    return torch.promote_types(weight_dtype, torch.float32)


# the projections that write into the residual stream: scaled down by depth at init (GPT-2, nanoGPT)
RESIDUAL_PROJECTIONS = ("attention.wo.weight", "feed_forward.w2.weight", ".w2.weight")


@torch.no_grad()
def init_weights(module: torch.nn.Module, std: float = 0.02, seed: int | None = None) -> torch.nn.Module:
    """Random init of a model built from a config, as nanoGPT does: every Linear and Embedding weight from
    N(0, std), the residual projections (attention output, FFN down) from N(0, std / sqrt(2 n_layers)), biases
    zero, norm weights one (norm biases zero). Returns the module, in train mode with gradients on.

        model = init_weights(Llama(LlamaConfig(vocab_size=512, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                                               hidden_dim=384)), seed=0)
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(torch.seed() if seed is None else seed)
    n_layers = module.cfg.n_layers
    for name, p in module.named_parameters():
        if p.dim() == 1:  # norm weights, and all biases
            p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
            continue
        s = std / (2 * n_layers) ** 0.5 if name.endswith(RESIDUAL_PROJECTIONS) else std
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * s)
    return module.train().requires_grad_(True)
