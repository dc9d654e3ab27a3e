"""kvpress (NVIDIA, 0.5.5) as the peer of lengthwise's KV policies, on byte-identical prompts through the harness.

kvpress pins transformers < 5.3, so this runs in a virtualenv of its own (../shared/peers/kvpress-venv.sh builds
one), with lengthwise's source on the path for the harness only:

    PYTHONPATH=src LENGTHWISE_MODEL_DIR=... .kvpress-venv/bin/python benchmarks/kvpress_peer.py \\
        --kv snapkv:ratio=0.5 --tasks niah_single,niah_multikey --lengths 1k --samples 10 --chat --out runs/peer.jsonl

The runner is a harness engine (docs/evaluation.md, "the runner protocol"): the harness renders every prompt with
lengthwise's own render, so the ids kvpress sees are the ids lengthwise sees. Each prompt goes as kvpress's own
pipeline runs it: the context (everything before the question, the same split lengthwise's engine is given) is
prefilled by `model.model` inside the press, which compresses it; the question and the answer then run without
the press, at positions that continue the context's, greedy. One prompt at a time, as kvpress does. The store's
`backend` is `kvpress`, and every record's `kv` the lengthwise spec it stands beside, so `lengthwise report` puts
the two rows of one policy side by side.
"""
from __future__ import annotations

import argparse
import time

import torch

# lengthwise policy name -> (kvpress press class, how a lengthwise spec's parameters map onto the press's)
PRESSES = {
    "full": (None, {}),
    "streaming": ("StreamingLLMPress", {"sinks": "n_sink"}),
    "snapkv": ("SnapKVPress", {"window": "window_size", "kernel": "kernel_size"}),
    "tova": ("TOVAPress", {}),
    "knorm": ("KnormPress", {}),
    "random": ("RandomPress", {"seed": "seed"}),
    "pyramidkv": ("PyramidKVPress", {"window": "window_size", "kernel": "kernel_size", "beta": "beta"}),
    "h2o": ("ObservedAttentionPress", {}),
    "think": ("ThinKPress", {"window": "window_size"}),  # its ratio: key channels removed, twice ours (below)
    "adakv": ("AdaKVPress", {"alpha": "alpha_safeguard"}),  # around SnapKVPress, as lengthwise's adakv scores
}


def make_press(spec: str):
    """The kvpress press that stands beside a lengthwise spec, at the same compression ratio."""
    import kvpress
    from lengthwise.kv import Composed, parse
    pol = parse(spec)
    if isinstance(pol, Composed):  # tokens, then key channels: kvpress's ComposedPress in the same order
        return kvpress.ComposedPress([make_press(pol.tokens.spec()), make_press(pol.think.spec())])
    name = spec.split(":")[0]
    if name not in PRESSES:
        raise SystemExit(f"kvpress_peer: no kvpress press stands beside {name!r}; choose one of {', '.join(PRESSES)}")
    cls, names = PRESSES[name]
    if cls is None:
        return None
    ratio = getattr(pol, "ratio", -1)
    if ratio < 0:
        raise SystemExit("kvpress_peer: kvpress takes a compression ratio; give the policy ratio=, not tokens=")
    kw = {dst: getattr(pol, src) for src, dst in names.items() if hasattr(pol, src)}
    if name == "think":  # ThinKPress.compression_ratio is key_channel_compression_ratio / 2, as lengthwise's ratio
        return kvpress.ThinKPress(key_channel_compression_ratio=2 * ratio, **kw)
    if name == "adakv":  # head-wise budgets over SnapKV's scores (kvpress masks the dropped tokens)
        inner = kvpress.SnapKVPress(compression_ratio=ratio, window_size=pol.window, kernel_size=pol.kernel)
        return kvpress.AdaKVPress(press=inner, **kw)
    return getattr(kvpress, cls)(compression_ratio=ratio, **kw)


class KVPressRunner:
    """The harness's runner protocol around one HF model and one press; kvpress's pipeline, written out."""

    name = "kvpress"

    def __init__(self, model: str, press, chat: bool, device: str = "cpu", dtype=torch.float32):
        from transformers import AutoConfig, AutoModelForCausalLM
        from lengthwise.evaluation import make_render
        from lengthwise.models.load import load_tokenizer, resolve, trained_context
        path = resolve(model)
        folder, kw = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, **kw)
        if type(press).__name__ == "ObservedAttentionPress":  # it scores the attention weights eager returns
            kw["attn_implementation"] = "eager"
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), config=cfg, dtype=dtype, local_files_only=True,
                                                          **kw).to(device).eval()
        self.device, self.press = torch.device(device), press
        self.tok = load_tokenizer(path)
        self.render = make_render(self.tok, chat)
        self.trained_context = trained_context(path)
        self.context_length = cfg.max_position_embeddings
        self.on_cpu = self.device.type == "cpu"
        self.n_layers, self.width = cfg.num_hidden_layers, cfg.hidden_size
        self.n_params = sum(p.numel() for p in self.model.parameters())
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}

    @torch.inference_mode()
    def answer(self, ids: list[int], context: int, max_new_tokens: int) -> tuple[list[int], int]:
        """kvpress's pipeline on one prompt: the press compresses the context's prefill; returns the answer's ids
        and the cache length per layer after compression (the first layer's)."""
        import contextlib
        from transformers import DynamicCache
        x = torch.tensor([ids], device=self.device)
        cache = DynamicCache()
        with self.press(self.model) if self.press is not None else contextlib.nullcontext():
            self.model.model(input_ids=x[:, :context], past_key_values=cache)
        kept = cache.get_seq_length(0)
        pos = torch.arange(context, len(ids), device=self.device)[None]
        out = self.model(input_ids=x[:, context:], past_key_values=cache, position_ids=pos, logits_to_keep=1)
        self.last_logits = out.logits[0, -1]  # the question's last token, read by the runner's test
        new = [int(out.logits[0, -1].argmax())]
        p = len(ids)
        while len(new) < max_new_tokens and new[-1] not in self.eos:
            out = self.model(input_ids=torch.tensor([[new[-1]]], device=self.device), past_key_values=cache,
                             position_ids=torch.tensor([[p]], device=self.device))
            new.append(int(out.logits[0, -1].argmax()))
            p += 1
        return new, kept

    def generate(self, samples):
        from lengthwise.evaluation.backends import context_tokens
        outs, t0 = [], time.perf_counter()
        for s in samples:
            ids = self.render(s.prompt, s.answer_prefix)
            new, _ = self.answer(ids, context_tokens(self.render, s, ids), s.max_new_tokens)
            outs.append(self.tok.decode(new, skip_special_tokens=True))
        return outs, {"prefill_s": None, "decode_s": time.perf_counter() - t0, "peak_mem_gib": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kv", required=True, help="the lengthwise policy spec to stand beside, e.g. snapkv:ratio=0.5")
    ap.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue,variable_tracking,common_words")
    ap.add_argument("--lengths", default="1k")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--depths", default="1")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 on the CPU, bfloat16 on the GPU unless given")
    ap.add_argument("--out", required=True, help="the store (JSONL) this run appends to")
    a = ap.parse_args()
    import lengthwise as lw
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if a.device.startswith("cuda") else torch.float32)
    runner = KVPressRunner(a.model, make_press(a.kv), a.chat, a.device, dtype)
    runner.kv = a.kv  # records and the store carry the lengthwise spec this press stands beside
    recs = lw.evaluate(a.model, a.tasks.split(","), a.lengths, out=a.out, depths=a.depths, samples=a.samples,
                       engine=runner, chat=a.chat, yes=True, append_config=True)
    print(f"kvpress {a.kv}: {sum(r['score'] for r in recs) / max(1, len(recs)):.3f} over {len(recs)} cells")


if __name__ == "__main__":
    main()
