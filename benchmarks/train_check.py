"""Training on the GPU's varlen backend: a packed batch's loss and gradients against the float32 reference.

    PYTHONPATH=src python benchmarks/train_check.py

The CPU test suite checks the reference and cpu_flash backends against HF's LlamaForCausalLM
(tests/models/test_training.py: loss within 1e-5, every gradient within 1e-4). This checks the third family,
varlen (FlashAttention's varlen kernel, with its backward), in bf16 against the float32 reference on the same
weights and the same packed batch of documents, and that the Triton paths stayed out of the way (they have no
backward: a forward through them would have no gradient to give). Writes train_check.json to $OUT.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402

BOUND_LOSS, BOUND_GRAD = 1e-2, 5e-2  # bf16 weights and activations against float32


def loss_of(lm, batch):
    from lengthwise.attention import AttnMeta
    from lengthwise.attention.layer import Step
    m = lm.module
    logits = m(batch.tokens, batch.positions, Step(AttnMeta.packed(batch.cu_seqlens, batch.max_seqlen), m.mask, lm.backend))
    last = torch.zeros(batch.tokens.shape[0], dtype=torch.bool, device=logits.device)
    last[batch.cu_seqlens[1:].long() - 1] = True
    return F.cross_entropy(logits[~last].float(), batch.tokens.roll(-1)[~last])


def main():
    import transformers

    import lengthwise as lw
    from lengthwise.ragged import RaggedBatch
    folder = Path(tempfile.mkdtemp()) / "tiny"
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (300, 17, 1200, 64)]
    rows, grads = [], {}
    for name, dtype, backend in [("reference", "float32", "reference"), ("varlen", "bfloat16", "varlen")]:
        lm = lw.load(folder, device="cuda", dtype=dtype, backend=backend, trainable=True)
        batch = RaggedBatch.from_lists(docs, "cuda")
        loss = loss_of(lm, batch)
        loss.backward()
        grads[name] = {n: p.grad.float() for n, p in lm.module.named_parameters()}
        rows.append({"backend": name, "dtype": dtype, "loss": loss.item()})
    worst = max(((grads["varlen"][n] - r).norm() / r.norm()).item() for n, r in grads["reference"].items())
    res = {"benchmark": "train_check", "device": device_name(), "torch": torch.__version__, "docs": [len(d) for d in docs],
           "rows": rows, "loss_rel_err": abs(rows[1]["loss"] - rows[0]["loss"]) / rows[0]["loss"],
           "worst_grad_rel_err": worst, "bounds": {"loss": BOUND_LOSS, "grad": BOUND_GRAD}}
    res["passed"] = res["loss_rel_err"] <= BOUND_LOSS and worst <= BOUND_GRAD
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    if not res["passed"]:
        sys.exit("train_check: varlen training off the float32 reference")


if __name__ == "__main__":
    main()
