"""Models that learn: a packed batch of documents, its loss and every gradient, against HF transformers."""
import pytest
import torch
import torch.nn.functional as F

import lengthwise as lw
from lengthwise.attention import AttnMeta, Backend
from lengthwise.attention.layer import Step
from lengthwise.models import init_weights
from lengthwise.attention.triton_fused import fused_applies
from lengthwise.models.llama import Llama, LlamaConfig
from lengthwise.ragged import RaggedBatch

from conftest import rel_err, tiny_hf_causal

DOCS = (13, 7, 20)


def packed_loss(module, batch: RaggedBatch, backend) -> torch.Tensor:
    """Mean next-token cross-entropy over a packed batch: no token predicts across a document's end."""
    logits = module(batch.tokens, batch.positions, Step(AttnMeta.packed(batch.cu_seqlens, batch.max_seqlen),
                                                        module.mask, backend))
    last = torch.zeros(batch.tokens.shape[0], dtype=torch.bool)
    last[batch.cu_seqlens[1:].long() - 1] = True
    targets = batch.tokens.roll(-1)
    return F.cross_entropy(logits[~last].float(), targets[~last])


def _hf_grads(hf) -> dict:
    """HF's gradients under our names: q/k/v and gate/up concatenated as lengthwise runs them."""
    g = {n: p.grad for n, p in hf.named_parameters()}
    out = {"tok_embeddings.weight": g["model.embed_tokens.weight"], "norm.weight": g["model.norm.weight"]}
    if "lm_head.weight" in g and g["lm_head.weight"] is not g["model.embed_tokens.weight"]:
        out["output.weight"] = g["lm_head.weight"]
    for i in range(hf.config.num_hidden_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attention_norm.weight"] = g[p + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = g[p + "post_attention_layernorm.weight"]
        out[f"layers.{i}.attention.wqkv.weight"] = torch.cat([g[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[f"layers.{i}.attention.wo.weight"] = g[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.feed_forward.w13.weight"] = torch.cat([g[p + "mlp.gate_proj.weight"], g[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.feed_forward.w2.weight"] = g[p + "mlp.down_proj.weight"]
    return out


@pytest.mark.parametrize("backend", ["reference", "cpu_flash"])
def test_packed_loss_and_gradients_match_hf(tmp_path, backend):
    hf, folder = tiny_hf_causal("llama", tmp_path)
    hf.train()
    lm = lw.load(folder, device="cpu", dtype="float32", backend=backend, trainable=True)
    assert lm.module.training and all(p.requires_grad for p in lm.module.parameters())
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in DOCS]
    batch = RaggedBatch.from_lists(docs, "cpu")
    loss = packed_loss(lm.module, batch, lm.backend)
    loss.backward()
    # HF: each document on its own (its own causal mask), the cross-entropy summed over all predictions
    total = sum(F.cross_entropy(hf(torch.tensor([d])).logits[0, :-1], torch.tensor(d[1:]), reduction="sum")
                for d in docs) / sum(n - 1 for n in DOCS)
    total.backward()
    assert abs(loss.item() - total.item()) <= 1e-5 * abs(total.item())
    ours = dict(lm.module.named_parameters())
    theirs = _hf_grads(hf)
    assert set(theirs) == set(ours)
    for name, ref in theirs.items():
        assert rel_err(ours[name].grad, ref) <= 1e-4, name


def test_the_document_mask_is_real(tmp_path):
    """Changing one document changes no other document's gradient contribution: its logits stay put."""
    _, folder = tiny_hf_causal("llama", tmp_path)
    lm = lw.load(folder, device="cpu", dtype="float32", backend="reference", trainable=True)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in DOCS]
    other = [docs[0], [(t + 1) % 211 for t in docs[1]], docs[2]]
    outs = []
    for d in (docs, other):
        b = RaggedBatch.from_lists(d, "cpu")
        outs.append(b.split(lm.module(b.tokens, b.positions, lm.step(b)).detach()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][2], outs[1][2])
    assert not torch.equal(outs[0][1], outs[1][1])


def test_from_scratch_init_and_learning():
    """A model built from a config with nanoGPT's init learns a repeating sequence: the loss falls."""
    cfg = LlamaConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, context_length=256)
    model = init_weights(Llama(cfg), seed=0)
    w = dict(model.named_parameters())
    assert abs(w["tok_embeddings.weight"].std().item() - 0.02) < 2e-3
    assert abs(w["layers.0.attention.wo.weight"].std().item() - 0.02 / 2) < 2e-3  # / sqrt(2 n_layers)
    assert torch.equal(w["norm.weight"], torch.ones(64))
    again = init_weights(Llama(cfg), seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    docs = [list(range(10)) * 3, list(range(20, 30)) * 2]
    batch = RaggedBatch.from_lists(docs, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = packed_loss(model, batch, "reference")
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_fused_kernels_step_aside_where_a_gradient_is_needed():
    """The Triton paths have no backward: with a gradient needed the plain torch path runs."""
    from lengthwise.attention import backend as B
    b = Backend("varlen")
    x = torch.zeros(4, 8, requires_grad=True)
    real = B.have_triton
    try:
        B.have_triton = lambda: True
        assert b.triton(x.detach()) and not b.triton(x)
        with torch.no_grad():
            assert b.triton(x)
    finally:
        B.have_triton = real
    assert not fused_applies(x, b)  # and on the CPU never


def test_inference_loads_stay_frozen(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path)
    lm = lw.load(folder, device="cpu")
    assert not lm.module.training and not any(p.requires_grad for p in lm.module.parameters())
    with pytest.raises(lw.LengthwiseError, match="trainable must be true or false"):
        lw.load(folder, device="cpu", trainable="yes")
