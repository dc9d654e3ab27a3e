"""How far back can SmolLM2-135M copy? A wording-free measure of retrieval reach.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/copy_reach.py [--out FILE]

A span of 24 random adjective-noun pairs appears twice in an 8,192-token window of the essay filler: the
second copy ends the window, the first starts `distance` tokens earlier. A model that attends back that
far predicts the second copy almost exactly (induction); one that cannot is left near the first copy's
loss. The study reports, per distance and position scheme, the second copy's mean loss and top-1 accuracy
(first two tokens of the copy excluded: the model cannot know yet which span repeats), over several seeds.
No prompt, no template, no generation: only one forward pass per window, in float32.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lengthwise as lw  # noqa: E402
from common import provenance  # noqa: E402  (benchmarks/common.py: this script's folder is on sys.path)
from lengthwise.tasks.filler import SOURCE, essay_sentences  # noqa: E402
from lengthwise.tasks.words import ADJECTIVES, NOUNS  # noqa: E402

WINDOW, PAIRS, SKIP = 8192, 24, 2


def window(fill: list[int], span: list[int], distance: int, rng: random.Random) -> list[int]:
    """Filler, span, filler, span: WINDOW tokens, the copies' starts `distance` apart."""
    a = WINDOW - len(span) - distance
    s0 = rng.randrange(len(fill) - WINDOW)
    return fill[s0:s0 + a] + span + fill[s0 + a:s0 + a + distance - len(span)] + span


def copy_stats(lg, seq: list[int], start: int, n: int) -> tuple[float, float]:
    """Mean loss and top-1 accuracy on seq[start+SKIP : start+n], from the window's logits lg [T, vocab]."""
    x, y = lg[start + SKIP - 1:start + n - 1].double().cpu(), torch.tensor(seq[start + SKIP:start + n])
    return torch.nn.functional.cross_entropy(x, y).item(), (x.argmax(-1) == y).double().mean().item()


def plot(result: dict, png: Path) -> None:
    """Top-1 accuracy on the second copy against distance, one line per position scheme."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for spec in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["method"] == spec]
        ax.plot([r["distance"] for r in rows], [100 * r["second_acc"] for r in rows], marker="o",
                label={"hf": "HF transformers, no scaling"}.get(spec, spec))
    ax.axvline(result["window"], color="gray", ls=":", lw=1)
    ax.set(xlabel="distance back to the first copy (tokens)", ylabel="top-1 on the second copy (%)", ylim=(0, 100),
           title=f"SmolLM2-135M copy reach, {result['seeds']} seeds ({result['device']})")
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def model(spec: str, device):
    """(tokenizer, logits of one sequence [T, vocab] float32). spec "hf": HF transformers' own Llama
    code on the same GGUF, no scaling (an independent check of the engine); otherwise lengthwise's engine."""
    if spec != "hf":
        lm = lw.load("smollm2-135m", device=device, dtype="float32", positions=None if spec == "none" else spec)
        return lm.tokenizer, lambda seq: lm.logits([seq])[0]
    from transformers import AutoModelForCausalLM
    from lengthwise.models.load import load_tokenizer, resolve
    from lengthwise.pipeline import resolve_device
    path, dev = resolve("smollm2-135m"), resolve_device(device)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).to(dev).eval()

    @torch.inference_mode()
    def logits(seq: list[int]) -> torch.Tensor:
        return hf(torch.tensor([seq], device=dev)).logits[0]  # stays on the device: copy_stats takes two slices

    return load_tokenizer(path), logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/copy_reach.json")
    ap.add_argument("--png", default="docs/results/copy_reach.png")
    ap.add_argument("--replot", action="store_true", help="only redraw --png from the results in --out")
    ap.add_argument("--methods", default="none;distance_cap:cap=2048", help='";"-separated position schemes, '
                    'or "hf" for HF transformers\' own model code, no scaling')
    ap.add_argument("--distances", default="256,1024,2048,4096,5120,6144,6656,7168,7424,7680,7936,8064")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    if args.replot:
        return plot(json.loads(Path(args.out).read_text()), Path(args.png))
    distances = [int(d) for d in args.distances.split(",")]
    head = {"window": WINDOW, "pairs": PAIRS, "skip": SKIP, "filler": SOURCE["essay"], "seeds": args.seeds,
            **provenance()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict]) -> dict:  # after each scheme, so a run cut short keeps what finished
        result = {**head, "seconds": time.time() - t0, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))
        return result

    rows, t0 = [], time.time()
    for spec in args.methods.split(";"):
        tokenizer, logits = model(spec, args.device)
        tok = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        fill = tok(" ".join(essay_sentences()))
        for d in distances:
            per = []
            for seed in range(args.seeds):
                rng = random.Random(f"copy-reach/{seed}/{d}")
                span = tok(" " + " ".join(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}" for _ in range(PAIRS)) + ".")
                if d < len(span):
                    raise SystemExit(f"distance {d} is shorter than the span ({len(span)} tokens)")
                seq = window(fill, span, d, rng)
                lg = logits(seq)
                first = copy_stats(lg, seq, WINDOW - len(span) - d, len(span))
                second = copy_stats(lg, seq, WINDOW - len(span), len(span))
                per.append({"seed": seed, "span": len(span), "first_loss": first[0], "second_loss": second[0],
                            "second_acc": second[1]})
            mean = {k: sum(p[k] for p in per) / len(per) for k in ("first_loss", "second_loss", "second_acc")}
            rows.append({"method": spec, "distance": d, **mean, "per_seed": per})
            print(f"{spec:24s} d={d:5d}  first {mean['first_loss']:.2f}  second {mean['second_loss']:.2f}  "
                  f"top-1 {mean['second_acc']:.0%}", flush=True)
        del logits
        write(rows)
    result = write(rows)
    plot(result, Path(args.png))


if __name__ == "__main__":
    main()
