"""Training on packed batches: the same loss as one sequence at a time, for every position encoding; the fills
of Dataset Decomposition and concat-and-chunk; scoring by one teacher-forced forward equals greedy decoding."""
import random

import pytest
import torch

from lengthwise.errors import LengthwiseError
from lengthwise.positions import scratch
from lengthwise.tasks.algorithmic import get_task
from lengthwise.train.batches import IGNORE, Filler, Piece, grow_odds, pack
from lengthwise.train.loop import TrainConfig, backend_for, build_model, loss_of, score_length


def pieces(task="addition:reverse=true", lens=(3, 7, 1, 12, 7)):
    t = get_task(task)
    out = []
    for i, n in enumerate(lens):
        e = t.sample(n, i).encode()
        out.append(Piece(e.ids, e.scored))
    return out


@pytest.mark.parametrize("pe", list(scratch.SCHEMES))
def test_packed_loss_equals_one_at_a_time(pe):
    cfg = TrainConfig(task="addition:reverse=true", pe=pe, dim=32, n_heads=4, train_max_len=12)
    model = build_model(cfg)
    if pe in ("randomized", "abacus"):
        model.eval()  # their training draws are random per forward; evaluation draws are fixed per sequence
    backend = backend_for(model, torch.device("cpu"))
    ps = pieces()
    total, n = loss_of(model, pack(ps), backend)
    alone = [loss_of(model, pack([p]), backend) for p in ps]
    assert n == sum(k for _, k in alone)
    ref = sum(s for s, _ in alone) / n
    assert abs(total.item() / n - ref.item()) <= 1e-5 * abs(ref.item())
    # and the gradients agree too
    model.zero_grad()
    (total / n).backward()
    g_packed = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ref.backward()
    g_alone = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(g_packed, g_alone):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_targets_are_answer_tokens_only():
    ps = pieces(lens=(2, 3))
    tb = pack(ps)
    t = tb.targets.tolist()
    at = 0
    for p in ps:
        a = p.scored.index(True)
        assert t[at:at + a - 1] == [IGNORE] * (a - 1)
        assert t[at + a - 1:at + len(p.ids) - 1] == p.ids[a:]
        assert t[at + len(p.ids) - 1] == IGNORE
        at += len(p.ids)


def _filler(fill, tokens=256, chunk=32):
    t = get_task("copy")
    rng = random.Random(0)

    def draw():
        e = t.sample(rng.randint(1, 40), rng.getrandbits(32)).encode()
        return Piece(e.ids, e.scored)
    return Filler(fill, draw, tokens, chunk, random.Random(1))


def test_dataset_decomposition_buckets():
    f = _filler("buckets")
    for step in range(20):
        tb = f.step("cpu", step / 20)
        lens = tb.batch.lens
        assert len(set(lens)) == 1 and lens[0] & (lens[0] - 1) == 0 and lens[0] <= 32  # one bucket of 2^k
        assert tb.batch.num_tokens == 256  # equal tokens per step
        assert tb.n_targets > 0 and lens[0] > 1  # no piece without anything to predict


def test_length_buckets_of_whole_samples():
    """buckets_whole: every step is whole samples (each one document, its answer intact) of one length bucket
    (2^(k-1), 2^k], at least the step's tokens; over a run every bucket is drawn."""
    f = _filler("buckets_whole")
    seen = set()
    for step in range(40):
        tb = f.step("cpu", step / 40)
        ks = {(n - 1).bit_length() for n in tb.batch.lens}
        assert len(ks) == 1 and 256 <= tb.batch.num_tokens < 256 + 2 ** max(ks)
        assert tb.n_targets == sum((n - 3) // 2 + 1 for n in tb.batch.lens)  # copy: n letters + </s> scored
        seen |= ks
    assert len(seen) >= 4


def test_concat_and_chunk_with_and_without_masks():
    plain, masked = _filler("chunk"), _filler("chunk_masked")
    a, b = plain.step("cpu", 0), masked.step("cpu", 0)
    assert a.batch.lens == [32] * 8  # one document per chunk: attention crosses samples
    assert torch.equal(a.batch.tokens, b.batch.tokens)
    assert b.batch.num_seqs > 8 and sum(b.batch.lens) == 256  # each sample's piece its own document
    assert b.n_targets <= a.n_targets


def test_grow_odds_run_short_to_long_each_cycle():
    early, late = grow_odds(4, 0.0), grow_odds(4, 0.124)
    assert early[0] > early[-1] and late[-1] > late[0]
    assert grow_odds(4, 0.125) == pytest.approx(early)  # a new cycle starts short again
    assert late[-1] / late[0] == pytest.approx(2.0, rel=0.02)  # P2: odds of the longest up to 2x


def test_teacher_forced_score_is_greedy_decoding():
    """A causal predictor that copies but errs on some letters: one forward's score equals decoding token by token."""
    from lengthwise.tasks.algorithmic.vocab import EOS, ID, SEP, SIZE
    wrong = {ID["q"], ID["e"], ID["a"]}

    def predict(prefix):
        sep = prefix.index(ID[SEP]) if ID[SEP] in prefix else None
        if sep is None:
            return 0
        k = len(prefix) - 1 - sep
        prompt = prefix[1:sep]
        if k >= len(prompt):
            return ID[EOS]
        return ID["z"] if prompt[k] in wrong else prompt[k]

    def logits(seqs):
        out = []
        for s in seqs:
            lg = torch.zeros(len(s), SIZE)
            for j in range(len(s)):
                lg[j, predict(s[:j + 1])] = 1.0
            out.append(lg)
        return out

    task = get_task("copy")
    for n in (1, 2, 4):
        fast = score_length(logits, task, n, 24, seed=0, max_tokens=40)
        slow = []
        for i in range(24):
            e = task.sample(n, i, stream="eval").encode()
            ids = e.ids[:e.answer_start]
            while len(ids) < len(e.ids):
                ids.append(int(logits([ids])[0][-1].argmax()))
            slow.append(float(ids == e.ids))
        assert fast == slow and 0 < sum(fast) < len(fast)


def test_reference_kernel_batched_by_length_equals_its_loop():
    """Packs with many sequences of one length take the batched path; the per-sequence loop (return_lse) is its twin."""
    from lengthwise.attention import AttnMeta, MaskPattern, attend
    from lengthwise.positions.scratch import ALiBi, Shape, SequenceBias
    g = torch.Generator().manual_seed(0)
    lens = [5, 3, 5, 5, 1, 3, 8]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    T = int(cu[-1])
    q, k, v = (torch.randn(T, n, 8, generator=g, dtype=torch.float64) for n in (4, 2, 2))
    meta = AttnMeta.packed(cu, max(lens))
    pos = torch.cat([torch.arange(n) for n in lens])
    for bias in (None, SequenceBias(ALiBi(Shape(32, 4, 8)), pos, cu.tolist())):
        fast = attend(q, k, v, meta, MaskPattern(causal=True), "reference", bias=bias)
        slow, _ = attend(q, k, v, meta, MaskPattern(causal=True), "reference", return_lse=True, bias=bias)
        assert torch.allclose(fast, slow, atol=1e-12)


def test_eval_every_logs_accuracy_and_a_budget_stops(tmp_path):
    import json
    from lengthwise.train.loop import METRICS, train
    r = train(TrainConfig(task="parity", pe="nope", dim=32, steps=10**6, budget_s=1.5, eval_every=3,
                          tokens_per_step=128, train_max_len=4), tmp_path / "r")
    assert 1.5 <= r["seconds"] < 6 and r["steps"] >= 3
    recs = [json.loads(x) for x in (tmp_path / "r" / METRICS).read_text().splitlines()]
    assert len(recs) == r["steps"] and "accuracy" in recs[2] and "accuracy" in recs[-1]
    assert all(0 <= x["accuracy"] <= 1 for x in recs if "accuracy" in x)
    assert all(x["eval_loss"] > 0 for x in recs if "accuracy" in x)


def test_held_out_loss_and_accuracy_against_a_hand_computation():
    """held_out's exact match equals exact_match's, and its loss is the float64 log-softmax of the answer
    positions, averaged over answer tokens, computed here sample by sample."""
    from lengthwise.train.loop import exact_match, held_out
    task = get_task("copy")
    g = torch.Generator().manual_seed(3)

    def logits(seqs):
        out = []
        for ids in seqs:
            lg = torch.randn(len(ids), 40, generator=g)
            lg[torch.arange(len(ids) - 1), torch.tensor(ids[1:])] += 6.0 if len(ids) % 2 else 0.0  # some right
            out.append(lg)
        return out

    g.manual_seed(3)
    acc, loss = held_out(logits, task, range(1, 6), 4, seed=2, max_tokens=20)
    g.manual_seed(3)
    assert acc == exact_match(logits, task, range(1, 6), 4, seed=2, max_tokens=20)
    g.manual_seed(3)
    nll, count = 0.0, 0
    for n in range(1, 6):
        encs = [task.sample(n, 2 * 1_000_003 + i, stream="eval").encode() for i in range(4)]
        per = max(1, 20 // len(encs[0].ids))
        for i in range(0, 4, per):
            group = encs[i:i + per]
            for e, lg in zip(group, logits([e.ids for e in group])):
                lp = torch.log_softmax(lg.double(), -1)
                for t in range(e.answer_start, len(e.ids)):
                    nll -= float(lp[t - 1, e.ids[t]])
                    count += 1
    assert loss == pytest.approx(nll / count, rel=1e-6)


@pytest.mark.parametrize("pe", list(scratch.SCHEMES) + ["randomized:base=alibi", "abacus:base=fire"])
def test_kernel_and_precision_per_scheme(pe):
    """bf16 on CUDA attends through varlen unless the scheme adds a bias; the CPU keeps the float32 reference.
    The chooser needs a device type only: nothing is allocated on a GPU."""
    from lengthwise.train.loop import choose_kernel
    bias = scratch.has_bias(pe)
    assert bias == (pe in ("alibi", "t5", "fire") or "alibi" in pe or "fire" in pe)
    cuda = torch.device("cuda")
    assert choose_kernel(pe, cuda, "bf16") == ("reference" if bias else "varlen")
    assert choose_kernel(pe, cuda, "fp32") == "reference" == choose_kernel(pe, "cpu", "fp32")
    assert choose_kernel(pe, "cpu", "bf16") == "reference"
    model = build_model(TrainConfig(task="copy", pe=pe, dim=32, n_heads=4))
    b = backend_for(model, cuda, "bf16")
    assert b.kernel == ("reference" if bias else "varlen")
    assert not (b.fused or b.triton_prefill or b.triton_decode or b.split_kv)  # no backward there
    assert backend_for(model, cuda, "bf16", "reference").kernel == "reference"
    if bias:
        with pytest.raises(LengthwiseError, match="only the reference kernel"):
            choose_kernel(pe, cuda, "bf16", "varlen")
    cfg = TrainConfig(task="copy", pe=pe)  # the CPU's defaults: the float32 reference, keyed as before
    assert (cfg.precision, cfg.attention, cfg.legacy) == ("fp32", "reference", True)
    assert "precision" not in cfg.key() and "attention" not in cfg.key()


def test_kernel_choice_refusals():
    from lengthwise.train.loop import choose_kernel
    with pytest.raises(LengthwiseError, match="varlen kernel trains on CUDA in bf16"):
        choose_kernel("nope", "cpu", "bf16", "varlen")
    with pytest.raises(LengthwiseError, match="varlen kernel trains on CUDA in bf16"):
        choose_kernel("nope", "cuda", "fp32", "varlen")
    with pytest.raises(LengthwiseError, match="cpu_flash kernel runs on the CPU"):
        choose_kernel("nope", "cuda", "bf16", "cpu_flash")
    with pytest.raises(LengthwiseError, match="unknown precision"):
        TrainConfig(task="copy", pe="nope", precision="fp16")
    with pytest.raises(LengthwiseError, match="unknown attention kernel"):
        TrainConfig(task="copy", pe="nope", attention="flex")
    with pytest.raises(LengthwiseError, match="only the reference kernel"):
        TrainConfig(task="copy", pe="t5", attention="cpu_flash")


@pytest.mark.parametrize("pe", ["nope", "rope", "abacus"])
def test_fused_kernel_and_bf16_autocast_train_like_the_reference(pe):
    """The varlen-like path on the CPU: torch's flash kernel (with its backward) gives the reference's loss and
    gradients in float32, and under bf16 autocast (q, k rotated in bf16) the loss stays within 2e-2."""
    cfg = TrainConfig(task="addition:reverse=true", pe=pe, dim=32, n_heads=4, train_max_len=12)
    model = build_model(cfg).eval()
    tb = pack(pieces())
    runs = {}
    for prec, att in (("fp32", "reference"), ("fp32", "cpu_flash"), ("bf16", "cpu_flash"), ("bf16", "reference")):
        model.zero_grad()
        total, n = loss_of(model, tb, backend_for(model, torch.device("cpu"), prec, att), prec)
        assert total.dtype == torch.float32
        (total / n).backward()
        runs[prec, att] = (total.item() / n, [p.grad.clone() for p in model.parameters() if p.grad is not None])
    ref, g_ref = runs["fp32", "reference"]
    flash, g_flash = runs["fp32", "cpu_flash"]
    assert abs(flash - ref) <= 1e-5 * ref
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_flash, g_ref))
    for key in (("bf16", "cpu_flash"), ("bf16", "reference")):
        loss, grads = runs[key]
        assert abs(loss - ref) <= 2e-2 * ref
        worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, g_ref) if b.norm() > 0)
        assert worst < 0.1, (key, worst)


def test_lab_keys_precision(tmp_path):
    """A run in another precision is another run: its own record ids and store header, and its own folder."""
    from lengthwise.train.lab import LabConfig, record_id
    from lengthwise.train.loop import claim
    grid = dict(tasks=["copy"], pes=["nope", "alibi"], seeds=[0], lengths=[1, 2])
    plain = LabConfig(**grid, train=dict(dim=32))
    assert plain.store_config() == {"lab": 1, "samples": 64, "train": {"dim": 32}}  # as before precision existed
    assert LabConfig(**grid, train=dict(dim=32, precision="fp32")).store_config() == plain.store_config()
    bf16 = LabConfig(**grid, train=dict(dim=32, precision="bf16"))
    assert bf16.store_config() == {"lab": 1, "samples": 64, "train": {"dim": 32}, "precision": "bf16",
                                   "attention": "auto"}
    for pe in grid["pes"]:
        a, b = plain.cell("copy", pe, 0), bf16.cell("copy", pe, 0)
        assert b.key()["precision"] == "bf16" and b.key()["attention"] == "reference"
        assert record_id(plain.store_config(), a, 1) != record_id(bf16.store_config(), b, 1)
        assert record_id(plain.store_config(), a, 1) != record_id(plain.store_config(), b, 1)
    claim(tmp_path / "r", plain.cell("copy", "nope", 0))
    with pytest.raises(LengthwiseError, match="precision"):
        claim(tmp_path / "r", bf16.cell("copy", "nope", 0))
