"""The Triton source of triton_prefill.py's kernel: imported on first use, so lengthwise imports without triton."""
import triton
import triton.language as tl


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
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    for s0 in range(full, hi, BLOCK_N):  # the diagonal (and window edges): masked
        offs = s0 + tl.arange(0, BLOCK_N)
        key_ok = offs < n
        kr = (base + offs.to(tl.int64))
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + kr[:, None] * sk_t + kvh * sk_h + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kr[:, None] * sv_t + kvh * sv_h + cols[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale
        ok = (offs[None, :] <= rows[:, None]) & key_ok[None, :]
        if WINDOW:
            ok = ok & (offs[None, :] > rows[:, None] - window)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet in this block
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + (base + rows.to(tl.int64))[:, None] * so_t + h * so_h + cols[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
