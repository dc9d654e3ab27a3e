"""The Triton source of triton_decode.py's kernels: imported on first use, so lengthwise imports without triton."""
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
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(key_ok[None, :], s * qk_scale, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds at least one key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
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
