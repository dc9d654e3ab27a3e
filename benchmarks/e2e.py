"""The end-to-end rows of issue 22, through the public API only, in one run on one machine.

    GPU:    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/e2e.py
    smoke:  PYTHONPATH=src python benchmarks/e2e.py --smoke      (CPU, tiny random models, < 60 s)

Rows, each with its peer in the same process:
  texts->vectors  real MiniLM, 4096 texts, lognormal word counts (mean ~78 tokens), timed from texts to a numpy
                  array on both sides: lw Encoder.encode (bf16) against sentence-transformers encode in fp16 and
                  fp32 (batch 64); lengthwise's split (tokenize, pack, copy, forward, pool, back) reported beside
  generation      SmolLM2, 64 prompts x 128 new tokens, greedy: lm.generate_ids against HF generate with its
                  default dynamic cache and with cache_implementation="static" (min_new_tokens forces 128 there;
                  lengthwise stops at EOS, so tokens/s counts the tokens each side really produced)
  remap decode    16 x 32k prompts under distance_cap:cap=2048 and self_extend:group=24,window=1024: decode
                  steps/s against the HBM roofline (weights + the mean KV bytes per step over the copy bandwidth)
Writes benchmarks/results/e2e.json (+ .png), or $OUT, with the device and date.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import bar_plot, copy_gbps, random_ids, save, table, tiny_llama

import lengthwise as lw
from lengthwise.encode import EmbedTiming
from lengthwise.models.load import EMBEDDED, locate_embedded


def word_texts(tok, n: int, mean_tokens: float, seed: int = 0) -> list[str]:
    """Texts of lognormal word counts (sigma 0.6) whose mean tokenized length is about mean_tokens."""
    vocab = [w for w, i in tok.get_vocab().items() if w.isalpha() and w.islower() and len(w) >= 3 and i > 2000]
    r = np.random.default_rng(seed)
    words = np.clip(np.round(mean_tokens * np.exp(0.6 * r.standard_normal(n) - 0.18)), 1, 240).astype(int)
    return [" ".join(r.choice(vocab, k)) for k in words]


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats + 1):  # the first is the warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])), out


def texts_to_vectors(folder, n, dev, repeats):
    from sentence_transformers import SentenceTransformer
    enc = lw.load(folder, device=dev, dtype="bfloat16" if dev.type == "cuda" else "float32")
    texts = word_texts(enc.tokenizer, n, 78)
    tokens = sum(min(len(s), enc.max_seq_length) for s in enc.tokenize(texts))
    rows = []
    split = EmbedTiming()
    sec, ours = best_of(lambda: enc.encode(texts, batch_size=256), repeats)
    enc.embed(texts, truncate=True, max_tokens_per_forward=256 * enc.max_seq_length, timing=split)
    rows.append({"row": "texts->vectors", "system": "lengthwise", "seconds": sec, "tokens_per_s": tokens / sec,
                 "split": split.as_dict()})
    for dtype in ([torch.float16, torch.float32] if dev.type == "cuda" else [torch.float32]):
        st = SentenceTransformer(str(folder), device=str(dev), local_files_only=True).to(dtype)
        s, ref = best_of(lambda: st.encode(texts, batch_size=64, convert_to_numpy=True), repeats)
        cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append({"row": "texts->vectors", "system": f"sentence-transformers {str(dtype)[6:]}", "seconds": s,
                     "tokens_per_s": tokens / s, "min_cosine_to_lengthwise": float(cos.min())})
        assert cos.min() > 0.99, f"sentence-transformers {dtype} and lengthwise disagree: min cosine {cos.min():.4f}"
        del st
    for r in rows:
        r["lengthwise_ratio"] = rows[0]["tokens_per_s"] / r["tokens_per_s"]
    del enc
    return rows


def generation(folder, B, new, dev, repeats):
    import transformers
    lm = lw.load(folder, device=dev, dtype="bfloat16" if dev.type == "cuda" else "float32")
    gguf = folder.suffix == ".gguf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder.parent if gguf else folder), **({"gguf_file": folder.name} if gguf else {}),
        dtype=lm.dtype, attn_implementation="sdpa").to(dev).eval()
    r = np.random.default_rng(5)
    lens = np.clip(np.round(96 * np.exp(0.8 * r.standard_normal(B))), 8, 512).astype(int).tolist()
    seqs = random_ids(lens, lm.config.vocab_size, seed=6, low=10)
    L = max(lens)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):], mask[i, L - len(s):] = torch.tensor(s), 1
    ids, mask = ids.to(dev), mask.to(dev)

    def theirs(**kw):
        with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0, **kw)[:, L:].tolist()

    sec, out = best_of(lambda: lm.generate_ids(seqs, max_new_tokens=new), repeats)
    rows = [{"row": "generation", "system": "lengthwise", "seconds": sec,
             "output_tokens_per_s": sum(map(len, out)) / sec}]
    for name, kw in [("hf generate (dynamic cache)", {}), ("hf generate (static cache)", {"cache_implementation": "static"})]:
        try:
            s, o = best_of(lambda: theirs(**kw), repeats)
            rows.append({"row": "generation", "system": name, "seconds": s, "output_tokens_per_s": B * new / s})
        except Exception as e:  # report, keep the other rows
            print(f"{name} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    for r in rows:
        r["lengthwise_ratio"] = rows[0]["output_tokens_per_s"] / r["output_tokens_per_s"]
    del lm, hf
    return rows


def remap_decode(folder, B, prompt_len, new, dev, specs, bw):
    rows = []
    for spec in specs:
        lm = lw.load(folder, device=dev, dtype="bfloat16" if dev.type == "cuda" else "float32", positions=spec)
        seqs = random_ids([prompt_len] * B, lm.config.vocab_size, seed=7, low=10)
        lm.generate_ids(seqs[:1], max_new_tokens=2)  # warm-up
        from lengthwise.generate import Timing
        t = Timing()
        out = lm.generate_ids(seqs, max_new_tokens=new, timing=t)
        steps = min(map(len, out)) - 1
        step_s = t.decode_s / max(steps, 1)
        cfg = lm.config
        w = sum(p.numel() * p.element_size() for p in lm.module.parameters())
        kv = B * (prompt_len + new / 2) * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 2
        roof = (w + kv) / (bw * 1e9) if bw else float("nan")
        rows.append({"row": f"remap decode {B}x{prompt_len}", "system": spec, "decode_step_ms": step_s * 1e3,
                     "steps_per_s": 1 / step_s, "roofline_step_ms": roof * 1e3,
                     "pct_of_hbm_roofline": roof / step_s * 100})
        del lm
    return rows


def tiny_folders(d: Path, minilm: Path) -> tuple[Path, Path]:
    import shutil

    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    torch.manual_seed(0)
    bert = d / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=64, max_position_embeddings=256),
                           add_pooling_layer=False).save_pretrained(bert, safe_serialization=True)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / f, bert / f)
    SentenceTransformer(modules=[Transformer(str(bert)), Pooling(32, pooling_mode="mean")], device="cpu").save(str(d / "st"))
    return d / "st", tiny_llama(d / "llama")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random models and sizes: checks the script runs")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    minilm = locate_embedded(EMBEDDED["minilm-l6"])
    with tempfile.TemporaryDirectory() as d:
        if args.smoke:
            enc_folder, lm_folder = tiny_folders(Path(d), minilm)
            n, (B, new), (RB, RL, RN), repeats = 256, (8, 16), (2, 1500, 8), 1
            specs, bw = ["distance_cap:cap=256", "self_extend:group=4,window=128"], 0.0
        else:
            enc_folder, lm_folder = minilm, locate_embedded(EMBEDDED["smollm2-135m"])
            n, (B, new), (RB, RL, RN), repeats = 4096, (64, 128), (16, 32768, 64), args.repeats
            specs, bw = ["distance_cap:cap=2048", "self_extend:group=24,window=1024"], copy_gbps()
        rows = texts_to_vectors(enc_folder, n, dev, repeats)
        print(table(rows, ["row", "system", "tokens_per_s", "lengthwise_ratio"]), flush=True)
        rows += generation(lm_folder, B, new, dev, repeats)
        print(table(rows[-3:], ["row", "system", "output_tokens_per_s", "lengthwise_ratio"]), flush=True)
        rows += remap_decode(lm_folder, RB, RL, RN, dev, specs, bw)
        print(table(rows[-2:], ["row", "system", "decode_step_ms", "steps_per_s", "pct_of_hbm_roofline"]), flush=True)

    def plot(plt, rows):
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, key, label in zip(axes, ["tokens_per_s", "output_tokens_per_s", "steps_per_s"],
                                  ["texts->vectors tokens/s", "generation output tokens/s", "remap decode steps/s"]):
            sub = [r for r in rows if key in r]
            ax.bar(range(len(sub)), [r[key] for r in sub], color=plt.cm.viridis(np.linspace(0.15, 0.85, len(sub))))
            ax.set_xticks(range(len(sub)), [r["system"] for r in sub], rotation=20, fontsize=7, ha="right")
            ax.set_ylabel(label)
        return fig

    name = "e2e_smoke" if args.smoke else "e2e"
    out = save(name, rows, {"smoke": args.smoke, "copy_gbps": bw}, plot)
    print(f"wrote {out}/{name}.json and .png")


if __name__ == "__main__":
    main()
