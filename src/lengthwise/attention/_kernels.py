"""The Triton source of triton_decode.py's, triton_prefill.py's and triton_two_region.py's kernels: imported on
first use, so lengthwise imports without triton."""
import triton
import triton.language as tl


@triton.jit
def rope(x_ptr, c_ptr, s_ptr, rows, cols, mask, D: tl.constexpr):
    """x * cos + roll(x, D/2) * sin_signed, rounded as torch rounds it in x's dtype (positions/rope.py: Tables)."""
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + rows + cols, mask=mask, other=0.0).to(tl.float32)
    xr = tl.load(x_ptr + rows + (cols + D // 2) % D, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return ((x * c).to(dt).to(tl.float32) + (xr * s).to(dt).to(tl.float32)).to(dt)

@triton.jit
def scores(q, k, qk_scale, IEEE: tl.constexpr):
    """q [M, D] . k [N, D]^T, scaled (log2 units): fp32 accumulation, exact fp32 products when IEEE."""
    if IEEE:
        return tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    return tl.dot(q, tl.trans(k)) * qk_scale


@triton.jit
def online_step(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
    """One key block of an online softmax: s [M, N] scores (-inf where masked), v [N, D] -> (m_i, l_i, acc).
    A row whose scores are all -inf so far keeps l_i = 0 and acc = 0."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    if IEEE:
        pv = tl.dot(p, v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + pv


@triton.jit
def decode_attn(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_ptr, used_ptr, c_ptr, s_ptr, slot_ptr,
            sq_b, sq_h, sk_s, sk_h, sv_s, sv_h, so_b, so_h, sc_b,
            qk_scale, window, G: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
            BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
            IEEE: tl.constexpr, FUSED: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    rows = tl.arange(0, BLOCK_G)  # query heads kvh * G + rows
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < G
    col_ok = cols < D
    heads = kvh * G + rows
    q_rows = b.to(tl.int64) * sq_b + heads[:, None] * sq_h
    q_mask = row_ok[:, None] & col_ok[None, :]
    start = tl.load(cu_ptr + b).to(tl.int64)
    n = tl.load(used_ptr + b)  # keys in use, the new one (FUSED) included
    if FUSED:
        # q_ptr is the step's qkv [B, H + 2 HKV, D] before RoPE: rotate the queries and the new key, write
        # the new key and value to the cache, and attend to them from registers after the cached keys
        c_row = c_ptr + b.to(tl.int64) * sc_b
        s_row = s_ptr + b.to(tl.int64) * sc_b
        q = rope(q_ptr, c_row, s_row, q_rows, cols[None, :], q_mask, D)
        kv_row = b.to(tl.int64) * sq_b
        k_new = rope(q_ptr, c_row, s_row, kv_row + (H + kvh) * sq_h, cols, col_ok, D)
        v_new = tl.load(q_ptr + kv_row + (H + HKV + kvh) * sq_h + cols, mask=col_ok, other=0.0)
        slot = tl.load(slot_ptr + b).to(tl.int64)
        tl.store(k_ptr + slot * sk_s + kvh * sk_h + cols, k_new, mask=col_ok)
        tl.store(v_ptr + slot * sv_s + kvh * sv_h + cols, v_new, mask=col_ok)
        hi = n - 1  # the cached keys; the new one is merged last
    else:
        q = tl.load(q_ptr + q_rows + cols[None, :], mask=q_mask, other=0.0)  # [BLOCK_G, BLOCK_D]
        hi = n
    lo = 0
    if WINDOW:
        lo = tl.maximum(n - window, 0)  # the query (position n - 1) sees distance < window

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for j in range(lo, hi, BLOCK_N):
        offs = j + tl.arange(0, BLOCK_N)
        key_ok = offs < hi
        rows_k = start + offs.to(tl.int64)
        kv_mask = key_ok[:, None] & col_ok[None, :]  # never touch rows past used: they may be NaN
        k = tl.load(k_ptr + rows_k[:, None] * sk_s + kvh * sk_h + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + rows_k[:, None] * sv_s + kvh * sv_h + cols[None, :], mask=kv_mask, other=0.0)
        s = tl.where(key_ok[None, :], scores(q, k, qk_scale, IEEE), float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_i, l_i, acc = online_step(s, v, m_i, l_i, acc, IEEE)
    if FUSED:  # the new key, at distance 0: always seen
        s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * qk_scale  # [BLOCK_G]
        m_new = tl.maximum(m_i, s_new)
        alpha = tl.exp2(m_i - m_new)
        p_new = tl.exp2(s_new - m_new)
        l_i = l_i * alpha + p_new
        acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
        m_i = m_new

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]  # 0 where the query saw no key
    tl.store(o_ptr + b.to(tl.int64) * so_b + heads[:, None] * so_h + cols[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(lse_ptr + b.to(tl.int64) * (G * tl.num_programs(1)) + heads, lse, mask=row_ok)


@triton.jit
def rope_qk(qkv_ptr, out_ptr, c_ptr, s_ptr, k_ptr, v_ptr, slot_ptr, s_t, s_h, so_t, so_h, sc_t, sk_s, sk_h,
            sv_s, sv_h, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_HEADS: tl.constexpr,
            BLOCK_D: tl.constexpr, CACHE: tl.constexpr):
    """One token per program: its queries and keys rotated into out [T, H + HKV, D]; with CACHE, its rotated
    keys and its values also written to the cache rows at slot_ptr[t]."""
    t = tl.program_id(0).to(tl.int64)
    heads = tl.arange(0, BLOCK_HEADS)
    cols = tl.arange(0, BLOCK_D)
    mask = (heads < H + HKV)[:, None] & (cols < D)[None, :]
    x = rope(qkv_ptr, c_ptr + t * sc_t, s_ptr + t * sc_t, t * s_t + heads[:, None] * s_h, cols[None, :], mask, D)
    tl.store(out_ptr + t * so_t + heads[:, None] * so_h + cols[None, :], x, mask=mask)
    if CACHE:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        kv = heads - H  # the key heads' rows of x
        k_mask = mask & (heads >= H)[:, None]
        tl.store(k_ptr + slot * sk_s + kv[:, None] * sk_h + cols[None, :], x, mask=k_mask)
        v_heads = tl.arange(0, BLOCK_HEADS)
        v_mask = (v_heads < HKV)[:, None] & (cols < D)[None, :]
        v = tl.load(qkv_ptr + t * s_t + (H + HKV + v_heads[:, None]) * s_h + cols[None, :], mask=v_mask, other=0.0)
        tl.store(v_ptr + slot * sv_s + v_heads[:, None] * sv_h + cols[None, :], v, mask=v_mask)


@triton.jit
def prefill_attn(q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr, bseq_ptr, bstart_ptr, n_blocks_ptr,
                 sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, so_t, so_h, qk_scale, window,
                 G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, IEEE: tl.constexpr):
    """One program per (query block, head): BLOCK_M queries of one sequence against its keys up to the last
    of them (causal), online softmax in fp32 (log2 units). Blocks come from a table, heaviest first."""
    j = tl.program_id(0)
    h = tl.program_id(1)
    if j >= tl.load(n_blocks_ptr):
        return
    seq = tl.load(bseq_ptr + j)
    start = tl.load(bstart_ptr + j)  # first query row of the block, within its sequence
    base = tl.load(cu_ptr + seq).to(tl.int64)
    n = tl.load(cu_ptr + seq + 1) - tl.load(cu_ptr + seq)
    kvh = h // G
    rows = start + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    col_ok = cols < D
    q = tl.load(q_ptr + (base + rows.to(tl.int64))[:, None] * sq_t + h * sq_h + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = tl.minimum(start + BLOCK_M, n)  # keys past the block's last query are masked for all its rows
    lo = 0
    if WINDOW:
        lo = tl.maximum(start - window + 1, 0) // BLOCK_N * BLOCK_N  # the first row sees distance < window
    full = tl.maximum(start // BLOCK_N * BLOCK_N, lo)  # blocks before `full` need no causal mask
    if WINDOW:
        full = lo  # a window masks every block
    for s0 in range(lo, full, BLOCK_N):  # below the diagonal: no mask
        offs = s0 + tl.arange(0, BLOCK_N)
        kr = (base + offs.to(tl.int64))
        k = tl.load(k_ptr + kr[:, None] * sk_t + kvh * sk_h + cols[None, :], mask=col_ok[None, :], other=0.0)
        v = tl.load(v_ptr + kr[:, None] * sv_t + kvh * sv_h + cols[None, :], mask=col_ok[None, :], other=0.0)
        m_i, l_i, acc = online_step(scores(q, k, qk_scale, IEEE), v, m_i, l_i, acc, IEEE)
    for s0 in range(full, hi, BLOCK_N):  # the diagonal (and window edges): masked
        offs = s0 + tl.arange(0, BLOCK_N)
        key_ok = offs < n
        kr = (base + offs.to(tl.int64))
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + kr[:, None] * sk_t + kvh * sk_h + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kr[:, None] * sv_t + kvh * sv_h + cols[None, :], mask=kv_mask, other=0.0)
        ok = (offs[None, :] <= rows[:, None]) & key_ok[None, :]
        if WINDOW:
            ok = ok & (offs[None, :] > rows[:, None] - window)
        m_i, l_i, acc = online_step(tl.where(ok, scores(q, k, qk_scale, IEEE), float("-inf")), v, m_i, l_i, acc,
                                    IEEE)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + (base + rows.to(tl.int64))[:, None] * so_t + h * so_h + cols[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def two_region_attn(q_ptr, qf_ptr, k_ptr, kf_ptr, v_ptr, o_ptr, m_ptr, l_ptr, acc_ptr, cu_ptr, used_ptr,
                    sq_b, sq_h, sqf_b, sqf_h, sk_s, sk_h, skf_s, skf_h, sv_s, sv_h, so_b, so_h, qk_scale, window,
                    G: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SAME_K: tl.constexpr, IEEE: tl.constexpr):
    """One program per (sequence, kv head, split): the G query heads of a GQA group against one split of the
    sequence's keys, each key read once. Keys j < used - window (distance >= window) score the far queries qf
    against the far keys kf, the rest q against k; one online softmax spans both regions. SPLITS == 1 writes
    out; else the split's running max m (log2 units), sum l and unnormalized acc, for merge_splits."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    rows = tl.arange(0, BLOCK_G)  # query heads kvh * G + rows
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < G
    col_ok = cols < D
    heads = kvh * G + rows
    q_mask = row_ok[:, None] & col_ok[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * sq_b + heads[:, None] * sq_h + cols[None, :], mask=q_mask, other=0.0)
    qf = tl.load(qf_ptr + b.to(tl.int64) * sqf_b + heads[:, None] * sqf_h + cols[None, :], mask=q_mask, other=0.0)
    start = tl.load(cu_ptr + b).to(tl.int64)
    n = tl.load(used_ptr + b)
    far_end = tl.maximum(n - window, 0)  # keys j < far_end are far
    per = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_N) * BLOCK_N  # keys per split, whole blocks
    lo = split * per
    hi = tl.minimum(lo + per, n)
    wholly_far = far_end // BLOCK_N * BLOCK_N  # blocks below this are all far
    wholly_near = tl.cdiv(far_end, BLOCK_N) * BLOCK_N  # blocks from this on are all near
    k_cols = kvh * sk_h + cols[None, :]
    kf_cols = kvh * skf_h + cols[None, :]
    v_cols = kvh * sv_h + cols[None, :]

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    # far blocks end at or before far_end <= used: every key is real, no key mask
    for j in range(lo, tl.minimum(hi, wholly_far), BLOCK_N):
        rows_k = start + j + tl.arange(0, BLOCK_N).to(tl.int64)
        kf = tl.load(kf_ptr + rows_k[:, None] * skf_s + kf_cols, mask=col_ok[None, :], other=0.0)
        v = tl.load(v_ptr + rows_k[:, None] * sv_s + v_cols, mask=col_ok[None, :], other=0.0)
        m_i, l_i, acc = online_step(scores(qf, kf, qk_scale, IEEE), v, m_i, l_i, acc, IEEE)
    # the block across the boundary (at most one): each key from its own region's pool
    for j in range(tl.maximum(lo, wholly_far), tl.minimum(hi, wholly_near), BLOCK_N):
        idx = j + tl.arange(0, BLOCK_N)
        rows_k = start + idx.to(tl.int64)
        key_ok = idx < hi
        far = idx < far_end
        if SAME_K:
            kb = tl.load(k_ptr + rows_k[:, None] * sk_s + k_cols, mask=key_ok[:, None] & col_ok[None, :], other=0.0)
            s_far = scores(qf, kb, qk_scale, IEEE)
        else:
            kb = tl.load(k_ptr + rows_k[:, None] * sk_s + k_cols, mask=(key_ok & ~far)[:, None] & col_ok[None, :],
                         other=0.0)
            kf = tl.load(kf_ptr + rows_k[:, None] * skf_s + kf_cols, mask=(key_ok & far)[:, None] & col_ok[None, :],
                         other=0.0)
            s_far = scores(qf, kf, qk_scale, IEEE)
        v = tl.load(v_ptr + rows_k[:, None] * sv_s + v_cols, mask=key_ok[:, None] & col_ok[None, :], other=0.0)
        s = tl.where(far[None, :], s_far, scores(q, kb, qk_scale, IEEE))
        m_i, l_i, acc = online_step(tl.where(key_ok[None, :], s, float("-inf")), v, m_i, l_i, acc, IEEE)
    for j in range(tl.maximum(lo, wholly_near), hi, BLOCK_N):
        idx = j + tl.arange(0, BLOCK_N)
        rows_k = start + idx.to(tl.int64)
        key_ok = idx < hi
        kv_mask = key_ok[:, None] & col_ok[None, :]  # never touch rows past used: they may be NaN
        kb = tl.load(k_ptr + rows_k[:, None] * sk_s + k_cols, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + rows_k[:, None] * sv_s + v_cols, mask=kv_mask, other=0.0)
        s = tl.where(key_ok[None, :], scores(q, kb, qk_scale, IEEE), float("-inf"))
        m_i, l_i, acc = online_step(s, v, m_i, l_i, acc, IEEE)

    if SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # 0 where the query saw no key
        tl.store(o_ptr + b.to(tl.int64) * so_b + heads[:, None] * so_h + cols[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_mask)
    else:
        part = (b.to(tl.int64) * H + heads) * SPLITS + split  # [BLOCK_G] rows of the [B, H, SPLITS] partials
        tl.store(m_ptr + part, m_i, mask=row_ok)
        tl.store(l_ptr + part, l_i, mask=row_ok)
        tl.store(acc_ptr + part[:, None] * D + cols[None, :], acc, mask=q_mask)


@triton.jit
def merge_splits(m_ptr, l_ptr, acc_ptr, o_ptr, so_b, so_h, H: tl.constexpr, D: tl.constexpr,
                 BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    """One program per (sequence, query head): its SPLITS partial softmaxes made one, exactly. An empty split
    (m = -inf, l = 0) weighs nothing; a query that saw no key gets 0."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < SPLITS
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    part = (b * H + h) * SPLITS + s
    m = tl.load(m_ptr + part, mask=s_ok, other=float("-inf"))
    l = tl.load(l_ptr + part, mask=s_ok, other=0.0)
    acc = tl.load(acc_ptr + part[:, None] * D + cols[None, :], mask=s_ok[:, None] & col_ok[None, :], other=0.0)
    top = tl.max(m, 0)
    w = tl.exp2(m - tl.where(top == float("-inf"), 0.0, top))  # [SPLITS]
    den = tl.sum(l * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(den > 0, den, 1.0)
    tl.store(o_ptr + b * so_b + h * so_h + cols, out.to(o_ptr.dtype.element_ty), mask=col_ok)
