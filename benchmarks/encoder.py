"""Encoder embedding throughput: lengthwise (packed, no padding) against padded peers, same run.

    GPU:  LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/encoder.py
    CPU:  .venv/bin/python benchmarks/encoder.py --cpu

Models: minilm-l6 (real weights) and random-init bert-base and bert-large configs, all with
MiniLM's uncased WordPiece tokenizer. Inputs are texts of exact token lengths drawn from the mixes
(a) lognormal, (b) bimodal, (c) uniform 128; for minilm-l6 lengths are clipped to its 256-token limit.

Peers, all in the same process on the same device and dtype:
  hf_padded    HF AutoModel (sdpa), batches of 64 in arrival order, padded to their longest; mean pooling
  st_encode    sentence-transformers encode (sorts by length, batches of 64), texts in, tokenization included
  ideal_dense  HF on the same token count at one fixed length (64 x 128), no padding at all
  lengthwise   packed token-budget forwards on pre-tokenized ids; lengthwise_e2e also tokenizes texts
Engine rows (hf_padded, ideal_dense, lengthwise) time ids -> embeddings; the two e2e rows time texts ->
embeddings. Before timing, lengthwise's embeddings are checked against its float32 reference backend
(GPU) or HF one text at a time (CPU).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import bar_plot, mix, padded, peak_mem_gib, save, table, timed

import lengthwise as lw
from lengthwise.models.load import EMBEDDED, locate_embedded

_MODELS: dict = {}  # (folder, residual, compile) -> a loaded Encoder, across mixes
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_model(kind: str, workdir: Path, minilm: Path) -> Path:
    if kind == "minilm-l6":
        return minilm
    import transformers
    size = {"bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)}[kind]
    torch.manual_seed(0)
    m = transformers.BertModel(transformers.BertConfig(**size), add_pooling_layer=False)
    folder = workdir / kind
    m.save_pretrained(folder, safe_serialization=True)
    for f in TOKENIZER_FILES:
        shutil.copy(minilm / f, folder / f)
    return folder


def texts_of_lengths(tok, lens: list[int], seed: int) -> list[str]:
    """Texts whose tokenization is exactly n tokens ([CLS] + n-2 whole words + [SEP])."""
    vocab = [w for w, i in tok.get_vocab().items() if w.isalpha() and w.islower() and len(w) >= 3 and i > 2000]
    r = np.random.default_rng(seed)
    texts = [" ".join(r.choice(vocab, n - 2)) for n in lens]
    assert [len(x) for x in tok(texts)["input_ids"]] == lens
    return texts


def hf_embed(hf, batches: list[list[list[int]]], device) -> list[torch.Tensor]:
    out = []
    with torch.inference_mode():
        for b in batches:
            ids, mask = (t.to(device) for t in padded(b))
            h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask[..., None].to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
    return out


def bench(kind, mix_name, n, device, dtype, budgets, minilm, workdir, repeats, compiled=False):
    import transformers
    from sentence_transformers import SentenceTransformer
    folder = make_model(kind, workdir, minilm)
    enc = lw.load(folder, device=device, dtype=dtype)

    tok = enc.tokenizer
    lens = [min(x, enc.max_seq_length) for x in mix(mix_name, n, seed=1)]
    texts = texts_of_lengths(tok, lens, seed=2)
    ids = tok(texts)["input_ids"]
    tokens = sum(lens)

    def models(folder, residual, compile):
        """One load (and one compile) per model and setting, shared by every mix; checked against the
        float32 reference like the default row before it is timed."""
        key = (str(folder), residual, compile)
        if key not in _MODELS:
            m = lw.load(folder, device=device, dtype=dtype, residual=residual, compile=compile)
            m.embed_ids(ids[:64])  # compile outside the timing
            _MODELS[key] = m
        return _MODELS[key]

    # correctness before timing
    sub = ids[:48]
    got = enc.embed_ids(sub)
    if device.type == "cuda":
        ref = lw.load(folder, device=device, dtype="float32", backend="reference").embed_ids(sub)
        for name, e in [("packed bf16", got), ("packed bf16, residual=model", models(folder, "model", False).embed_ids(sub))]:
            err = float(np.linalg.norm(e - ref) / np.linalg.norm(ref))
            print(f"{kind}: {name} embeddings against the float32 reference: {err:.4f}", flush=True)
            assert err <= 2e-2, f"{kind}: {name} embeddings off the float32 reference by {err:.3g}"
    else:
        hf32 = transformers.AutoModel.from_pretrained(folder).eval()
        ref = torch.cat(hf_embed(hf32, [[s] for s in sub], "cpu")).numpy()
        if enc.normalize:
            ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        assert err <= 1e-4, f"{kind}: packed embeddings off HF by {err:.3g}"

    hf = transformers.AutoModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    st = SentenceTransformer(str(folder), device=str(device))
    st.to(dtype)
    st.max_seq_length = enc.max_seq_length

    padded = [ids[i:i + 64] for i in range(0, n, 64)]
    L = 128
    flat = [t for s in ids for t in s]
    dense = [flat[i:i + L] for i in range(0, len(flat) - L + 1, L)]
    dense = [dense[i:i + 64] for i in range(0, len(dense), 64)]
    runs = {
        "hf_padded": lambda: hf_embed(hf, padded, device),
        "ideal_dense": lambda: hf_embed(hf, dense, device),
        "st_encode (e2e)": lambda: st.encode(texts, batch_size=64, convert_to_numpy=True),
        "lengthwise_e2e": lambda: enc.embed(texts, max_tokens_per_forward=budgets[-1]),
    }
    for b in budgets:
        runs[f"lengthwise budget={b // 1024}k"] = (lambda b=b: enc.embed_ids(ids, max_tokens_per_forward=b))
    if device.type == "cuda":
        runs[f"lengthwise residual=model budget={budgets[1] // 1024}k"] = (
            lambda: models(folder, "model", False).embed_ids(ids, max_tokens_per_forward=budgets[1]))
    if compiled and device.type == "cuda":
        for residual in ("float32", "model"):
            try:
                fast = models(folder, residual, True)
                err = float(np.abs(fast.embed_ids(sub) - got).max() / np.abs(got).max())
                assert err <= 2e-2, f"{kind}: compiled embeddings off eager by {err:.3g}"
                tag = "" if residual == "float32" else " residual=model"
                runs[f"lengthwise{tag}+compile budget={budgets[1] // 1024}k"] = (
                    lambda fast=fast: fast.embed_ids(ids, max_tokens_per_forward=budgets[1]))
            except Exception as e:  # report, keep the other rows
                print(f"compile failed for {kind}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    rows = []
    for name, fn in runs.items():
        sec, _ = timed(fn, repeats=repeats)
        rows.append({"model": kind, "mix": mix_name, "system": name, "tokens": tokens,
                     "padded_tokens": sum(len(b) * max(len(s) for s in b) for b in padded) if name == "hf_padded" else tokens,
                     "seconds": sec, "tokens_per_s": tokens / sec, "peak_gib": peak_mem_gib(fn) if device.type == "cuda" else float("nan")})
    best = max((r for r in rows if r["system"].startswith("lengthwise") and "budget" in r["system"]),
               key=lambda r: r["tokens_per_s"])
    best_e2e = next(r for r in rows if r["system"] == "lengthwise_e2e")
    for r in rows:
        peer = best_e2e if r["system"] in ("st_encode (e2e)",) else best
        r["lengthwise_speedup"] = peer["tokens_per_s"] / r["tokens_per_s"]
    del hf, st, enc
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="the CPU variant: minilm-l6, mix (a), HF padded")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=None)
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (float32 and model residual)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    minilm = locate_embedded(EMBEDDED["minilm-l6"])
    if device.type == "cpu":
        plan = [("minilm-l6", "lognormal")]
        n, budgets = args.n or 512, [8192]
    else:
        plan = [(m, x) for m in ["minilm-l6", "bert-base"] for x in ["lognormal", "bimodal", "uniform128"]]
        plan += [("bert-large", "lognormal")]
        n, budgets = args.n or 4096, [16384, 65536, 262144]
    if args.models:
        plan = [p for p in plan if p[0] in args.models.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for kind, mix_name in plan:
            rows += bench(kind, mix_name, n, device, dtype, budgets, minilm, Path(d), args.repeats,
                          compiled=args.compile)
            print(table([r for r in rows if r["model"] == kind and r["mix"] == mix_name],
                        ["model", "mix", "system", "tokens_per_s", "lengthwise_speedup", "peak_gib"]), flush=True)
    name = "encoder_cpu" if device.type == "cpu" else "encoder"
    if args.models and device.type == "cuda":
        name += "_" + args.models.replace(",", "_")

    def plot(plt, rows):
        for r in rows:
            r["workload"] = f"{r['model']}\n{r['mix']}"
        return bar_plot(rows, "workload", "system", "tokens_per_s", "tokens/s (higher is better)")

    out = save(name, rows, {"n_sequences": n, "dtype": str(dtype)}, plot)
    print(f"\nwrote {out}/{name}.json and .png")
    print(table(rows, ["model", "mix", "system", "tokens_per_s", "lengthwise_speedup", "peak_gib"]))


if __name__ == "__main__":
    main()
