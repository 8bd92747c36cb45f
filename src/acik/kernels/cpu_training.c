/* Training kernels for x86-64 CPUs, forward and backward: causal self-attention (this first part), then
   RMSNorm, SwiGLU and cross-entropy (at the end).

   Attention, fp32: a FlashAttention-style forward (online softmax over key blocks, saving each row's
   log-sum-exp) and backward (recomputing the probabilities block by block).

   Why: PyTorch's CPU flash kernel runs small heads (head_dim 32-64) at 20-60 GFLOP/s on this project's CPU,
   where its matrix multiplies reach 180, so attention was a fifth of a small model's training step
   (docs/benchmarks.md "Training").

   How: every product is one register-tiled kernel, C (+)= A . B, with B's rows contiguous and A read by
   scalar broadcasts at any strides (so P^T and dS^T need no transposed copies). Keys and values are
   transposed once per (batch, key head) so that scores are rows of B too.

   Masks: causal, and optionally a first visible key per query (`first` [B, T]: the start of its example in a
   row of packed examples, or of its sliding window); key blocks wholly before a query block's first keys are
   skipped.

   RoPE: with cos and sin tables (RotaryEmbedding's, sin's first half negated), q and k are rotated as they
   are read (x * cos + roll(x, D/2) * sin) and dq and dk rotated back as they are written, so the model
   hands over the projections as they are; a rotation of part of the head is left to the caller.

   Layouts: q, o, dq [B, T, H, D]; k, v, dk, dv [B, T, Hkv, D] (what the projections produce: no transposes
   on the Python side); lse [B, H, T]. Query head h reads key head h / (H / Hkv). D must divide by the
   vector width (16 floats with AVX-512, 8 with AVX2).

   Threads: the caller's OpenMP team. The forward splits work by (batch, head, query block), the backward by
   (batch, key head), so each thread owns the dk and dv rows it writes. Each item's arithmetic is fixed by
   its inputs alone, so results are bitwise the same for any thread count. */

#include <immintrin.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define BQ 64 /* query rows per block */
#define BK 64 /* keys per block */
#define MR 6  /* rows per register tile */

#if defined(__AVX512F__)
#define VL 16
#define NR 4 /* vectors per register tile row: 6 x 4 accumulators + 4 B vectors of the 32 registers */
typedef __m512 vec;
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vfma _mm512_fmadd_ps
#define vfnma _mm512_fnmadd_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmul _mm512_mul_ps
#define vdiv _mm512_div_ps
#define vmax _mm512_max_ps
#define vmin _mm512_min_ps
INLINE float hmax(vec x) { return _mm512_reduce_max_ps(x); }
INLINE float hsum(vec x) { return _mm512_reduce_add_ps(x); }
INLINE vec vround(vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vec pow2_times(vec p, vec n) { return _mm512_scalef_ps(p, n); }
INLINE vec zero_below(vec y, vec x, float lo) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, vset1(lo), _CMP_GE_OQ), y); }
INLINE vec load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
INLINE void store_bf16(uint16_t *p, vec x) { /* round to nearest even; NaN stays NaN */
    __m512i u = _mm512_castps_si512(x), one = _mm512_set1_epi32(1);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define VL 8
#define NR 2 /* 6 x 2 accumulators + 2 B vectors + 1 broadcast of the 16 registers */
typedef __m256 vec;
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vfma _mm256_fmadd_ps
#define vfnma _mm256_fnmadd_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmul _mm256_mul_ps
#define vdiv _mm256_div_ps
#define vmax _mm256_max_ps
#define vmin _mm256_min_ps
INLINE float hmax(vec x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
INLINE float hsum(vec x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
INLINE vec vround(vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vec pow2_times(vec p, vec n) { /* n in [-126, 127] after exp's clamp */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
INLINE vec zero_below(vec y, vec x, float lo) { return _mm256_and_ps(y, _mm256_cmp_ps(x, vset1(lo), _CMP_GE_OQ)); }
INLINE vec load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
INLINE void store_bf16(uint16_t *p, vec x) { /* round to nearest even; NaN stays NaN */
    __m256i u = _mm256_castps_si256(x), one = _mm256_set1_epi32(1);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
    r = _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
#else
#error "acik's attention kernel needs AVX2 with FMA, or AVX-512"
#endif

int acik_vector_width(void) { return VL; }

/* Element i of an fp32 or bf16 array, VL at a time. */
INLINE vec loadx(const void *p, int64_t i, int bf16) {
    return bf16 ? load_bf16((const uint16_t *)p + i) : vload((const float *)p + i);
}
INLINE void storex(void *p, int64_t i, vec x, int bf16) {
    if (bf16) store_bf16((uint16_t *)p + i, x);
    else vstore((float *)p + i, x);
}

/* exp(x) to about 2 ulp: 2^n * p(r) with n = round(x / ln 2) and a degree-6 polynomial on |r| <= ln(2) / 2.
   Inputs below -87.3 (where 2^n would leave the normal range), -inf included, give exactly 0. */
INLINE vec vexp(vec x) {
    vec xc = vmin(vmax(x, vset1(-87.3f)), vset1(88.7f));
    vec n = vround(vmul(xc, vset1(1.44269504088896341f)));
    vec r = vfnma(n, vset1(0.693145751953125f), xc);
    r = vfnma(n, vset1(1.428606765330187e-06f), r);
    vec p = vset1(1.f / 720);
    p = vfma(p, r, vset1(1.f / 120));
    p = vfma(p, r, vset1(1.f / 24));
    p = vfma(p, r, vset1(1.f / 6));
    p = vfma(p, r, vset1(0.5f));
    p = vfma(p, r, vset1(1.f));
    p = vfma(p, r, vset1(1.f));
    return zero_below(pow2_times(p, n), x, -87.3f);
}

/* C[m, :N] (+)= sum_k A[m * sam + k * sak] * B[k * ldb + :N] for m < mr (<= MR), N = nr * VL (nr <= NR).
   Called with constant mr and nr, so the accumulators live in registers. */
INLINE void tile(int mr, int nr, int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                 float *C, int64_t ldc, int add) {
    vec c[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[i][j] = add ? vload(C + i * ldc + j * VL) : vzero();
    for (int64_t k = 0; k < K; k++) {
        vec b[NR];
        for (int j = 0; j < nr; j++) b[j] = vload(B + k * ldb + j * VL);
        for (int i = 0; i < mr; i++) {
            vec a = vset1(A[i * sam + k * sak]);
            for (int j = 0; j < nr; j++) c[i][j] = vfma(a, b[j], c[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) vstore(C + i * ldc + j * VL, c[i][j]);
}

typedef void (*tile_fn)(int64_t, const float *, int64_t, int64_t, const float *, int64_t, float *, int64_t, int);
#define TILE(m, n)                                                                                                   \
    static void tile_##m##_##n(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,   \
                               float *C, int64_t ldc, int add) {                                                    \
        tile(m, n, K, A, sam, sak, B, ldb, C, ldc, add);                                                             \
    }
#define TILES(m) TILE(m, 1) TILE(m, 2)
TILES(1) TILES(2) TILES(3) TILES(4) TILES(5) TILES(6)
#if NR == 4
#define TILES4(m) TILE(m, 3) TILE(m, 4)
TILES4(1) TILES4(2) TILES4(3) TILES4(4) TILES4(5) TILES4(6)
static const tile_fn TILE_FNS[MR][NR] = {
    {tile_1_1, tile_1_2, tile_1_3, tile_1_4}, {tile_2_1, tile_2_2, tile_2_3, tile_2_4},
    {tile_3_1, tile_3_2, tile_3_3, tile_3_4}, {tile_4_1, tile_4_2, tile_4_3, tile_4_4},
    {tile_5_1, tile_5_2, tile_5_3, tile_5_4}, {tile_6_1, tile_6_2, tile_6_3, tile_6_4}};
#else
static const tile_fn TILE_FNS[MR][NR] = {{tile_1_1, tile_1_2}, {tile_2_1, tile_2_2}, {tile_3_1, tile_3_2},
                                         {tile_4_1, tile_4_2}, {tile_5_1, tile_5_2}, {tile_6_1, tile_6_2}};
#endif

/* C[M x N] (+)= A[M x K] . B[K x N], N a multiple of VL; A at any strides, B and C row-major. */
static void gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak, const float *B,
                 int64_t ldb, float *C, int64_t ldc, int add) {
    for (int64_t n0 = 0; n0 < N; n0 += NR * VL) {
        int nr = (int)((N - n0) / VL < NR ? (N - n0) / VL : NR);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            int mr = (int)(M - m0 < MR ? M - m0 : MR);
            TILE_FNS[mr - 1][nr - 1](K, A + m0 * sam, sam, sak, B + n0, ldb, C + m0 * ldc + n0, ldc, add);
        }
    }
}

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* out = rope(x) * mul for one row of D: x * c + roll(x, D/2) * s (c and s the position's table rows), or
   x * mul where c is NULL. */
static inline void rope_row(const float *x, const float *c, const float *s, int64_t D, float mul, float *out) {
    const int64_t h = D / 2;
    if (!c) {
        for (int64_t d = 0; d < D; d += VL) vstore(out + d, vmul(vload(x + d), vset1(mul)));
    } else if (h % VL == 0) {
        for (int64_t d = 0; d < D; d += VL) {
            vec r = vfma(vload(x + (d + h) % D), vload(s + d), vmul(vload(x + d), vload(c + d)));
            vstore(out + d, vmul(r, vset1(mul)));
        }
    } else {
        for (int64_t d = 0; d < D; d++) out[d] = (x[d] * c[d] + x[(d + h) % D] * s[d]) * mul;
    }
}

/* The gradient through rope_row (mul 1): out[d] = g[d] * c[d] + g[d + D/2] * s[d + D/2] (indices mod D). */
static inline void rope_row_back(const float *g, const float *c, const float *s, int64_t D, float *out) {
    const int64_t h = D / 2;
    if (!c) {
        memcpy(out, g, sizeof(float) * D);
    } else if (h % VL == 0) {
        for (int64_t d = 0; d < D; d += VL)
            vstore(out + d, vfma(vload(g + (d + h) % D), vload(s + (d + h) % D), vmul(vload(g + d), vload(c + d))));
    } else {
        for (int64_t d = 0; d < D; d++) out[d] = g[d] * c[d] + g[(d + h) % D] * s[(d + h) % D];
    }
}

/* Rows [T x D] of a [.., T, heads, D] tensor (row stride ld), rotated with the tables c, s [T x D] (or not,
   where c is NULL) -> rows [T x D] (when `rows` is not NULL) and their transpose [D x Tp], zero beyond T. */
static void rotate_transpose(const float *x, int64_t ld, const float *c, const float *s, int64_t T, int64_t D,
                             int64_t Tp, float *rows, float *out) {
    float tmp[1024];
    for (int64_t d = 0; d < D; d++) memset(out + d * Tp + T, 0, (Tp - T) * sizeof(float));
    for (int64_t t = 0; t < T; t++) {
        float *row = rows ? rows + t * D : tmp;
        rope_row(x + t * ld, c ? c + t * D : NULL, c ? s + t * D : NULL, D, 1.f, row);
        for (int64_t d = 0; d < D; d++) out[d * Tp + t] = row[d];
    }
}

/* Row qi may see keys first .. qi (first: the start of its packed example or sliding window; 0 without one).
   Of the score block of keys j0 .. j0 + nk - 1 those are a <= j < c. */
static inline void key_range(int64_t qi, int64_t first, int64_t j0, int64_t nk, int64_t *a, int64_t *c) {
    const int64_t lo = first - j0, hi = qi - j0 + 1;
    *a = lo < 0 ? 0 : lo > nk ? nk : lo;
    *c = hi < 0 ? 0 : hi > nk ? nk : hi;
}

/* The first key block any row of a query block sees. */
static inline int64_t first_block(const int64_t *first, int64_t mq) {
    if (!first) return 0;
    int64_t f = first[0];
    for (int64_t i = 1; i < mq; i++) f = first[i] < f ? first[i] : f;
    return f / BK * BK;
}

static inline int team(int nthreads, int64_t items) { return items < nthreads ? (int)(items < 1 ? 1 : items) : nthreads; }

int acik_attention_forward(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                           int64_t rope_stride, const int64_t *first, float *o, float *lse, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                           int64_t D, float scale, int nthreads) {
    if (D > 1024) return -2;
    const int64_t Tp = round_up(T, VL), r = H / Hkv, nq = (T + BQ - 1) / BQ;
    float *kt = malloc(sizeof(float) * B * Hkv * D * Tp);
    if (!kt) return -1;
    int failed = 0;
#pragma omp parallel num_threads(team(nthreads, B * H * nq))
    {
#pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * Hkv; bg++)
            rotate_transpose(k + ((bg / Hkv) * T * Hkv + bg % Hkv) * D, Hkv * D, cos ? cos + bg / Hkv * rope_stride : NULL,
                             sin ? sin + bg / Hkv * rope_stride : NULL, T, D, Tp, NULL, kt + bg * D * Tp);
        float *buf = malloc(sizeof(float) * (BQ * D * 2 + BQ * BK + 2 * BQ));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
        /* Later query blocks see more keys: hand them out first, so the last items to finish are short. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < B * H * nq; it++) {
            if (!buf) continue;
            const int64_t qb = nq - 1 - it / (B * H), bh = it % (B * H), b = bh / H, h = bh % H, g = h / r;
            const int64_t i0 = qb * BQ, mq = T - i0 < BQ ? T - i0 : BQ, kend = i0 + mq;
            float *qs = buf, *acc = qs + BQ * D, *s = acc + BQ * D, *m = s + BQ * BK, *l = m + BQ;
            const float *qrow = q + ((b * T + i0) * H + h) * D;
            const float *cb = cos ? cos + b * rope_stride + i0 * D : NULL, *sb = sin ? sin + b * rope_stride + i0 * D : NULL;
            for (int64_t i = 0; i < mq; i++) {
                rope_row(qrow + i * H * D, cb ? cb + i * D : NULL, sb ? sb + i * D : NULL, D, scale, qs + i * D);
                m[i] = -INFINITY, l[i] = 0.f;
            }
            memset(acc, 0, sizeof(float) * mq * D);
            const int64_t *fb = first ? first + b * T + i0 : NULL;
            for (int64_t j0 = first_block(fb, mq); j0 < kend; j0 += BK) {
                const int64_t nk = kend - j0 < BK ? kend - j0 : BK, n = round_up(nk, VL);
                gemm(mq, n, D, qs, D, 1, kt + (b * Hkv + g) * D * Tp + j0, Tp, s, BK, 0);
                for (int64_t i = 0; i < mq; i++) {
                    float *si = s + i * BK;
                    int64_t a, c;
                    key_range(i0 + i, fb ? fb[i] : 0, j0, nk, &a, &c);
                    if (c <= a) { /* no key of this block is visible to this row */
                        memset(si, 0, sizeof(float) * n);
                        continue;
                    }
                    for (int64_t j = 0; j < a; j++) si[j] = -INFINITY;
                    for (int64_t j = c; j < n; j++) si[j] = -INFINITY;
                    vec mx = vset1(-INFINITY);
                    for (int64_t j = 0; j < n; j += VL) mx = vmax(mx, vload(si + j));
                    const float mnew = fmaxf(m[i], hmax(mx)), alpha = expf(m[i] - mnew);
                    vec sum = vzero(), mv = vset1(mnew);
                    for (int64_t j = 0; j < n; j += VL) {
                        vec p = vexp(vsub(vload(si + j), mv));
                        vstore(si + j, p);
                        sum = vadd(sum, p);
                    }
                    l[i] = l[i] * alpha + hsum(sum), m[i] = mnew;
                    if (alpha != 1.f)
                        for (int64_t d = 0; d < D; d += VL) vstore(acc + i * D + d, vmul(vload(acc + i * D + d), vset1(alpha)));
                }
                gemm(mq, D, nk, s, BK, 1, v + ((b * T + j0) * Hkv + g) * D, Hkv * D, acc, D, 1);
            }
            float *orow = o + ((b * T + i0) * H + h) * D;
            for (int64_t i = 0; i < mq; i++) {
                const float inv = 1.f / l[i];
                for (int64_t d = 0; d < D; d += VL) vstore(orow + i * H * D + d, vmul(vload(acc + i * D + d), vset1(inv)));
                lse[(b * H + h) * T + i0 + i] = m[i] + logf(l[i]);
            }
        }
        free(buf);
    }
    free(kt);
    return failed ? -1 : 0;
}

int acik_attention_backward(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                            int64_t rope_stride, const int64_t *first, const float *o, const float *lse, const float *dout, float *dq,
                            float *dk, float *dv, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, float scale,
                            int nthreads) {
    if (D > 1024) return -2;
    const int64_t Tp = round_up(T, VL), r = H / Hkv;
    int failed = 0;
#pragma omp parallel num_threads(team(nthreads, B * Hkv))
    {
        const size_t size = 2 * D * Tp + 3 * T * D + BQ * D * 3 + 2 * BQ * BK + BQ;
        float *buf = malloc(sizeof(float) * size);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t bg = 0; bg < B * Hkv; bg++) {
            if (!buf) continue;
            const int64_t b = bg / Hkv, g = bg % Hkv, ldq = H * D, ldk = Hkv * D;
            float *kt = buf, *vt = kt + D * Tp, *dkl = vt + D * Tp, *dvl = dkl + T * D, *kr = dvl + T * D;
            float *qs = kr + T * D, *qr = qs + BQ * D, *dqa = qr + BQ * D, *p = dqa + BQ * D, *ds = p + BQ * BK;
            float *di = ds + BQ * BK;
            const float *cb = cos ? cos + b * rope_stride : NULL, *sb = sin ? sin + b * rope_stride : NULL;
            rotate_transpose(k + (b * T * Hkv + g) * D, ldk, cb, sb, T, D, Tp, kr, kt); /* kr: rotated key rows */
            rotate_transpose(v + (b * T * Hkv + g) * D, ldk, NULL, NULL, T, D, Tp, NULL, vt);
            memset(dkl, 0, sizeof(float) * 2 * T * D);
            for (int64_t h = g * r; h < (g + 1) * r; h++) {
                for (int64_t i0 = 0; i0 < T; i0 += BQ) {
                    const int64_t mq = T - i0 < BQ ? T - i0 : BQ, kend = i0 + mq;
                    const float *qb = q + ((b * T + i0) * H + h) * D, *ob = o + ((b * T + i0) * H + h) * D;
                    const float *gb = dout + ((b * T + i0) * H + h) * D, *lb = lse + (b * H + h) * T + i0;
                    for (int64_t i = 0; i < mq; i++) {
                        const float *ci = cb ? cb + (i0 + i) * D : NULL, *si = sb ? sb + (i0 + i) * D : NULL;
                        rope_row(qb + i * ldq, ci, si, D, scale, qs + i * D); /* as the forward computed it */
                        rope_row(qb + i * ldq, ci, si, D, 1.f, qr + i * D);
                        vec acc = vzero();
                        for (int64_t d = 0; d < D; d += VL) acc = vfma(vload(gb + i * ldq + d), vload(ob + i * ldq + d), acc);
                        di[i] = hsum(acc);
                    }
                    memset(dqa, 0, sizeof(float) * mq * D);
                    const int64_t *fb = first ? first + b * T + i0 : NULL;
                    for (int64_t j0 = first_block(fb, mq); j0 < kend; j0 += BK) {
                        const int64_t nk = kend - j0 < BK ? kend - j0 : BK, n = round_up(nk, VL);
                        gemm(mq, n, D, qs, D, 1, kt + j0, Tp, p, BK, 0);  /* scores */
                        gemm(mq, n, D, gb, ldq, 1, vt + j0, Tp, ds, BK, 0); /* dP = dO . V^T */
                        for (int64_t i = 0; i < mq; i++) {
                            float *pi = p + i * BK, *dsi = ds + i * BK;
                            int64_t a, c;
                            key_range(i0 + i, fb ? fb[i] : 0, j0, nk, &a, &c);
                            vec lv = vset1(lb[i]), dv_ = vset1(di[i]), sc = vset1(scale);
                            for (int64_t j = 0; j < n; j += VL) {
                                vec pj = vexp(vsub(vload(pi + j), lv));
                                vstore(pi + j, pj);
                                vstore(dsi + j, vmul(vmul(pj, vsub(vload(dsi + j), dv_)), sc));
                            }
                            for (int64_t j = 0; j < a; j++) pi[j] = 0.f, dsi[j] = 0.f;
                            for (int64_t j = c > a ? c : a; j < n; j++) pi[j] = 0.f, dsi[j] = 0.f;
                        }
                        gemm(nk, D, mq, p, 1, BK, gb, ldq, dvl + j0 * D, D, 1);  /* dV += P^T . dO */
                        gemm(nk, D, mq, ds, 1, BK, qr, D, dkl + j0 * D, D, 1);    /* dK += dS^T . Q (scaled) */
                        gemm(mq, D, nk, ds, BK, 1, kr + j0 * D, D, dqa, D, 1);   /* dQ += dS . K (scaled) */
                    }
                    float *dqb = dq + ((b * T + i0) * H + h) * D;
                    for (int64_t i = 0; i < mq; i++)
                        rope_row_back(dqa + i * D, cb ? cb + (i0 + i) * D : NULL, sb ? sb + (i0 + i) * D : NULL, D,
                                      dqb + i * ldq);
                }
            }
            for (int64_t t = 0; t < T; t++) {
                rope_row_back(dkl + t * D, cb ? cb + t * D : NULL, sb ? sb + t * D : NULL, D, dk + ((b * T + t) * Hkv + g) * D);
                memcpy(dv + ((b * T + t) * Hkv + g) * D, dvl + t * D, sizeof(float) * D);
            }
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* RMSNorm (y = w * x / sqrt(mean(x^2) + eps), fp32) and SwiGLU (h = silu(g) * u): PyTorch runs each as a chain
   of elementwise operators forward and backward (about 15 passes over the activations for one RMSNorm), which
   made them a tenth of a small model's training step here; each is one pass below. Rows of C % VL == 0. */

int acik_rms_norm_forward(const float *x, const float *w, float *y, float *rstd, int64_t N, int64_t C, float eps,
                          int nthreads) {
#pragma omp parallel for num_threads(team(nthreads, N / 16 + 1)) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        vec ss = vzero();
        for (int64_t c = 0; c < C; c += VL) ss = vfma(vload(xi + c), vload(xi + c), ss);
        const float r = 1.f / sqrtf(hsum(ss) / (float)C + eps);
        rstd[i] = r;
        for (int64_t c = 0; c < C; c += VL) vstore(y + i * C + c, vmul(vload(w + c), vmul(vload(xi + c), vset1(r))));
    }
    return 0;
}

#define NORM_ROWS 64 /* dw is summed per chunk of rows, then over chunks in order: the same for any thread count */

int acik_rms_norm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *dw,
                           int64_t N, int64_t C, int nthreads) {
    const int64_t chunks = (N + NORM_ROWS - 1) / NORM_ROWS;
    float *part = calloc((size_t)(chunks * C), sizeof(float));
    if (!part) return -1;
#pragma omp parallel num_threads(team(nthreads, chunks))
    {
#pragma omp for schedule(static)
        for (int64_t ch = 0; ch < chunks; ch++) {
            float *pw = part + ch * C;
            for (int64_t i = ch * NORM_ROWS; i < N && i < (ch + 1) * NORM_ROWS; i++) {
                const float *xi = x + i * C, *gi = dy + i * C;
                const vec r = vset1(rstd[i]);
                vec dot = vzero();
                for (int64_t c = 0; c < C; c += VL) {
                    vec xh = vmul(vload(xi + c), r), g = vload(gi + c);
                    dot = vfma(vmul(g, vload(w + c)), xh, dot);
                    vstore(pw + c, vfma(g, xh, vload(pw + c)));
                }
                const vec mean = vset1(hsum(dot) / (float)C);
                for (int64_t c = 0; c < C; c += VL) {
                    vec xh = vmul(vload(xi + c), r), dxh = vmul(vload(gi + c), vload(w + c));
                    vstore(dx + i * C + c, vmul(r, vfnma(xh, mean, dxh)));
                }
            }
        }
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; c += VL) {
            vec s = vzero();
            for (int64_t ch = 0; ch < chunks; ch++) s = vadd(s, vload(part + ch * C + c));
            vstore(dw + c, s);
        }
    }
    free(part);
    return 0;
}

INLINE vec vsigmoid(vec g) { return vdiv(vset1(1.f), vadd(vset1(1.f), vexp(vsub(vzero(), g)))); }

INLINE void swiglu_vec(const void *g, const void *u, void *h, int64_t i, int bf16) {
    vec gv = loadx(g, i, bf16);
    storex(h, i, vmul(vmul(gv, vsigmoid(gv)), loadx(u, i, bf16)), bf16);
}

/* fp32 or bf16 (computed in fp32, rounded once). */
int acik_swiglu_forward(const void *g, const void *u, void *h, int64_t n, int bf16, int nthreads) {
    const int64_t nv = n / VL * VL;
#pragma omp parallel for num_threads(team(nthreads, n / 4096 + 1)) schedule(static)
    for (int64_t i = 0; i < nv; i += VL) swiglu_vec(g, u, h, i, bf16);
    if (nv < n) { /* the last n % VL elements, through a vector's worth of zeroed scratch */
        const int64_t es = bf16 ? 2 : 4, bytes = (n - nv) * es;
        float tg[VL] = {0}, tu[VL] = {0}, th[VL];
        memcpy(tg, (const char *)g + nv * es, bytes), memcpy(tu, (const char *)u + nv * es, bytes);
        swiglu_vec(tg, tu, th, 0, bf16);
        memcpy((char *)h + nv * es, th, bytes);
    }
    return 0;
}

/* d/dg silu(g) = s (1 + g (1 - s)) with s = sigmoid(g). */
INLINE void swiglu_back_vec(const void *g, const void *u, const void *dh, void *dg, void *du, int64_t i, int bf16) {
    vec gv = loadx(g, i, bf16), s = vsigmoid(gv), d = loadx(dh, i, bf16);
    vec ds = vmul(s, vfma(gv, vsub(vset1(1.f), s), vset1(1.f)));
    storex(du, i, vmul(d, vmul(gv, s)), bf16);
    storex(dg, i, vmul(vmul(d, loadx(u, i, bf16)), ds), bf16);
}

int acik_swiglu_backward(const void *g, const void *u, const void *dh, void *dg, void *du, int64_t n, int bf16,
                         int nthreads) {
    const int64_t nv = n / VL * VL;
#pragma omp parallel for num_threads(team(nthreads, n / 4096 + 1)) schedule(static)
    for (int64_t i = 0; i < nv; i += VL) swiglu_back_vec(g, u, dh, dg, du, i, bf16);
    if (nv < n) { /* as in the forward */
        const int64_t es = bf16 ? 2 : 4, bytes = (n - nv) * es;
        float tg[VL] = {0}, tu[VL] = {0}, td[VL] = {0}, tdg[VL], tdu[VL];
        memcpy(tg, (const char *)g + nv * es, bytes), memcpy(tu, (const char *)u + nv * es, bytes);
        memcpy(td, (const char *)dh + nv * es, bytes);
        swiglu_back_vec(tg, tu, td, tdg, tdu, 0, bf16);
        memcpy((char *)dg + nv * es, tdg, bytes), memcpy((char *)du + nv * es, tdu, bytes);
    }
    return 0;
}

/* Cross-entropy over rows of logits [N x V], fp32 or bf16 (computed in fp32), with z-loss: loss_i = lse_i -
   x_i[t_i] + z * lse_i^2, where lse_i = log sum_j exp(x_ij); rows whose target is `ignore` give 0. PyTorch
   spends about seven passes over the logits on this (log-softmax, gather, a zeroed gradient, the scatter and
   log-softmax's backward); here the forward reads each row twice (from cache the second time) and the backward
   reads it and writes its gradient once. */

static inline float scalar_at(const void *x, int64_t j, int bf16) {
    if (!bf16) return ((const float *)x)[j];
    uint32_t u = (uint32_t)((const uint16_t *)x)[j] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Elements from .. V - 1 of a row (fewer than VL) in a vector's worth of scratch, padded with -inf. */
static inline void tail_scratch(const void *x, int64_t from, int64_t V, int bf16, float *scratch) {
    for (int64_t j = 0; j < VL; j++) {
        if (bf16) ((uint16_t *)scratch)[j] = from + j < V ? ((const uint16_t *)x)[from + j] : 0xff80;
        else scratch[j] = from + j < V ? ((const float *)x)[from + j] : -INFINITY;
    }
}

int acik_cross_entropy_forward(const void *x, const int64_t *t, float *loss, float *lse, int64_t N, int64_t V,
                               int64_t ignore, float z, int bf16, int nthreads) {
    const int64_t nv = V / VL * VL, es = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(team(nthreads, N / 8 + 1)) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const char *row = (const char *)x + i * V * es;
        float tail[VL];
        tail_scratch(row, nv, V, bf16, tail);
        vec mx = loadx(tail, 0, bf16);
        for (int64_t j = 0; j < nv; j += VL) mx = vmax(mx, loadx(row, j, bf16));
        const float m = hmax(mx);
        const vec mv = vset1(m);
        vec sum = vexp(vsub(loadx(tail, 0, bf16), mv));
        for (int64_t j = 0; j < nv; j += VL) sum = vadd(sum, vexp(vsub(loadx(row, j, bf16), mv)));
        const float l = m + logf(hsum(sum));
        lse[i] = l;
        loss[i] = t[i] == ignore ? 0.f : l - scalar_at(row, t[i], bf16) + z * l * l;
    }
    return 0;
}

/* dx_ij = g_i * ((1 + 2 z lse_i) softmax_ij - [j == t_i]); 0 for ignored rows. */
int acik_cross_entropy_backward(const void *x, const int64_t *t, const float *lse, const float *g, void *dx, int64_t N,
                                int64_t V, int64_t ignore, float z, int bf16, int nthreads) {
    const int64_t nv = V / VL * VL, es = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(team(nthreads, N / 8 + 1)) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const char *row = (const char *)x + i * V * es;
        char *drow = (char *)dx + i * V * es;
        const int skip = t[i] == ignore;
        const vec c = vset1(skip ? 0.f : g[i] * (1.f + 2.f * z * lse[i])), lv = vset1(lse[i]);
        for (int64_t j = 0; j < nv; j += VL) storex(drow, j, vmul(c, vexp(vsub(loadx(row, j, bf16), lv))), bf16);
        if (nv < V) {
            float tail[VL], out[VL];
            tail_scratch(row, nv, V, bf16, tail);
            storex(out, 0, vmul(c, vexp(vsub(loadx(tail, 0, bf16), lv))), bf16);
            memcpy(drow + nv * es, out, (size_t)((V - nv) * es));
        }
        if (!skip) { /* minus g at the target, in the row's dtype */
            const int64_t j = t[i];
            float tmp[VL];
            tail_scratch(drow, j, j + 1, bf16, tmp);
            storex(tmp, 0, vsub(loadx(tmp, 0, bf16), vset1(g[i])), bf16);
            memcpy(drow + j * es, tmp, (size_t)es);
        }
    }
    return 0;
}
