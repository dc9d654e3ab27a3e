"""One training run: a from-scratch Llama with a lab position encoding, fitted on fresh samples every step.

    cfg = TrainConfig(task="copy", pe="nope", train_max_len=8, steps=200)
    result = train(cfg, Path("runs/copy-nope"))          # model/ (lw.load reads it), train_config.json, metrics.jsonl

The loss is next-token cross-entropy on answer tokens only (batches.py), summed over the step's targets and
divided by their count: a packed batch gives the same loss as its documents one at a time.

On a GPU (`precision="auto"`: bf16 there, fp32 on the CPU) the forward runs under torch.autocast in bfloat16
with the weights, the optimizer and the loss in float32, and schemes without an attention bias attend through
FlashAttention varlen (`attention="auto"`); precision="fp32" with attention="reference" is the float32
reference path every run took before, and the only one on the CPU by default.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..attention import AttnMeta, Backend
from ..attention.layer import Step
from ..errors import LengthwiseError
from ..models import init_weights
from ..models.llama import Llama, LlamaConfig, to_hf
from ..outputs import atomic_write, check_folder
from ..positions import scratch
from ..tasks.algorithmic import get_task
from ..tasks.algorithmic.vocab import BOS, EOS, ID, SIZE
from .batches import FILLS, IGNORE, Filler, Piece, TrainBatch

ARCH = "LengthwiseLabForCausalLM"
RUN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"
MODEL = "model"
PRECISIONS = ("auto", "fp32", "bf16")
ATTENTION = ("auto", "reference", "varlen", "cpu_flash")


@dataclass
class TrainConfig:
    task: str
    pe: str
    seed: int = 0
    n_layers: int = 2
    dim: int = 64
    n_heads: int = 4
    train_min_len: int = 1
    train_max_len: int = 8
    steps: int = 200  # at most this many steps
    budget_s: float | None = None  # and at most this many seconds of training (wall clock)
    tokens_per_step: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.01
    fill: str = "docs"
    chunk: int = 256  # concat-and-chunk's chunk, and the largest bucket of Dataset Decomposition
    max_positions: int = 2048  # the model's context: tables and randomized positions reach this far
    eval_every: int = 0  # steps between accuracy checks at the training lengths (0: none)
    device: str = "cpu"
    # auto: bf16 (autocast, float32 weights and optimizer) on CUDA, fp32 elsewhere; set to fp32 or bf16 when built
    precision: str = "auto"
    # the attention kernel, set to one when built (choose_kernel); auto: varlen for a bf16 run on CUDA whose
    # scheme adds no attention bias, else reference
    attention: str = "auto"

    def __post_init__(self):
        for k in ("seed", "n_layers", "dim", "n_heads", "train_min_len", "train_max_len", "steps", "tokens_per_step",
                  "chunk", "max_positions", "eval_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k in ("seed", "eval_every") else 1):
                raise LengthwiseError(f"{k} must be a whole number >= {0 if k in ('seed', 'eval_every') else 1}, got {v!r}")
        if self.budget_s is not None and not (isinstance(self.budget_s, (int, float)) and self.budget_s > 0
                                              and math.isfinite(self.budget_s)):
            raise LengthwiseError(f"the wall-clock budget must be a positive number of seconds, got {self.budget_s!r}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise LengthwiseError(f"dim {self.dim} must split into {self.n_heads} heads of an even size")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise LengthwiseError(f"lr must be a number in (0, 1), got {self.lr!r}")
        if self.fill not in FILLS:
            raise LengthwiseError(f"unknown fill {self.fill!r}: choose one of {', '.join(FILLS)}")
        task = get_task(self.task)
        self.task = task.spec()
        self.pe = scratch.canonical(self.pe)
        if self.train_min_len > self.train_max_len:
            raise LengthwiseError(f"train_min_len {self.train_min_len} is above train_max_len {self.train_max_len}")
        task.check_length(self.train_min_len)
        task.check_length(self.train_max_len)
        # a step of whole samples must hold one of the longest training length, or it degenerates to one sample a
        # step (the chunk and bucket fills cut samples to fit)
        longest = max(len(task.sample(self.train_max_len, seed, stream="train").encode().ids) for seed in range(8))
        if self.fill in ("docs", "buckets_whole") and self.tokens_per_step < longest:
            raise LengthwiseError(f"tokens_per_step {self.tokens_per_step} is below one {self.task} sample of length "
                                  f"{self.train_max_len} ({longest} tokens): give --tokens-per-step >= {longest}, "
                                  f"and many times that for a useful step")
        from ..pipeline import resolve_device
        device = resolve_device(self.device)
        if self.precision not in PRECISIONS:
            raise LengthwiseError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.precision == "auto":
            self.precision = "bf16" if device.type == "cuda" else "fp32"
        self.attention = choose_kernel(self.pe, device, self.precision, self.attention)

    @property
    def legacy(self) -> bool:
        """The float32 reference path: every run before precision and attention were settings took it."""
        return self.precision == "fp32" and self.attention == "reference"

    def key(self) -> dict:
        """The run's identity, as train_config.json and the lab's record ids hold it: precision and attention
        only off the float32 reference, so folders and stores written before they existed keep their keys."""
        d = json.loads(json.dumps(asdict(self)))
        if self.legacy:
            del d["precision"], d["attention"]
        return d

    def model_config(self) -> LlamaConfig:
        hidden = 8 * ((8 * self.dim // 3 + 7) // 8)  # SwiGLU at 8/3 of the width, as Llama sizes it
        return LlamaConfig(vocab_size=SIZE, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                           n_kv_heads=self.n_heads, hidden_dim=hidden, context_length=self.max_positions,
                           tie_embeddings=False, pe=self.pe)


def build_model(cfg: TrainConfig) -> Llama:
    return init_weights(Llama(cfg.model_config()), seed=cfg.seed)


def choose_kernel(pe: str | None, device, precision: str, attention: str = "auto") -> str:
    """The attention kernel a run trains and scores on (nothing is allocated: a device type is enough).

    auto: FlashAttention varlen (attention/varlen.py, with its backward) for a bf16 run on CUDA whose scheme adds
    no attention bias; otherwise the reference, which batches a pack's sequences of one length together and is
    the one kernel that takes a bias (ALiBi, T5, FIRE, or randomized / Abacus over one)."""
    device = torch.device(device)
    if attention not in ATTENTION:
        raise LengthwiseError(f"unknown attention kernel {attention!r}: choose one of {', '.join(ATTENTION)}")
    if precision not in PRECISIONS[1:]:
        raise LengthwiseError(f"precision must be fp32 or bf16 here, got {precision!r}")
    bias = pe is not None and scratch.has_bias(pe)
    if attention == "auto":
        return "varlen" if device.type == "cuda" and precision == "bf16" and not bias else "reference"
    if bias and attention != "reference":
        raise LengthwiseError(f"{pe} adds an attention bias, which only the reference kernel takes: "
                              "use attention auto or reference")
    if attention == "varlen" and (device.type != "cuda" or precision != "bf16"):
        raise LengthwiseError("the varlen kernel trains on CUDA in bf16: use precision bf16 on a GPU, "
                              "or attention reference")
    if attention == "cpu_flash" and device.type != "cpu":
        raise LengthwiseError("the cpu_flash kernel runs on the CPU: use attention auto or reference")
    return attention


def backend_for(module: Llama, device: torch.device, precision: str = "fp32", attention: str = "auto") -> Backend:
    """The Backend training and the lab's scoring run on (choose_kernel), with lengthwise's Triton kernels
    off: they have no backward, and scoring should run the very math training did."""
    kernel = choose_kernel(module.cfg.pe, device, precision, attention)
    b = Backend.resolve(kernel, device, torch.bfloat16 if precision == "bf16" else torch.float32)
    return replace(b, triton_decode=False, triton_prefill=False, split_kv=False, fused=False, gelu_epilogue=False,
                   one_pass_remap=False)


def autocast(device, precision: str):
    """bf16: torch.autocast on the device (GEMMs and attention in bfloat16, the weights stay float32);
    fp32: nothing. No global setting (TF32 included) is touched."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def loss_of(module: Llama, tb: TrainBatch, backend, precision: str = "fp32") -> tuple[torch.Tensor, int]:
    """(sum of the cross-entropy over the batch's targets, how many targets); the forward under the run's
    precision (autocast), the loss in float32."""
    b = tb.batch
    with autocast(b.tokens.device, precision):
        logits = module(b.tokens, b.positions, Step(AttnMeta.packed(b.cu_seqlens, b.max_seqlen), module.mask,
                                                    backend))
    keep = tb.targets != IGNORE
    return F.cross_entropy(logits[keep].float(), tb.targets[keep], reduction="sum"), int(keep.sum())


def save_model(module: Llama, cfg: TrainConfig, folder: Path) -> None:
    """An HF-style folder: config.json (architecture LengthwiseLabForCausalLM), model.safetensors and
    generation_config.json (</s> ends a generation)."""
    from safetensors.torch import save_file
    mc = module.cfg
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [ARCH], "model_type": "llama", "vocab_size": mc.vocab_size, "hidden_size": mc.dim,
              "num_hidden_layers": mc.n_layers, "num_attention_heads": mc.n_heads,
              "num_key_value_heads": mc.n_kv_heads, "intermediate_size": mc.hidden_dim, "head_dim": mc.head_dim,
              "rms_norm_eps": mc.norm_eps, "rope_theta": mc.rope_theta, "max_position_embeddings": mc.context_length,
              "tie_word_embeddings": mc.tie_embeddings, "lengthwise_pe": mc.pe,
              "lengthwise_task": cfg.task, "lengthwise_train_max_len": cfg.train_max_len}
    sd = to_hf({k: v.float().cpu() for k, v in module.state_dict().items()}, mc)
    tmp = folder / ".model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    with atomic_write(folder / "generation_config.json", "w") as f:  # generation stops at the answer's end
        json.dump({"bos_token_id": ID[BOS], "eos_token_id": ID[EOS]}, f, indent=1)
    with atomic_write(folder / "config.json", "w") as f:
        json.dump(config, f, indent=1)


def claim(out: Path, cfg: TrainConfig) -> bool:
    """Check the output folder and write the run's config into it. True: this config's model is already there."""
    check_folder(out)
    if (out / "results.jsonl").exists() or (out / "runs").is_dir():
        raise LengthwiseError(f"{out} is a lab's folder (results.jsonl, runs/): train into a folder of its own")
    want = cfg.key()
    path = out / RUN_CONFIG
    if path.exists():
        from ..models.load import read_json
        have = read_json(path)
        if have != want:
            diff = [k for k in list(want) + [k for k in have if k not in want] if have.get(k) != want.get(k)]
            shown = "; ".join(f"{k} is {json.dumps(have.get(k))} there, {json.dumps(want.get(k))} here" for k in diff[:3])
            raise LengthwiseError(f"{out} holds another run's config ({shown}): train into a new folder")
        return (out / MODEL / "model.safetensors").exists()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(want, f, indent=1)
    return False


def schedule(progress: float, warm: float = 0.05) -> float:
    """Learning-rate factor: linear warm-up over the first 5%, then cosine to 10%."""
    if progress < warm:
        return max(progress / warm, 0.02)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


Progress = Callable[[int, float, float, float], None]  # (step, loss, tokens/s, fraction done)


def train(cfg: TrainConfig, out: Path, progress: Progress | None = None) -> dict:
    """Fit one model; writes out/model/, out/train_config.json and out/metrics.jsonl. Returns a summary."""
    out = Path(out)
    if claim(out, cfg):
        return {"skipped": True, "model": str(out / MODEL), **summary_of(out)}
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)  # randomized positions and Abacus offsets draw from torch's generator
    module = build_model(cfg).to(device)
    backend = backend_for(module, device, cfg.precision, cfg.attention)
    task = get_task(cfg.task)
    rng = random.Random(f"train-{cfg.seed}")

    def draw() -> Piece:
        s = task.sample(rng.randint(cfg.train_min_len, cfg.train_max_len), rng.getrandbits(32), stream="train")
        e = s.encode()
        return Piece(e.ids, e.scored)

    filler = Filler(cfg.fill, draw, cfg.tokens_per_step, cfg.chunk, random.Random(f"fill-{cfg.seed}"))
    decay = [p for n, p in module.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in module.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    t0, tokens, step, loss_avg = time.perf_counter(), 0, 0, float("nan")
    paused = 0.0  # seconds spent on accuracy checks: not training time
    done = 0.0
    with open(out / METRICS, "w", encoding="utf-8") as log:
        while done < 1.0:
            tb = filler.step(device, done)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * schedule(done)
            loss_sum, n = loss_of(module, tb, backend, cfg.precision)
            opt.zero_grad(set_to_none=True)
            (loss_sum / max(n, 1)).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
            step += 1
            tokens += tb.batch.num_tokens
            loss = loss_sum.item() / max(n, 1)
            loss_avg = loss if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * loss
            elapsed = time.perf_counter() - t0 - paused
            done = max(step / cfg.steps, elapsed / cfg.budget_s if cfg.budget_s else 0.0)
            rec = {"step": step, "time_s": round(elapsed, 4), "loss": loss, "tokens": tokens,
                   "tokens_per_s": tokens / max(elapsed, 1e-9), "lr": opt.param_groups[0]["lr"],
                   "seqs": tb.batch.num_seqs}
            if cfg.eval_every and (step % cfg.eval_every == 0 or done >= 1.0):
                t_eval = time.perf_counter()
                module.eval()
                rec["accuracy"], rec["eval_loss"] = held_out(forward_logits(module, backend, cfg.precision), task,
                                                             range(cfg.train_min_len, cfg.train_max_len + 1), 16,
                                                             cfg.seed)
                module.train()
                paused += time.perf_counter() - t_eval
            log.write(json.dumps(rec) + "\n")
            if progress:
                progress(step, loss_avg, rec["tokens_per_s"], min(done, 1.0))
    module.eval()
    save_model(module, cfg, out / MODEL)
    return {"skipped": False, "model": str(out / MODEL), "steps": step, "loss": loss_avg,
            "seconds": rec["time_s"], "tokens": tokens}


def summary_of(out: Path) -> dict:
    """A finished run's summary as train returned it (steps, loss: the running mean of the step loss, seconds of
    training, tokens), read back from its metrics.jsonl: what the lab records for a model it reloads. Empty if
    the log is missing or unreadable (a run from elsewhere)."""
    steps, loss_avg, seconds, tokens = 0, float("nan"), None, None
    try:
        with open(Path(out) / METRICS, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                loss = float(rec["loss"])
                loss_avg = loss if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * loss
                steps, seconds, tokens = int(rec["step"]), float(rec["time_s"]), int(rec["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {"steps": steps, "loss": loss_avg, "seconds": seconds, "tokens": tokens} if steps else {}


def forward_logits(module: Llama, backend, precision: str = "fp32") -> Callable[[list[list[int]]], list[torch.Tensor]]:
    """lm.logits for a module in memory: packed forwards without gradients, under the run's precision."""
    from ..ragged import RaggedBatch

    @torch.no_grad()
    def logits(seqs):
        b = RaggedBatch.from_lists(seqs, next(module.parameters()).device)
        with autocast(b.tokens.device, precision):
            out = module(b.tokens, b.positions, Step(AttnMeta.packed(b.cu_seqlens, b.max_seqlen), module.mask,
                                                     backend))
        return b.split(out.float().cpu())
    return logits


def exact_match(logits: Callable, task, lengths, samples: int, seed: int, max_tokens: int = 16384) -> float:
    """Mean exact match over `samples` evaluation samples per length. Greedy decoding reproduces the answer
    exactly when, fed the answer, every answer position's argmax is the next answer token (by induction on the
    position), so one teacher-forced forward scores it: no KV cache, and any position encoding."""
    scores = []
    for n in lengths:
        scores += score_length(logits, task, n, samples, seed, max_tokens)
    return sum(scores) / len(scores)


def held_out(logits: Callable, task, lengths, samples: int, seed: int, max_tokens: int = 16384) -> tuple[float, float]:
    """(exact match, mean cross-entropy per answer token) over the same held-out samples as exact_match: a loss that
    every way of filling a step is measured on alike (their training losses see different pieces)."""
    hits, nll, count = [], 0.0, 0
    for n in lengths:
        encs = [task.sample(n, seed * 1_000_003 + i, stream="eval").encode() for i in range(samples)]
        per = max(1, max_tokens // len(encs[0].ids))
        for i in range(0, len(encs), per):
            group = encs[i:i + per]
            for e, lg in zip(group, logits([e.ids for e in group])):
                a = e.answer_start
                target = torch.tensor(e.ids[a:])
                step = lg[a - 1:len(e.ids) - 1]
                hits.append(float(torch.equal(step.argmax(-1), target)))
                nll += float(torch.nn.functional.cross_entropy(step, target, reduction="sum"))
                count += len(target)
    return sum(hits) / len(hits), nll / max(count, 1)


def score_length(logits: Callable, task, n: int, samples: int, seed: int, max_tokens: int = 16384) -> list[float]:
    """0/1 per evaluation sample of size n (eval stream, seeds seed * 1_000_003 + i)."""
    encs = [task.sample(n, seed * 1_000_003 + i, stream="eval").encode() for i in range(samples)]
    out = []
    per = max(1, max_tokens // len(encs[0].ids))
    for i in range(0, len(encs), per):
        group = encs[i:i + per]
        for e, lg in zip(group, logits([e.ids for e in group])):
            a = e.answer_start
            pred = lg[a - 1:len(e.ids) - 1].argmax(-1)
            out.append(float(torch.equal(pred, torch.tensor(e.ids[a:]))))
    return out
