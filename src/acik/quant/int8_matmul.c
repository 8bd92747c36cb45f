/* int8 weight-only matmul for x86-64 CPUs: y = x @ (w * w_scale)^T + bias, for acik's Int8Linear.

   Why: a decode step reads every weight once for one row of activations, so its speed is how fast the
   weights stream from memory. PyTorch's `_weight_int8pack_mm` converts each int8 weight to float before
   multiplying and reads the weights at about a third of this machine's memory speed; it ran int8 decode
   barely faster than bf16 (docs/benchmarks.md "Quantization").

   How: each row of x is quantized to int16 with one scale (max |x| / 32767: a finer grid than bf16's
   8-bit mantissa for every value above 1/128 of the row's largest), and the weights are multiplied as
   integers: AVX-512 VNNI's vpdpwssd (or AVX2's vpmaddwd) takes 16 (8) outputs' pairs of int16 weights
   times one broadcast pair of activations, accumulating in int32. Partial sums go to float every
   CHUNK pairs, before 2 * CHUNK * 127 * 32767 could overflow int32.

   Layout: the weights are re-laid once (acik.quant.cpu_kernel.block) in blocks of 16 outputs x 2
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
#error "acik's int8 kernel needs AVX2 or AVX-512 VNNI"
#endif

#define CHUNK 128
#define MAX_R 4
#define MAX_NB 8
#define INLINE static inline __attribute__((always_inline))

int acik_int8_isa(void) { return ISA; }

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

/* R rows x NB blocks: sum over all of K, then scale, add bias and store in y's dtype. */
INLINE void tile(const int8_t *w, size_t KP, const int32_t *a, const float *ascale, const float *wscale,
                 const float *bias, void *y, size_t ldy, int bf16, const int R, const int NB) {
    float part[MAX_R * MAX_NB * 16] = {0};
    for (size_t p0 = 0; p0 < KP; p0 += CHUNK) chunk(w, KP, a, KP, p0, p0 + CHUNK < KP ? p0 + CHUNK : KP, part, R, NB);
    for (int r = 0; r < R; r++)
        for (int n = 0; n < NB * 16; n++) {
            float v = part[r * NB * 16 + n] * wscale[n] * ascale[r] + (bias ? bias[n] : 0.f);
            if (bf16) ((uint16_t *)y)[r * ldy + n] = to_bf16(v);
            else ((float *)y)[r * ldy + n] = v;
        }
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

/* One row of x (fp32 or bf16) to int16 with one scale; a row holding inf or NaN gets scale NaN, so its
   outputs are NaN as a float matmul's would be. */
static void quantize_row(const void *x, int bf16, size_t K, int16_t *a, float *scale) {
    float amax = 0.f;
    int finite = 1;
    for (size_t k = 0; k < K; k++) {
        float v = bf16 ? from_bf16(((const uint16_t *)x)[k]) : ((const float *)x)[k];
        finite &= isfinite(v);
        amax = fmaxf(amax, fabsf(v));
    }
    float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
    for (size_t k = 0; k < K; k++) {
        float v = bf16 ? from_bf16(((const uint16_t *)x)[k]) : ((const float *)x)[k];
        a[k] = finite ? (int16_t)lrintf(v * inv) : 0;
    }
    *scale = finite ? s : NAN;
}

/* y [M, N] = x [M, K] @ w^T: w blocked as above (N % 16 == 0, K even), w_scale and bias fp32 [N]
   (bias may be NULL), x and y both fp32 (bf16 = 0) or both bf16 (bf16 = 1), row-major and contiguous.
   Returns 0, or -1 when out of memory (y is then left unwritten). */
int acik_int8_matmul(const int8_t *w, const float *wscale, const float *bias, const void *x, void *y, int64_t M,
                     int64_t N, int64_t K, int bf16, int nthreads) {
    size_t KP = (size_t)K / 2, nb = (size_t)N / 16, esize = bf16 ? 2 : 4;
    int16_t *a = malloc((size_t)M * K * sizeof(int16_t) + 64);
    float *ascale = malloc((size_t)M * sizeof(float) + 64);
    if (!a || !ascale) {
        free(a);
        free(ascale);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) quantize_row((const char *)x + m * K * esize, bf16, K, a + m * K, ascale + m);
    const int32_t *a32 = (const int32_t *)a; /* pairs of int16, one broadcast each */
    tile_fn many[MAX_R] = {EXPAND(1, NB_MANY), EXPAND(2, NB_MANY), EXPAND(3, NB_MANY), EXPAND(4, NB_MANY)};
    tile_fn single[MAX_R] = {NAME(1, 1), NAME(2, 1), NAME(3, 1), NAME(4, 1)};
    int group = M == 1 ? NB_ONE : NB_MANY;
    if (nthreads < 1) nthreads = 1;
    if ((size_t)nthreads > nb) nthreads = (int)nb;
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        int t = 0, T = 1;
#endif
        size_t b0 = nb * t / T, b1 = nb * (t + 1) / T; /* this thread's blocks */
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
    free(a);
    free(ascale);
    return 0;
}
