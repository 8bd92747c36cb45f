/* Weight-only matmuls for x86-64 CPUs, for acik's Int8Linear, Int4Linear and the 4-bit table formats (NF4,
   MXFP4). This first part: int8, y = x @ (w * w_scale)^T + bias; int4 and the table kernel follow below.

   Why: a decode step reads every weight once for one row of activations, so its speed is how fast the
   weights stream from memory. PyTorch's `_weight_int8pack_mm` converts each int8 weight to float before
   multiplying and reads the weights at about a third of this machine's memory speed; it ran int8 decode
   barely faster than bf16 (docs/benchmarks.md "Quantization").

   How: each row of x is quantized to int16 with one scale (max |x| / 32767: a finer grid than bf16's
   8-bit mantissa for every value above 1/128 of the row's largest), and the weights are multiplied as
   integers: AVX-512 VNNI's vpdpwssd (or AVX2's vpmaddwd) takes 16 (8) outputs' pairs of int16 weights
   times one broadcast pair of activations, accumulating in int32. Partial sums go to float every
   CHUNK pairs, before 2 * CHUNK * 127 * 32767 could overflow int32.

   Layout: the weights are re-laid once (acik.kernels.cpu_matmul.block) in blocks of 16 outputs x 2
   inputs, 32 bytes: block (b, p) holds w[16b .. 16b+15, 2p .. 2p+1] at byte (b * K/2 + p) * 32, output-
   major inside. A tile of NB consecutive blocks reads NB sequential streams.

   Threads: the caller's OpenMP team (this library links the OpenMP runtime torch loaded, so one pool
   serves both); each thread takes a contiguous range of blocks. */

#include <immintrin.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define ISA 512
#elif defined(__AVX2__)
#define ISA 256
#else
#error "acik's CPU kernels need AVX2 or AVX-512 VNNI"
#endif

#define CHUNK 128
#define MAX_R 4
#define MAX_NB 8
#define INLINE static inline __attribute__((always_inline))

int acik_isa(void) { return ISA; }

/* How many threads to use for nb blocks, and this thread's contiguous share of them (inside the team). */
static inline int team_size(int nthreads, size_t nb) {
    if ((size_t)nthreads > nb) nthreads = (int)nb;
    return nthreads < 1 ? 1 : nthreads;
}

static inline void my_blocks(size_t nb, size_t *b0, size_t *b1) {
#ifdef _OPENMP
    size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
#else
    size_t t = 0, T = 1;
#endif
    *b0 = nb * t / T, *b1 = nb * (t + 1) / T;
}

/* Rows [r, 16 * NB outputs] of partial sums over k-pairs [p0, p1), added into part (fp32). */
INLINE void chunk(const int8_t *w, size_t KP, const int32_t *a, size_t lda, size_t p0, size_t p1, float *part,
                  const int R, const int NB) {
#if ISA == 512
    __m512i acc[MAX_R][MAX_NB];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) acc[r][j] = _mm512_setzero_si512();
    for (size_t p = p0; p < p1; p++) {
        __m512i wv[MAX_NB];
        for (int j = 0; j < NB; j++)
            wv[j] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + (j * KP + p) * 32)));
        for (int r = 0; r < R; r++) {
            __m512i av = _mm512_set1_epi32(a[r * lda + p]);
            for (int j = 0; j < NB; j++) acc[r][j] = _mm512_dpwssd_epi32(acc[r][j], wv[j], av);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) {
            float *out = part + (r * NB + j) * 16;
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), _mm512_cvtepi32_ps(acc[r][j])));
        }
#else
    __m256i acc[MAX_R][2 * MAX_NB]; /* [r][2j]: outputs 0-7 of block j, [r][2j+1]: outputs 8-15 */
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 2 * NB; j++) acc[r][j] = _mm256_setzero_si256();
    for (size_t p = p0; p < p1; p++) {
        __m256i wv[2 * MAX_NB];
        for (int j = 0; j < NB; j++) {
            const int8_t *src = w + (j * KP + p) * 32;
            wv[2 * j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)src));
            wv[2 * j + 1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + 16)));
        }
        for (int r = 0; r < R; r++) {
            __m256i av = _mm256_set1_epi32(a[r * lda + p]);
            for (int j = 0; j < 2 * NB; j++) acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(wv[j], av));
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 2 * NB; j++) {
            float *out = part + (r * NB) * 16 + j * 8;
            _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_cvtepi32_ps(acc[r][j])));
        }
#endif
}

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                 /* round to nearest even */
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A tile's epilogue, shared by the kernels: R rows of 16 * NB fp32 sums in `part`, times the row's activation
   scale, `unit` and (int8) each output's weight scale, plus the bias, stored in y's dtype. */
static inline void store_rows(const float *part, int R, int width, const float *wscale, const float *ascale,
                              float unit, const float *bias, void *y, size_t ldy, int bf16) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < width; n++) {
            float v = part[r * width + n] * (wscale ? wscale[n] : 1.f) * ascale[r] * unit + (bias ? bias[n] : 0.f);
            if (bf16) ((uint16_t *)y)[r * ldy + n] = to_bf16(v);
            else ((float *)y)[r * ldy + n] = v;
        }
}

/* R rows x NB blocks: sum over all of K, then scale, add bias and store in y's dtype. */
INLINE void tile(const int8_t *w, size_t KP, const int32_t *a, const float *ascale, const float *wscale,
                 const float *bias, void *y, size_t ldy, int bf16, const int R, const int NB) {
    float part[MAX_R * MAX_NB * 16] = {0};
    for (size_t p0 = 0; p0 < KP; p0 += CHUNK) chunk(w, KP, a, KP, p0, p0 + CHUNK < KP ? p0 + CHUNK : KP, part, R, NB);
    store_rows(part, R, NB * 16, wscale, ascale, 1.f, bias, y, ldy, bf16);
}

/* Each instance fixes R and NB at compile time, so the accumulators stay in registers. */
#define TILE(R, NB) TILE_(R, NB)
#define TILE_(R, NB)                                                                                         \
    static void tile_##R##_##NB(const int8_t *w, size_t KP, const int32_t *a, const float *as,              \
                                const float *ws, const float *b, void *y, size_t ldy, int bf16) {            \
        tile(w, KP, a, as, ws, b, y, ldy, bf16, R, NB);                                                      \
    }
typedef void (*tile_fn)(const int8_t *, size_t, const int32_t *, const float *, const float *, const float *,
                        void *, size_t, int);
#if ISA == 512
#define NB_ONE 8  /* one row: 8 blocks (128 outputs) a tile keep enough loads in flight */
#define NB_MANY 4 /* up to 4 rows: 4 x 4 accumulators */
#else
#define NB_ONE 2 /* AVX2 has 16 registers */
#define NB_MANY 1
#endif
TILE(1, NB_ONE) TILE(1, NB_MANY) TILE(2, NB_MANY) TILE(3, NB_MANY) TILE(4, NB_MANY)
#if NB_MANY != 1
TILE(1, 1) TILE(2, 1) TILE(3, 1) TILE(4, 1)
#endif
#define NAME(R, NB) tile_##R##_##NB
#define EXPAND(R, NB) NAME(R, NB)

/* One row of x (fp32 or bf16) to int16 in [-qmax, qmax] with one scale; a row holding inf or NaN gets scale
   NaN, so its outputs are NaN as a float matmul's would be. Vectorized: at decode sizes this runs once per
   matmul, and a scalar loop (lrintf is a libm call) cost 3-8 us of a 5-30 us call. */
#if ISA == 512
#define QL 16
typedef __m512 vf;
INLINE vf load_row(const void *x, int bf16, size_t k) {
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + k))), 16));
    return _mm512_loadu_ps((const float *)x + k);
}
INLINE void store_i16(int16_t *a, vf v) { _mm256_storeu_si256((__m256i *)a, _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(v))); }
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VABS(v) _mm512_abs_ps(v)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VSET(f) _mm512_set1_ps(f)
#else
#define QL 8
typedef __m256 vf;
INLINE vf load_row(const void *x, int bf16, size_t k) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + k))), 16));
    return _mm256_loadu_ps((const float *)x + k);
}
INLINE void store_i16(int16_t *a, vf v) {
    __m256i i = _mm256_cvtps_epi32(v);
    _mm_storeu_si128((__m128i *)a, _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1)));
}
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VABS(v) _mm256_andnot_ps(_mm256_set1_ps(-0.f), v)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VSET(f) _mm256_set1_ps(f)
#endif

static inline float row_at(const void *x, int bf16, size_t k) {
    return bf16 ? from_bf16(((const uint16_t *)x)[k]) : ((const float *)x)[k];
}

static void quantize_row(const void *x, int bf16, size_t K, int16_t *a, float *scale, float qmax) {
    vf vmax = VSET(0.f), vnan = VSET(0.f); /* vnan: the sum of v * 0, NaN once any v is inf or NaN */
    size_t k = 0;
    for (; k + QL <= K; k += QL) {
        vf v = load_row(x, bf16, k);
        vmax = VMAX(vmax, VABS(v));
        vnan = VADD(vnan, VMUL(v, VSET(0.f)));
    }
    float lanes[QL], nans[QL], amax = 0.f, nan = 0.f;
    memcpy(lanes, &vmax, sizeof lanes);
    memcpy(nans, &vnan, sizeof nans);
    for (int i = 0; i < QL; i++) amax = fmaxf(amax, lanes[i]), nan += nans[i];
    for (; k < K; k++) {
        float v = row_at(x, bf16, k);
        amax = fmaxf(amax, fabsf(v));
        nan += v * 0.f;
    }
    int finite = !isnan(nan);
    float s = amax > 0.f ? amax / qmax : 1.f, inv = finite ? 1.f / s : 0.f;
    k = 0;
    for (; k + QL <= K; k += QL) store_i16(a + k, VMUL(load_row(x, bf16, k), VSET(inv)));
    for (; k < K; k++) a[k] = (int16_t)lrintf(row_at(x, bf16, k) * inv);
    *scale = finite ? s : NAN;
}

/* y [M, N] = x [M, K] @ w^T: w blocked as above (N % 16 == 0, K even), w_scale and bias fp32 [N]
   (bias may be NULL), x and y both fp32 (bf16 = 0) or both bf16 (bf16 = 1), row-major and contiguous.
   Returns 0, or -1 when out of memory (y is then left unwritten). */
int acik_int8_matmul(const int8_t *w, const float *wscale, const float *bias, const void *x, void *y, int64_t M,
                     int64_t N, int64_t K, int bf16, int nthreads) {
    size_t KP = (size_t)K / 2, nb = (size_t)N / 16, esize = bf16 ? 2 : 4;
    char *buf = malloc((size_t)M * (K * sizeof(int16_t) + sizeof(float)) + 64); /* activations, row scales */
    if (!buf) return -1;
    int16_t *a = (int16_t *)buf;
    float *ascale = (float *)(a + M * K);
    for (int64_t m = 0; m < M; m++) quantize_row((const char *)x + m * K * esize, bf16, K, a + m * K, ascale + m, 32767.f);
    const int32_t *a32 = (const int32_t *)a; /* pairs of int16, one broadcast each */
    tile_fn many[MAX_R] = {EXPAND(1, NB_MANY), EXPAND(2, NB_MANY), EXPAND(3, NB_MANY), EXPAND(4, NB_MANY)};
    tile_fn single[MAX_R] = {NAME(1, 1), NAME(2, 1), NAME(3, 1), NAME(4, 1)};
    int group = M == 1 ? NB_ONE : NB_MANY;
    nthreads = team_size(nthreads, nb);
#pragma omp parallel num_threads(nthreads)
    {
        size_t b0, b1;
        my_blocks(nb, &b0, &b1);
        for (size_t b = b0; b < b1;) {
            int nbg = b1 - b >= (size_t)group ? group : 1;
            const int8_t *wb = w + b * KP * 32;
            for (int64_t m = 0; m < M; m += MAX_R) {
                int R = M - m < MAX_R ? (int)(M - m) : MAX_R;
                tile_fn fn = nbg == 1 ? single[R - 1] : (M == 1 ? EXPAND(1, NB_ONE) : many[R - 1]);
                fn(wb, KP, a32 + m * KP, ascale + m, wscale + b * 16, bias ? bias + b * 16 : NULL,
                   (char *)y + (m * N + b * 16) * esize, N, bf16);
            }
            b += nbg;
        }
    }
    free(buf);
    return 0;
}

/* ---- int4: y = x @ ((q - zero) * scale)^T + bias, asymmetric codes q in 0..15, groups of G inputs ----

   With a = x quantized to int16 per row (scale alpha):
       y[n] = alpha * sum_groups scale[n,g] * (sum_{k in g} q[n,k] a[k] - zero[n,g] * sum_{k in g} a[k]).
   The integer sums use vpdpbusd (unsigned 4-bit codes times signed bytes, 4 products per int32 lane;
   AVX2: vpmaddubsw then vpmaddwd), so each int16 activation is split into two signed bytes,
   a = 256 * hi + lo, and the code sums with hi and with lo are combined per group (no overflow: at most
   15 * 128 * 256 each).

   Layout (acik.kernels.cpu_matmul.block_int4): blocks of 16 outputs x 8 inputs, 64 bytes: byte 4j + t holds
   output j's code for input t in its low nibble and for input 4 + t in its high nibble, so masking the low
   nibbles gives each output's 4 codes for inputs 0-3 in one int32 lane, shifting gives inputs 4-7. Block
   (b, c) is at byte (b * K/8 + c) * 64. Scales and zero points: fp16 [N/16, K/G, 2, 16]. */

#if ISA == 512
#define NB4_ONE 4
#else
#define NB4_ONE 1
#endif

INLINE void tile4(const uint8_t *w, size_t KC, const uint16_t *so, size_t groups, size_t gc, const int32_t *alo,
                  const int32_t *ahi, size_t lda, const float *asum, const float *ascale, const float *bias, void *y,
                  size_t ldy, int bf16, const int R, const int NB) {
    /* KC: 8-input chunks in a row; gc: chunks per group; alo/ahi: the activations' low and high bytes, 4 a
       lane; asum [R][groups]: sum of a over each group. */
#if ISA == 512
    __m512 facc[MAX_R][NB4_ONE];
    const __m512i nib = _mm512_set1_epi8(0x0f);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) facc[r][j] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; g++) {
        __m512i lo[MAX_R][NB4_ONE], hi[MAX_R][NB4_ONE];
        for (int r = 0; r < R; r++)
            for (int j = 0; j < NB; j++) lo[r][j] = hi[r][j] = _mm512_setzero_si512();
        for (size_t c = g * gc; c < (g + 1) * gc; c++) {
            __m512i b[MAX_R][4];
            for (int r = 0; r < R; r++) {
                const int32_t *l = alo + r * lda + 2 * c, *h = ahi + r * lda + 2 * c;
                b[r][0] = _mm512_set1_epi32(l[0]), b[r][1] = _mm512_set1_epi32(l[1]);
                b[r][2] = _mm512_set1_epi32(h[0]), b[r][3] = _mm512_set1_epi32(h[1]);
            }
            for (int j = 0; j < NB; j++) {
                __m512i v = _mm512_loadu_si512((const void *)(w + (j * KC + c) * 64));
                __m512i q0 = _mm512_and_si512(v, nib), q1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                for (int r = 0; r < R; r++) {
                    lo[r][j] = _mm512_dpbusd_epi32(lo[r][j], q0, b[r][0]);
                    lo[r][j] = _mm512_dpbusd_epi32(lo[r][j], q1, b[r][1]);
                    hi[r][j] = _mm512_dpbusd_epi32(hi[r][j], q0, b[r][2]);
                    hi[r][j] = _mm512_dpbusd_epi32(hi[r][j], q1, b[r][3]);
                }
            }
        }
        for (int j = 0; j < NB; j++) {
            const uint16_t *s = so + ((size_t)j * groups + g) * 32;
            __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
            __m512 zr = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 16)));
            for (int r = 0; r < R; r++) {
                __m512i sum = _mm512_add_epi32(_mm512_slli_epi32(hi[r][j], 8), lo[r][j]);
                __m512 t = _mm512_fnmadd_ps(zr, _mm512_set1_ps(asum[r * groups + g]), _mm512_cvtepi32_ps(sum));
                facc[r][j] = _mm512_fmadd_ps(t, sc, facc[r][j]);
            }
        }
    }
    float part[MAX_R * NB4_ONE * 16];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) _mm512_storeu_ps(part + (r * NB + j) * 16, facc[r][j]);
#else
    /* AVX2: a block is two halves of 8 outputs (bytes 0-31 and 32-63); NB is 1. */
    __m256 facc[MAX_R][2];
    const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    for (int r = 0; r < R; r++) facc[r][0] = facc[r][1] = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; g++) {
        __m256i lo[MAX_R][2], hi[MAX_R][2];
        (void)KC; /* one block a tile: no stride between blocks */
        for (int r = 0; r < R; r++) lo[r][0] = lo[r][1] = hi[r][0] = hi[r][1] = _mm256_setzero_si256();
        for (size_t c = g * gc; c < (g + 1) * gc; c++) {
            for (int half = 0; half < 2; half++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 64 + half * 32));
                __m256i q0 = _mm256_and_si256(v, nib), q1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                for (int r = 0; r < R; r++) {
                    const int32_t *l = alo + r * lda + 2 * c, *h = ahi + r * lda + 2 * c;
                    __m256i t;
                    t = _mm256_add_epi16(_mm256_maddubs_epi16(q0, _mm256_set1_epi32(l[0])),
                                         _mm256_maddubs_epi16(q1, _mm256_set1_epi32(l[1])));
                    lo[r][half] = _mm256_add_epi32(lo[r][half], _mm256_madd_epi16(t, ones));
                    t = _mm256_add_epi16(_mm256_maddubs_epi16(q0, _mm256_set1_epi32(h[0])),
                                         _mm256_maddubs_epi16(q1, _mm256_set1_epi32(h[1])));
                    hi[r][half] = _mm256_add_epi32(hi[r][half], _mm256_madd_epi16(t, ones));
                }
            }
        }
        const uint16_t *s = so + g * 32;
        for (int half = 0; half < 2; half++) {
            __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + half * 8)));
            __m256 zr = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 16 + half * 8)));
            for (int r = 0; r < R; r++) {
                __m256i sum = _mm256_add_epi32(_mm256_slli_epi32(hi[r][half], 8), lo[r][half]);
                __m256 t = _mm256_fnmadd_ps(zr, _mm256_set1_ps(asum[r * groups + g]), _mm256_cvtepi32_ps(sum));
                facc[r][half] = _mm256_fmadd_ps(t, sc, facc[r][half]);
            }
        }
    }
    float part[MAX_R * 16];
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(part + r * 16, facc[r][0]);
        _mm256_storeu_ps(part + r * 16 + 8, facc[r][1]);
    }
#endif
    store_rows(part, R, NB * 16, NULL, ascale, 1.f, bias, y, ldy, bf16);
}
/* (maddubs adds two code x byte products into int16 and the two calls add again: at most 4 * 15 * 128 =
   7680, well inside int16, so its saturation never triggers.) */

#define TILE4(R, NB) TILE4_(R, NB)
#define TILE4_(R, NB)                                                                                        \
    static void tile4_##R##_##NB(const uint8_t *w, size_t KC, const uint16_t *so, size_t groups, size_t gc,     \
                                 const int32_t *alo, const int32_t *ahi, size_t lda, const float *asum,      \
                                 const float *as, const float *b, void *y, size_t ldy, int bf16) {           \
        tile4(w, KC, so, groups, gc, alo, ahi, lda, asum, as, b, y, ldy, bf16, R, NB);                       \
    }
typedef void (*tile4_fn)(const uint8_t *, size_t, const uint16_t *, size_t, size_t, const int32_t *, const int32_t *,
                         size_t, const float *, const float *, const float *, void *, size_t, int);
TILE4(1, 1) TILE4(2, 1) TILE4(3, 1) TILE4(4, 1)
#if NB4_ONE != 1
TILE4(1, NB4_ONE)
#endif
#define NAME4(R, NB) tile4_##R##_##NB
#define EXPAND4(R, NB) NAME4(R, NB)

/* y [M, N] = x [M, K] @ dequantized(w)^T (+ bias): w, so as laid out above (N % 16 == 0, K % group == 0,
   group % 8 == 0); x and y fp32 (bf16 = 0) or bf16 (bf16 = 1). Returns 0, or -1 when out of memory. */
int acik_int4_matmul(const uint8_t *w, const uint16_t *so, const float *bias, const void *x, void *y, int64_t M,
                     int64_t N, int64_t K, int64_t group, int bf16, int nthreads) {
    size_t KC = (size_t)K / 8, nb = (size_t)N / 16, groups = (size_t)(K / group), gc = (size_t)group / 8;
    size_t esize = bf16 ? 2 : 4;
    /* one allocation: the int16 activations, their low and high bytes, each group's sum, each row's scale */
    char *buf = malloc((size_t)M * (4 * K + (groups + 1) * sizeof(float)) + 64);
    if (!buf) return -1;
    int16_t *a = (int16_t *)buf;
    int8_t *lo = (int8_t *)(a + M * K), *hi = lo + M * K;
    float *asum = (float *)(hi + M * K), *ascale = asum + M * groups;
    for (int64_t m = 0; m < M; m++) {
        /* 32639 = 127 * 256 + 127: the largest |a| whose two bytes are both signed bytes */
        quantize_row((const char *)x + m * K * esize, bf16, K, a + m * K, ascale + m, 32639.f);
        for (size_t g = 0; g < groups; g++) {
            int32_t sum = 0;
            for (size_t k = g * group; k < (g + 1) * group; k++) {
                int v = a[m * K + k], h = (v + 128) >> 8;
                hi[m * K + k] = (int8_t)h;
                lo[m * K + k] = (int8_t)(v - 256 * h);
                sum += v;
            }
            asum[m * groups + g] = (float)sum;
        }
    }
    tile4_fn rows[MAX_R] = {tile4_1_1, tile4_2_1, tile4_3_1, tile4_4_1};
    nthreads = team_size(nthreads, nb);
    size_t lda = (size_t)K / 4; /* int32 lanes of 4 bytes per row */
#pragma omp parallel num_threads(nthreads)
    {
        size_t b0, b1;
        my_blocks(nb, &b0, &b1);
        for (size_t b = b0; b < b1;) {
            int nbg = (M == 1 && b1 - b >= (size_t)NB4_ONE) ? NB4_ONE : 1;
            const uint8_t *wb = w + b * KC * 64;
            const uint16_t *sb = so + b * groups * 32;
            for (int64_t m = 0; m < M; m += MAX_R) {
                int R = M - m < MAX_R ? (int)(M - m) : MAX_R;
                tile4_fn fn = nbg == 1 ? rows[R - 1] : EXPAND4(1, NB4_ONE);
                fn(wb, KC, sb, groups, gc, (const int32_t *)(lo + m * K), (const int32_t *)(hi + m * K), lda,
                   asum + m * groups, ascale + m, bias ? bias + b * 16 : NULL, (char *)y + (m * N + b * 16) * esize, N,
                   bf16);
            }
            b += nbg;
        }
    }
    free(buf);
    return 0;
}

/* ---- 4-bit codes through a table: y = x @ (level[q] * scale)^T + bias, for NF4 and MXFP4 (AVX-512 only) ----

   NF4's and MXFP4's 16 levels are not evenly spaced, so the int4 path above cannot take them. Here each code looks up an int16
   level (the caller's table: NF4's levels times 2047, rounded; their error, under 1/4094 of a block's absmax,
   is finer than bf16's rounding of the dequantized weight for every weight above 1/8 of it; MXFP4's times 2,
   exact) with vpermw, and
   vpdpwssd multiplies pairs of levels by pairs of int16 activations as the int8 path does. Partial sums go to
   float every 16 pairs (32 inputs), before 32 * 2047 * 32767 could overflow int32, times the group's scale.

   Layout (acik.kernels.cpu_matmul.block_table): blocks of 16 outputs x 2 inputs, 16 bytes: byte j holds output j's
   code for the pair's first input in its low nibble and the second in its high nibble; block (b, p) at byte
   (b * K/2 + p) * 16. Scales [N/16, K/group, 16], fp16 (NF4's absmax as stored) or E8M0 bytes (MXFP4's, 2^(e-127)),
   times `unit` at the end. */

#if ISA == 512
#define LUT_CHUNK 16

INLINE void tile_lut(const uint8_t *w, size_t KP, const void *sc, size_t groups, size_t gp, __m512i lut,
                     const int32_t *a, size_t lda, const float *ascale, const float *bias, void *y, size_t ldy,
                     int bf16, float unit, int e8m0, const int R, const int NB) {
    __m512 facc[MAX_R][NB_MANY];
    const __m512i lo = _mm512_set1_epi32(0x0f), hi = _mm512_set1_epi32(0xf0);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) facc[r][j] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; g++) {
        for (size_t p0 = g * gp; p0 < (g + 1) * gp; p0 += LUT_CHUNK) {
            size_t p1 = p0 + LUT_CHUNK < (g + 1) * gp ? p0 + LUT_CHUNK : (g + 1) * gp;
            __m512i acc[MAX_R][NB_MANY];
            for (int r = 0; r < R; r++)
                for (int j = 0; j < NB; j++) acc[r][j] = _mm512_setzero_si512();
            for (size_t p = p0; p < p1; p++) {
                __m512i av[MAX_R];
                for (int r = 0; r < R; r++) av[r] = _mm512_set1_epi32(a[r * lda + p]);
                for (int j = 0; j < NB; j++) {
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + (j * KP + p) * 16)));
                    /* int32 lane j: the first code in its low int16, the second in its high int16 */
                    __m512i idx = _mm512_or_si512(_mm512_and_si512(v, lo), _mm512_slli_epi32(_mm512_and_si512(v, hi), 12));
                    __m512i wv = _mm512_permutexvar_epi16(idx, lut);
                    for (int r = 0; r < R; r++) acc[r][j] = _mm512_dpwssd_epi32(acc[r][j], wv, av[r]);
                }
            }
            for (int j = 0; j < NB; j++) {
                size_t at = ((size_t)j * groups + g) * 16;
                __m512 s = e8m0 ? _mm512_castsi512_ps(_mm512_slli_epi32(
                                      _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)sc + at))), 23))
                                : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)sc + at)));
                for (int r = 0; r < R; r++) facc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), s, facc[r][j]);
            }
        }
    }
    float part[MAX_R * NB_MANY * 16];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NB; j++) _mm512_storeu_ps(part + (r * NB + j) * 16, facc[r][j]);
    store_rows(part, R, NB * 16, NULL, ascale, unit, bias, y, ldy, bf16);
}

#define TILEL(R, NB) TILEL_(R, NB)
#define TILEL_(R, NB)                                                                                        \
    static void tilel_##R##_##NB(const uint8_t *w, size_t KP, const void *sc, size_t groups, size_t gp,       \
                                 __m512i lut, const int32_t *a, size_t lda, const float *as, const float *b,  \
                                 void *y, size_t ldy, int bf16, float unit, int e8m0) {                       \
        tile_lut(w, KP, sc, groups, gp, lut, a, lda, as, b, y, ldy, bf16, unit, e8m0, R, NB);                 \
    }
typedef void (*tilel_fn)(const uint8_t *, size_t, const void *, size_t, size_t, __m512i, const int32_t *, size_t,
                         const float *, const float *, void *, size_t, int, float, int);
TILEL(1, 1) TILEL(2, 1) TILEL(3, 1) TILEL(4, 1) TILEL(1, NB_MANY)
#define NAMEL(R, NB) tilel_##R##_##NB
#define EXPANDL(R, NB) NAMEL(R, NB)
#endif

/* y [M, N] = x [M, K] @ (lut[code] * scale * unit)^T (+ bias): w and sc laid out as above (N % 16 == 0, group
   even, K % group == 0; sc E8M0 bytes when e8m0, else fp16), lut 32 int16 (entries 0-15 used, each |v| <= 2047).
   Returns 0, -1 when out of memory, -2 where this build has no table path (AVX2). */
int acik_lut4_matmul(const uint8_t *w, const void *sc, const float *bias, const void *x, void *y, int64_t M,
                     int64_t N, int64_t K, int64_t group, const int16_t *lut16, float unit, int e8m0, int bf16,
                     int nthreads) {
#if ISA == 512
    size_t KP = (size_t)K / 2, nb = (size_t)N / 16, groups = (size_t)(K / group), gp = (size_t)group / 2;
    size_t esize = bf16 ? 2 : 4;
    char *buf = malloc((size_t)M * (K * sizeof(int16_t) + sizeof(float)) + 64);
    if (!buf) return -1;
    int16_t *a = (int16_t *)buf;
    float *ascale = (float *)(a + M * K);
    for (int64_t m = 0; m < M; m++)
        quantize_row((const char *)x + m * K * esize, bf16, K, a + m * K, ascale + m, 32767.f);
    const __m512i lut = _mm512_loadu_si512((const void *)lut16);
    tilel_fn rows[MAX_R] = {tilel_1_1, tilel_2_1, tilel_3_1, tilel_4_1};
    nthreads = team_size(nthreads, nb);
#pragma omp parallel num_threads(nthreads)
    {
        size_t b0, b1;
        my_blocks(nb, &b0, &b1);
        for (size_t b = b0; b < b1;) {
            int nbg = (M == 1 && b1 - b >= (size_t)NB_MANY) ? NB_MANY : 1;
            for (int64_t m = 0; m < M; m += MAX_R) {
                int R = M - m < MAX_R ? (int)(M - m) : MAX_R;
                tilel_fn fn = nbg == 1 ? rows[R - 1] : EXPANDL(1, NB_MANY);
                fn(w + b * KP * 16, KP, (const char *)sc + b * groups * 16 * (e8m0 ? 1 : 2), groups, gp, lut,
                   (const int32_t *)(a + m * K), KP, ascale + m, bias ? bias + b * 16 : NULL,
                   (char *)y + (m * N + b * 16) * esize, N, bf16, unit, e8m0);
            }
            b += nbg;
        }
    }
    free(buf);
    return 0;
#else
    (void)w, (void)sc, (void)lut16, (void)bias, (void)x, (void)y, (void)M, (void)N, (void)K, (void)group, (void)unit,
        (void)e8m0, (void)bf16, (void)nthreads;
    return -2;
#endif
}

/* ---- int8 in blocks: y = x @ (w * scale[block])^T + bias, one fp16 scale per G consecutive inputs ----

   GGUF's Q8_0 (G = 32) and Int8Linear(group_size=G). The codes are read as stored, row-major int8 [N, K], and the
   scales as stored, fp16 [N, K/G]: no second layout, so a tied output head shares one copy with the token
   embedding and a Q8_0 tensor runs as the file holds it. Rows are contiguous, so a thread's range of outputs is
   one sequential stream.

   x is quantized to int16 per row as in the int8 kernel above (llama.cpp's Q8_0 dot rounds activations to int8
   per block of 32, 256 times coarser; this stays within 1e-4 of the float matmul). Each output's dot product
   runs along K 32 inputs a step: AVX-512 widens 32 codes to int16 (vpmovsxbw) and vpdpwssd multiplies them by 32
   activations into 16 int32 lanes (AVX2: two halves through vpmaddwd). At each group's end the lanes go to float
   times the group's scale (widened 16 at a time with vcvtph2ps into a small buffer, then broadcast from memory,
   which costs no extra instruction), and the lanes are added once per output. Four (AVX2 at one row: four;
   otherwise fewer) weight rows go together, so a tile runs independent accumulator chains and each activation
   load serves several rows. Int32 lanes cannot overflow for G <= 4096: 4 * (G / 32) * 127 * 32767 < 2^31.
   One sequential stream of codes is slow to come from memory (the hardware prefetcher runs too few lines ahead: a
   49152 x 576 head read at ~3 GB/s on one core here, against ~8 GB/s for the blocked int8 kernel's 8 streams), so
   the tile prefetches PF_BYTES ahead; that made the head 2-6x faster (1.4 ms, best of 40, one core). */

#define NRB 4   /* the most weight rows a tile takes */
#define SCB 16  /* scales widened at a time */
#ifndef PF_BYTES
#define PF_BYTES 16384 /* prefetch the codes this far ahead (prefetches never fault, past the end included) */
#endif
#if ISA == 512
typedef __m512i vib;
typedef __m512 vfb;
INLINE vib codes32(const int8_t *w) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)w)); }
INLINE vib dot32(vib acc, vib w, const int16_t *a) { return _mm512_dpwssd_epi32(acc, w, _mm512_loadu_si512((const void *)a)); }
INLINE vfb scale_add(vfb acc, vib sum, float s) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(s), acc); }
INLINE float hsum(vfb v) { return _mm512_reduce_add_ps(v); }
#define ZEROI() _mm512_setzero_si512()
#define ZEROF() _mm512_setzero_ps()
#define RB_ROWS(R) ((R) <= 2 ? 4 : 2)
#else
typedef struct { __m256i lo, hi; } vib; /* 32 int16 codes as two halves */
typedef __m256 vfb;
INLINE vib codes32(const int8_t *w) {
    vib v = {_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w)),
             _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)))};
    return v;
}
INLINE __m256i dot32i(__m256i acc, vib w, const int16_t *a) {
    __m256i t = _mm256_add_epi32(_mm256_madd_epi16(w.lo, _mm256_loadu_si256((const __m256i *)a)),
                                 _mm256_madd_epi16(w.hi, _mm256_loadu_si256((const __m256i *)(a + 16))));
    return _mm256_add_epi32(acc, t);
}
INLINE vfb scale_add(vfb acc, __m256i sum, float s) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(s), acc); }
INLINE float hsum(vfb v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
#define ZEROI() _mm256_setzero_si256()
#define ZEROF() _mm256_setzero_ps()
#define RB_ROWS(R) ((R) == 1 ? 4 : (R) == 2 ? 2 : 1)
#endif

/* The fp16 scales sc[i * groups + g0 .. + n) of NR rows, widened to fp32 into sf[i][0 .. n). */
INLINE void widen_scales(const uint16_t *sc, size_t groups, size_t g0, size_t n, float sf[NRB][SCB], const int NR) {
    for (int i = 0; i < NR; i++) {
        const uint16_t *s = sc + i * groups + g0;
        if (n == SCB) {
#if ISA == 512
            _mm512_storeu_ps(sf[i], _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s)));
#else
            _mm256_storeu_ps(sf[i], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s)));
            _mm256_storeu_ps(sf[i] + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 8))));
#endif
        } else {
            for (size_t g = 0; g < n; g++) sf[i][g] = _cvtsh_ss(s[g]);
        }
    }
}

/* NR weight rows (w, sc: row i at w + i * K, sc + i * groups) times R activation rows (a, stride K): outputs
   y[r * ldy + i], times the row scale, plus bias[i]. */
INLINE void tileb(const int8_t *w, const uint16_t *sc, size_t K, size_t G, const int16_t *a, const float *ascale,
                  const float *bias, void *y, size_t ldy, int bf16, const int R, const int NR) {
    const size_t groups = K / G, steps = G / 32;
    vfb facc[MAX_R][NRB];
    float sf[NRB][SCB];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < NR; i++) facc[r][i] = ZEROF();
    for (size_t g0 = 0; g0 < groups; g0 += SCB) {
        size_t n = groups - g0 < SCB ? groups - g0 : SCB;
        widen_scales(sc, groups, g0, n, sf, NR);
        for (size_t g = 0; g < n; g++) {
            const size_t k0 = (g0 + g) * G;
#if ISA == 512
            vib acc[MAX_R][NRB];
#else
            __m256i acc[MAX_R][NRB];
#endif
            for (int r = 0; r < R; r++)
                for (int i = 0; i < NR; i++) acc[r][i] = ZEROI();
            for (size_t s = 0; s < steps; s++) {
                const size_t k = k0 + 32 * s;
                for (int i = 0; i < NR; i++) {
                    _mm_prefetch((const char *)(w + i * K + k + PF_BYTES), _MM_HINT_T0);
                    vib wv = codes32(w + i * K + k);
                    for (int r = 0; r < R; r++)
#if ISA == 512
                        acc[r][i] = dot32(acc[r][i], wv, a + r * K + k);
#else
                        acc[r][i] = dot32i(acc[r][i], wv, a + r * K + k);
#endif
                }
            }
            for (int r = 0; r < R; r++)
                for (int i = 0; i < NR; i++) facc[r][i] = scale_add(facc[r][i], acc[r][i], sf[i][g]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < NR; i++) {
            float v = hsum(facc[r][i]) * ascale[r] + (bias ? bias[i] : 0.f);
            if (bf16) ((uint16_t *)y)[r * ldy + i] = to_bf16(v);
            else ((float *)y)[r * ldy + i] = v;
        }
}

#define TILEB(R, NR) TILEB_(R, NR)
#define TILEB_(R, NR)                                                                                          \
    static void tileb_##R##_##NR(const int8_t *w, const uint16_t *sc, size_t K, size_t G, const int16_t *a,     \
                                 const float *as, const float *b, void *y, size_t ldy, int bf16) {             \
        tileb(w, sc, K, G, a, as, b, y, ldy, bf16, R, NR);                                                     \
    }
typedef void (*tileb_fn)(const int8_t *, const uint16_t *, size_t, size_t, const int16_t *, const float *,
                         const float *, void *, size_t, int);
TILEB(1, 1) TILEB(2, 1) TILEB(3, 1) TILEB(4, 1)
TILEB(1, 4)
#if ISA == 512
TILEB(2, 4) TILEB(3, 2) TILEB(4, 2)
#else
TILEB(2, 2)
#endif

/* y [M, N] = x [M, K] @ (w * scale)^T (+ bias): w int8 [N, K] and sc fp16 [N, K/G] row-major (K % G == 0,
   G % 32 == 0, G <= 4096), bias fp32 [N] or NULL, x and y fp32 (bf16 = 0) or bf16 (bf16 = 1). Returns 0, or -1
   when out of memory. */
int acik_int8b_matmul(const int8_t *w, const uint16_t *sc, const float *bias, const void *x, void *y, int64_t M,
                      int64_t N, int64_t K, int64_t G, int bf16, int nthreads) {
    size_t esize = bf16 ? 2 : 4, groups = (size_t)(K / G);
    char *buf = malloc((size_t)M * (K * sizeof(int16_t) + sizeof(float)) + 64);
    if (!buf) return -1;
    int16_t *a = (int16_t *)buf;
    float *ascale = (float *)(a + M * K);
    for (int64_t m = 0; m < M; m++) quantize_row((const char *)x + m * K * esize, bf16, K, a + m * K, ascale + m, 32767.f);
#if ISA == 512
    tileb_fn wide[MAX_R] = {tileb_1_4, tileb_2_4, tileb_3_2, tileb_4_2};
#else
    tileb_fn wide[MAX_R] = {tileb_1_4, tileb_2_2, tileb_3_1, tileb_4_1};
#endif
    tileb_fn single[MAX_R] = {tileb_1_1, tileb_2_1, tileb_3_1, tileb_4_1};
    size_t units = ((size_t)N + NRB - 1) / NRB; /* threads take whole runs of NRB rows */
    nthreads = team_size(nthreads, units);
#pragma omp parallel num_threads(nthreads)
    {
        size_t u0, u1;
        my_blocks(units, &u0, &u1);
        size_t n0 = u0 * NRB, n1 = u1 * NRB < (size_t)N ? u1 * NRB : (size_t)N;
        for (size_t n = n0; n < n1; n += NRB) { /* NRB weight rows (in L1) against every row of x */
            size_t rows = n1 - n < NRB ? n1 - n : NRB;
            for (int64_t m = 0; m < M; m += MAX_R) {
                int R = M - m < MAX_R ? (int)(M - m) : MAX_R, nr = RB_ROWS(R);
                for (size_t i = 0; i < rows;) {
                    int step = rows - i >= (size_t)nr ? nr : 1;
                    tileb_fn fn = step == 1 ? single[R - 1] : wide[R - 1];
                    fn(w + (n + i) * K, sc + (n + i) * groups, K, G, a + m * K, ascale + m,
                       bias ? bias + n + i : NULL, (char *)y + (m * N + n + i) * esize, N, bf16);
                    i += step;
                }
            }
        }
    }
    free(buf);
    return 0;
}
