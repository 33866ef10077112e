/* Matrix products for decoding on a CPU (gptlab.model.kernels), where a step multiplies a few
   rows (one per sequence) by every weight matrix and so runs at the speed memory delivers the
   weights. Compiled at first use with the system's C compiler; OpenMP threads are the runtime
   PyTorch itself loaded (the same libgomp), so there is one thread pool.

   gptlab_f32_matmul: y (M, N) = x (M, K) @ w (K, N) + bias (N), float32, w stored (in, out)
   as gptlab's Linear keeps it. Each thread takes a band of w's rows (a contiguous stretch of
   memory, streamed once) and sums its part of every output; the parts are added at the end.

   gptlab_bf16_matmul: the same product for a bfloat16 model: x, w, bias and y in bfloat16,
   each weight widened to float32 in registers (a bfloat16 is the top half of a float32: a
   16-bit shift), the sums in float32, y rounded to bfloat16 once at the end, as PyTorch's
   bfloat16 products do. A step reads half of float32's bytes and needs no bfloat16
   arithmetic, so it runs as fast on a CPU without native bfloat16 as on one with it.

   gptlab_decode_attention: one new position of causal self-attention over the KV cache
   (stores its key and value, then softmax(q k^T / sqrt(D)) v over every cached position), in
   one call instead of the half-dozen small operations PyTorch would run for it;
   gptlab_decode_attention_bf16 the same over a bfloat16 cache (float32 inside).

   gptlab_int8_matmul: y (M, N) = (x (M, K) @ w (N, K)^T) * scale (N) + bias (N), w int8, one
   row per output, widened to float32 in registers, so a step reads a quarter of float32's
   bytes. Four outputs are computed together, from one or two rows of x at a time: 4 or 8
   independent sums, so the loop is not held up by the latency of one running sum.

   gptlab_block_step: one new position through a whole GPT-2 block (both LayerNorms, the
   four products with their residuals, attention, the GELU) in one parallel region: the
   products above written as "team" functions that every thread of a region calls, with a
   barrier between stages, so a token pays one region start per block instead of one per
   operation, and one call from Python.

   Without AVX2 and FMA, plain loops compute the same sums. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define GPTLAB_AVX2 1
/* The int8 product's software prefetch of the weight rows 4 blocks ahead: 11.1 -> 8.5 ms for
   GPT-2 small's matrices read from memory on a 2-core AMD EPYC (the hardware prefetcher alone
   keeps up less well with four interleaved row streams). The float32 product gained nothing
   from the same (within the noise, 4 to 16 rows ahead). */
#define PREFETCH_BLOCKS 4
#include <immintrin.h>
static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
static inline __m256 widen(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
/* eight bfloat16 -> eight float32: each 16-bit pattern moved to the top of a 32-bit one */
static inline __m256 widen_bf16(const uint16_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
#endif

/* bfloat16 <-> float32 one at a time (any CPU): the top 16 bits, rounded to nearest even on
   the way down as PyTorch rounds (a NaN stays a quiet NaN) */
static inline float bf16_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t f32_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* ---- float32 or bfloat16, w (K, N) ---- */

/* Weights read by index from a float32 or a bfloat16 matrix. Every caller passes a constant
   `bf16`, and these are inlined, so each kind gets its own loop without a branch in it. */
#define INLINE static inline __attribute__((always_inline))
INLINE float w1(const void *w, long i, int bf16) {
    return bf16 ? bf16_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}
#ifdef GPTLAB_AVX2
INLINE __m256 w8(const void *w, long i, int bf16) {
    return bf16 ? widen_bf16((const uint16_t *)w + i) : _mm256_loadu_ps((const float *)w + i);
}
#endif

#ifdef GPTLAB_AVX2
/* One row of x times bfloat16 weights: each 32-byte load is 16 weights, taken apart into the 8
   of even columns (shifted up 16 bits) and the 8 of odd columns (the high halves as they are):
   one load and one operation per 8 weights instead of widening 8 at a time; and the rows
   BF16_AHEAD rows on are prefetched (9.4 -> 8.2 ms for GPT-2 small's matrices and head read
   from memory on a 2-core AMD EPYC; 8 and 16 rows ahead did no better). The sums are kept in
   that order: within each
   16 columns from 0, part[g + j] holds column g + 2j and part[g + 8 + j] column g + 2j + 1
   (`unshuffled` reads them back); columns past the last whole 16 stay in place. */
#define ROW_SHUFFLED(bf16, M) ((bf16) && (M) == 1)
#define BF16_AHEAD 4
static inline long unshuffled(long n, long N16) {
    return n >= N16 ? n : (n & ~15L) + (n & 15) / 2 + 8 * (n & 1);
}
static void bf16_row_band(const float *x, const uint16_t *w, float *part, long N, long k0,
                          long k1, long c0, long c1) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
#define EVEN(v) _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
#define ODD(v) _mm256_castsi256_ps(_mm256_and_si256(v, high))
#define LOAD16(p) _mm256_loadu_si256((const __m256i *)(p))
    long c16 = c0 + (c1 - c0) / 16 * 16, k = k0;
    for (; k + 4 <= k1; k += 4) {  /* four rows of w: 4 independent sums of 4 terms */
        const uint16_t *r0 = w + k * N, *r1 = r0 + N, *r2 = r1 + N, *r3 = r2 + N;
        const float *xa = x + k;
        __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
               a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3);
        const char *ahead = (const char *)(r0 + BF16_AHEAD * N);
        int fetch = k + BF16_AHEAD + 4 <= k1;
        for (long n = c0; n < c16; n += 16) {
            if (fetch && (n & 31) == 0) {
                const char *a = ahead + 2 * n;
                _mm_prefetch(a, _MM_HINT_T0);
                _mm_prefetch(a + 2 * N, _MM_HINT_T0);
                _mm_prefetch(a + 4 * N, _MM_HINT_T0);
                _mm_prefetch(a + 6 * N, _MM_HINT_T0);
            }
            __m256i v0 = LOAD16(r0 + n), v1 = LOAD16(r1 + n), v2 = LOAD16(r2 + n),
                    v3 = LOAD16(r3 + n);
            __m256 e = _mm256_fmadd_ps(a0, EVEN(v0), _mm256_loadu_ps(part + n));
            __m256 o = _mm256_fmadd_ps(a0, ODD(v0), _mm256_loadu_ps(part + n + 8));
            __m256 f = _mm256_mul_ps(a1, EVEN(v1)), q = _mm256_mul_ps(a1, ODD(v1));
            e = _mm256_fmadd_ps(a2, EVEN(v2), e); o = _mm256_fmadd_ps(a2, ODD(v2), o);
            f = _mm256_fmadd_ps(a3, EVEN(v3), f); q = _mm256_fmadd_ps(a3, ODD(v3), q);
            _mm256_storeu_ps(part + n, _mm256_add_ps(e, f));
            _mm256_storeu_ps(part + n + 8, _mm256_add_ps(o, q));
        }
        for (long n = c16; n < c1; n++)
            part[n] += xa[0] * bf16_f32(r0[n]) + xa[1] * bf16_f32(r1[n]) +
                       xa[2] * bf16_f32(r2[n]) + xa[3] * bf16_f32(r3[n]);
    }
    for (; k < k1; k++) {  /* the rows left */
        const uint16_t *r0 = w + k * N;
        __m256 a0 = _mm256_broadcast_ss(x + k);
        for (long n = c0; n < c16; n += 16) {
            __m256i v0 = LOAD16(r0 + n);
            _mm256_storeu_ps(part + n, _mm256_fmadd_ps(a0, EVEN(v0), _mm256_loadu_ps(part + n)));
            _mm256_storeu_ps(part + n + 8,
                             _mm256_fmadd_ps(a0, ODD(v0), _mm256_loadu_ps(part + n + 8)));
        }
        for (long n = c16; n < c1; n++) part[n] += x[k] * bf16_f32(r0[n]);
    }
#undef EVEN
#undef ODD
#undef LOAD16
}
#else
#define ROW_SHUFFLED(bf16, M) 0
static inline long unshuffled(long n, long N16) { (void)N16; return n; }
#endif

/* part[m, c0:c1] += x[m, k0:k1] @ w[k0:k1, c0:c1] for every row m. Four rows of w at a time,
   and two rows of x share each load of them; for one row of x, eight rows of w at a time
   (1.1x faster than four over GPT-2 small's matrices read from memory). */
INLINE void band(const float *x, const void *w, int bf16, float *part, long M, long K, long N,
                 long k0, long k1, long c0, long c1) {
    long k = k0;
#ifdef GPTLAB_AVX2
    if (ROW_SHUFFLED(bf16, M)) {
        bf16_row_band(x, (const uint16_t *)w, part, N, k0, k1, c0, c1);
        return;
    }
    long c8 = c0 + (c1 - c0) / 8 * 8;
    for (; M == 1 && k + 8 <= k1; k += 8) {
        const long r = k * N;
        const float *xa = x + k;
        __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
               a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3),
               a4 = _mm256_broadcast_ss(xa + 4), a5 = _mm256_broadcast_ss(xa + 5),
               a6 = _mm256_broadcast_ss(xa + 6), a7 = _mm256_broadcast_ss(xa + 7);
        for (long n = c0; n < c8; n += 8) {  /* two running sums, added at the store */
            __m256 s = _mm256_fmadd_ps(a0, w8(w, r + n, bf16), _mm256_loadu_ps(part + n));
            __m256 u = _mm256_mul_ps(a1, w8(w, r + N + n, bf16));
            s = _mm256_fmadd_ps(a2, w8(w, r + 2 * N + n, bf16), s);
            u = _mm256_fmadd_ps(a3, w8(w, r + 3 * N + n, bf16), u);
            s = _mm256_fmadd_ps(a4, w8(w, r + 4 * N + n, bf16), s);
            u = _mm256_fmadd_ps(a5, w8(w, r + 5 * N + n, bf16), u);
            s = _mm256_fmadd_ps(a6, w8(w, r + 6 * N + n, bf16), s);
            u = _mm256_fmadd_ps(a7, w8(w, r + 7 * N + n, bf16), u);
            _mm256_storeu_ps(part + n, _mm256_add_ps(s, u));
        }
        for (long n = c8; n < c1; n++)
            for (long i = 0; i < 8; i++) part[n] += xa[i] * w1(w, r + i * N + n, bf16);
    }
    for (; k + 4 <= k1; k += 4) {
        const long r0 = k * N, r1 = r0 + N, r2 = r1 + N, r3 = r2 + N;
        long m = 0;
        for (; m + 2 <= M; m += 2) {
            const float *xa = x + m * K + k, *xb = xa + K;
            __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
                   a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3);
            __m256 b0 = _mm256_broadcast_ss(xb), b1 = _mm256_broadcast_ss(xb + 1),
                   b2 = _mm256_broadcast_ss(xb + 2), b3 = _mm256_broadcast_ss(xb + 3);
            float *pa = part + m * N, *pb = pa + N;
            for (long n = c0; n < c8; n += 8) {
                __m256 v0 = w8(w, r0 + n, bf16), v1 = w8(w, r1 + n, bf16),
                       v2 = w8(w, r2 + n, bf16), v3 = w8(w, r3 + n, bf16);
                __m256 s = _mm256_fmadd_ps(a0, v0, _mm256_loadu_ps(pa + n));
                __m256 u = _mm256_fmadd_ps(b0, v0, _mm256_loadu_ps(pb + n));
                s = _mm256_fmadd_ps(a1, v1, s); u = _mm256_fmadd_ps(b1, v1, u);
                s = _mm256_fmadd_ps(a2, v2, s); u = _mm256_fmadd_ps(b2, v2, u);
                s = _mm256_fmadd_ps(a3, v3, s); u = _mm256_fmadd_ps(b3, v3, u);
                _mm256_storeu_ps(pa + n, s);
                _mm256_storeu_ps(pb + n, u);
            }
            for (long n = c8; n < c1; n++) {
                float v0 = w1(w, r0 + n, bf16), v1 = w1(w, r1 + n, bf16),
                      v2 = w1(w, r2 + n, bf16), v3 = w1(w, r3 + n, bf16);
                pa[n] += xa[0] * v0 + xa[1] * v1 + xa[2] * v2 + xa[3] * v3;
                pb[n] += xb[0] * v0 + xb[1] * v1 + xb[2] * v2 + xb[3] * v3;
            }
        }
        for (; m < M; m++) {  /* one row of x: two running sums per 8 outputs */
            const float *xa = x + m * K + k;
            __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
                   a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3);
            float *pa = part + m * N;
            for (long n = c0; n < c8; n += 8) {
                __m256 s = _mm256_fmadd_ps(a0, w8(w, r0 + n, bf16), _mm256_loadu_ps(pa + n));
                __m256 u = _mm256_mul_ps(a1, w8(w, r1 + n, bf16));
                s = _mm256_fmadd_ps(a2, w8(w, r2 + n, bf16), s);
                u = _mm256_fmadd_ps(a3, w8(w, r3 + n, bf16), u);
                _mm256_storeu_ps(pa + n, _mm256_add_ps(s, u));
            }
            for (long n = c8; n < c1; n++)
                pa[n] += xa[0] * w1(w, r0 + n, bf16) + xa[1] * w1(w, r1 + n, bf16) +
                         xa[2] * w1(w, r2 + n, bf16) + xa[3] * w1(w, r3 + n, bf16);
        }
    }
#endif
    for (; k < k1; k++)  /* the rows left (all of them without AVX2) */
        for (long m = 0; m < M; m++)
            for (long n = c0; n < c1; n++) part[m * N + n] += x[m * K + k] * w1(w, k * N + n, bf16);
}

/* Each thread's partial sums stay in its first-level cache: columns in chunks of this many
   bytes of M rows (32 KiB: 1.2x faster than 8 KiB for GPT-2 small's matrices at 8 rows). */
#define F32_CHUNK_BYTES 32768

/* The share [i0, i1) of n items for thread t of T, cut at multiples of `align`. */
static inline void share(long n, long t, long T, long align, long *i0, long *i1) {
    *i0 = n * t / T / align * align;
    *i1 = t == T - 1 ? n : n * (t + 1) / T / align * align;
}

static inline float round_bf16(float s) { return bf16_f32(f32_bf16(s)); }

/* Called by every thread of a parallel region (T of them, this one t; barriers inside):
   y (M, N) = x (M, K) @ w (K, N) + bias (+ add (M, N): a residual added in the same pass).
   x float32; w and bias float32 (bf16 = 0) or bfloat16 (bf16 = 1: the product rounded to
   bfloat16 before add is added, and the result rounded again, as PyTorch's two bfloat16
   operations round). add and y are float32 (io16 = 0; under bf16 holding bfloat16 values) or
   bfloat16 (io16 = 1). work: the other threads' partial sums, (threads - 1) * M * N floats,
   and under bf16 thread 0's too (M * N more: the shuffled sums cannot live in y). y is
   complete for every thread once the region's next barrier is passed. */
INLINE void matmul_team(const float *x, const void *w, const void *bias, const void *add,
                        void *y, float *work, long M, long K, long N, long threads, long T,
                        long t, int bf16, int io16) {
    /* thread t: rows [k0, k1) of w, whole groups of four where it can */
    long k0, k1;
    share(K, t, T, 4, &k0, &k1);
    float *sums = bf16 ? work + (threads - 1) * M * N : (float *)y;  /* thread 0's */
    float *part = t == 0 ? sums : work + (t - 1) * M * N;
    for (long i = 0; i < M * N; i++) part[i] = 0.0f;
    long chunk = F32_CHUNK_BYTES / 4 / M / 16 * 16;  /* (whole 16s: see bf16_row_band) */
    if (chunk < 64) chunk = 64;
    for (long c0 = 0; c0 < N; c0 += chunk)
        band(x, w, bf16, part, M, K, N, k0, k1, c0, c0 + chunk < N ? c0 + chunk : N);
    #pragma omp barrier
    /* the parts added, each thread a share of the columns */
    long n0 = N * t / T, n1 = N * (t + 1) / T, shuffled = ROW_SHUFFLED(bf16, M);
    for (long m = 0; m < M; m++)
        for (long n = n0; n < n1; n++) {
            long i = shuffled ? unshuffled(n, N / 16 * 16) : m * N + n;
            float s = sums[i];
            for (long u = 1; u < T; u++) s += work[(u - 1) * M * N + i];
            if (bias) s += w1(bias, n, bf16);
            if (add) s = (bf16 ? round_bf16(s) : s) + w1(add, m * N + n, io16);
            if (io16)
                ((uint16_t *)y)[m * N + n] = f32_bf16(s);
            else
                ((float *)y)[m * N + n] = bf16 ? round_bf16(s) : s;
        }
}

/* Thread this one's number and the team's size (1 and 0 without OpenMP). */
#ifdef _OPENMP
#define TEAM long T = omp_get_num_threads(), t = omp_get_thread_num()
#else
#define TEAM long T = 1, t = 0
#endif

/* y (M, N) = x (M, K) @ w (K, N) + bias (+ add), all float32 */
void gptlab_f32_matmul(const float *x, const float *w, const float *bias, const float *add,
                       float *y, float *work, long M, long K, long N, int threads) {
    if (M <= 0 || N <= 0) return;
    #pragma omp parallel num_threads(threads)
    {
        TEAM;
        matmul_team(x, w, bias, add, y, work, M, K, N, threads, T, t, 0, 0);
    }
}

/* the same, x, w, bias, add and y bfloat16; work: threads * M * N + M * K floats (the last
   M * K: x widened) */
void gptlab_bf16_matmul(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                        const uint16_t *add, uint16_t *y, float *work, long M, long K, long N,
                        int threads) {
    if (M <= 0 || N <= 0) return;
    float *xf = work + threads * M * N;
    for (long i = 0; i < M * K; i++) xf[i] = bf16_f32(x[i]);
    #pragma omp parallel num_threads(threads)
    {
        TEAM;
        matmul_team(xf, w, bias, add, y, work, M, K, N, threads, T, t, 1, 1);
    }
}

/* ---- attention for one new position ---- */

/* a (float32) . b (float32 or bfloat16), n long */
INLINE float dot(const float *a, const void *b, long n, int bf16) {
    long i = 0;
    float s = 0.0f;
#ifdef GPTLAB_AVX2
    __m256 u = _mm256_setzero_ps(), v = u;
    for (; i + 16 <= n; i += 16) {
        u = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), w8(b, i, bf16), u);
        v = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), w8(b, i + 8, bf16), v);
    }
    s = hsum(_mm256_add_ps(u, v));
#endif
    for (; i < n; i++) s += a[i] * w1(b, i, bf16);
    return s;
}

/* The largest head size whose query and output fit on the stack (GPT-2's is 64). */
#define MAX_HEAD 1024

/* n values from src (float32, or bfloat16 where src16) to dst (float32, or bfloat16 where
   dst16; a float32 holding a bfloat16 value goes down exactly) */
INLINE void convert(void *dst, int dst16, const void *src, int src16, long n) {
    if (dst16 == src16) {
        memcpy(dst, src, n * (dst16 ? 2 : 4));
        return;
    }
    for (long i = 0; i < n; i++) {
        float v = w1(src, i, src16);
        if (dst16)
            ((uint16_t *)dst)[i] = f32_bf16(v);
        else
            ((float *)dst)[i] = v;
    }
}

/* Called by every thread of a parallel region (a worksharing loop over the B * H heads, which
   ends in a barrier). qkv (B, 3 * H * D): this position's query, key and value (c_attn's
   output, heads side by side), float32 (q16 = 0) or bfloat16 (q16 = 1). kc, vc (B, H, L, D):
   the cache, float32 (bf16 = 0) or bfloat16 (bf16 = 1), positions [0, pos) filled; this
   position's key and value are written at pos. mask (B, pos + 1), 1 = may attend, or NULL for
   all. y (B, H * D): each head's softmax-weighted sum of the values, heads side by side,
   float32 (y16 = 0; rounded to bfloat16 values under bf16) or bfloat16 (y16 = 1). The
   arithmetic is float32. */
INLINE void attention_team(const void *qkv, int q16, void *kc, void *vc, const uint8_t *mask,
                           void *y, int y16, long B, long H, long D, long L, long pos,
                           int bf16) {
    long C = H * D, n = pos + 1, size = bf16 ? 2 : 4, qsize = q16 ? 2 : 4;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp for schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        long b = bh / H, h = bh % H;
        const char *qh = (const char *)qkv + (b * 3 * C + h * D) * qsize;
        char *k = (char *)kc + bh * L * D * size, *v = (char *)vc + bh * L * D * size;
        const uint8_t *keep = mask ? mask + b * n : NULL;
        long seen = n;
        convert(k + pos * D * size, bf16, qh + C * qsize, q16, D);  /* this key and value */
        convert(v + pos * D * size, bf16, qh + 2 * C * qsize, q16, D);
        float q[MAX_HEAD], out[MAX_HEAD];
        for (long d = 0; d < D; d++) {
            q[d] = w1(qh, d, q16);
            out[d] = 0.0f;
        }
        float local[4096], *scores = n <= 4096 ? local : malloc(n * sizeof(float));
        if (!scores) {  /* out of memory: NaN, for the caller to see */
            for (long d = 0; d < D; d++) out[d] = NAN;
            seen = 0;
        }
        float top = -INFINITY;
        for (long t = 0; t < seen; t++) {
            float s = -INFINITY;
            if (!keep || keep[t]) s = dot(q, k + t * D * size, D, bf16) * scale;
            scores[t] = s;
            if (s > top) top = s;
        }
        if (top > -INFINITY) {  /* (nothing to attend to: zeros) */
            float total = 0.0f;
            for (long t = 0; t < seen; t++) {
                float p = scores[t] == -INFINITY ? 0.0f : expf(scores[t] - top);
                scores[t] = p;
                total += p;
            }
            for (long t = 0; t < seen; t++) {
                float p = scores[t] / total;
                if (p == 0.0f) continue;
                const char *vt = v + t * D * size;
                for (long d = 0; d < D; d++) out[d] += p * w1(vt, d, bf16);
            }
        }
        if (scores && scores != local) free(scores);
        for (long d = 0; d < D; d++) {
            long i = b * C + h * D + d;
            if (y16)
                ((uint16_t *)y)[i] = f32_bf16(out[d]);
            else
                ((float *)y)[i] = bf16 ? round_bf16(out[d]) : out[d];
        }
    }
}

void gptlab_decode_attention(const float *qkv, float *kc, float *vc, const uint8_t *mask,
                             float *y, long B, long H, long D, long L, long pos, int threads) {
    if (pos < 0 || pos >= L || D > MAX_HEAD) return;
    #pragma omp parallel num_threads(threads)
    attention_team(qkv, 0, kc, vc, mask, y, 0, B, H, D, L, pos, 0);
}

void gptlab_decode_attention_bf16(const uint16_t *qkv, uint16_t *kc, uint16_t *vc,
                                  const uint8_t *mask, uint16_t *y, long B, long H, long D,
                                  long L, long pos, int threads) {
    if (pos < 0 || pos >= L || D > MAX_HEAD) return;
    #pragma omp parallel num_threads(threads)
    attention_team(qkv, 1, kc, vc, mask, y, 1, B, H, D, L, pos, 1);
}

/* ---- int8, w (N, K) ---- */

/* y[m, n] = (x[m] . w[n]) * scale[n] + bias[n] (+ add[m, n]) for the outputs [n0, n1) and
   every row m (n0 a multiple of 4): a thread that owns outputs finishes them, so no other
   thread's work is waited for. The sum over the K % 8 last inputs is added after the vector
   part, the scale and bias after the sum, the residual last. */
static void int8_outputs(const float *x, const int8_t *w, const float *scale,
                         const float *bias, const float *add, float *y, long M, long K, long N,
                         long n0, long n1) {
    long n = n0, K8 = 0;
#ifdef GPTLAB_AVX2
    K8 = K - K % 8;
    for (; n + 4 <= n1; n += 4) {
        const int8_t *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        if (n + PREFETCH_BLOCKS * 4 + 4 <= n1) {  /* the rows a few blocks ahead, into cache */
            const char *ahead = (const char *)(w0 + PREFETCH_BLOCKS * 4 * K);
            for (long b = 0; b < 4 * K; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
        }
        long m = 0;
        for (; m + 2 <= M; m += 2) {  /* two rows of x, four outputs: 8 independent sums */
            const float *xa = x + m * K, *xb = xa + K;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (long k = 0; k < K8; k += 8) {
                __m256 v0 = widen(w0 + k), v1 = widen(w1 + k), v2 = widen(w2 + k),
                       v3 = widen(w3 + k);
                __m256 u = _mm256_loadu_ps(xa + k), t = _mm256_loadu_ps(xb + k);
                a0 = _mm256_fmadd_ps(v0, u, a0); a1 = _mm256_fmadd_ps(v1, u, a1);
                a2 = _mm256_fmadd_ps(v2, u, a2); a3 = _mm256_fmadd_ps(v3, u, a3);
                b0 = _mm256_fmadd_ps(v0, t, b0); b1 = _mm256_fmadd_ps(v1, t, b1);
                b2 = _mm256_fmadd_ps(v2, t, b2); b3 = _mm256_fmadd_ps(v3, t, b3);
            }
            float *ya = y + m * N + n, *yb = ya + N;
            ya[0] = hsum(a0); ya[1] = hsum(a1); ya[2] = hsum(a2); ya[3] = hsum(a3);
            yb[0] = hsum(b0); yb[1] = hsum(b1); yb[2] = hsum(b2); yb[3] = hsum(b3);
        }
        for (; m < M; m++) {  /* one row left: four independent sums */
            const float *xa = x + m * K;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (long k = 0; k < K8; k += 8) {
                __m256 u = _mm256_loadu_ps(xa + k);
                a0 = _mm256_fmadd_ps(widen(w0 + k), u, a0);
                a1 = _mm256_fmadd_ps(widen(w1 + k), u, a1);
                a2 = _mm256_fmadd_ps(widen(w2 + k), u, a2);
                a3 = _mm256_fmadd_ps(widen(w3 + k), u, a3);
            }
            float *ya = y + m * N + n;
            ya[0] = hsum(a0); ya[1] = hsum(a1); ya[2] = hsum(a2); ya[3] = hsum(a3);
        }
    }
#endif
    for (long m = 0; m < M; m++)  /* outputs not in a whole 4 summed whole, in plain C */
        for (long j = n; j < n1; j++) {
            float s = 0.0f;
            for (long k = 0; k < K; k++) s += (float)w[j * K + k] * x[m * K + k];
            y[m * N + j] = s;
        }
    for (long m = 0; m < M; m++)
        for (long j = n0; j < n1; j++) {
            float s = y[m * N + j];
            if (j < n && K8 < K) {  /* the K % 8 tail of the vector sums */
                float tail = 0.0f;
                for (long k = K8; k < K; k++) tail += (float)w[j * K + k] * x[m * K + k];
                s += tail;
            }
            s = s * scale[j] + (bias ? bias[j] : 0.0f);
            y[m * N + j] = add ? s + add[m * N + j] : s;
        }
}

/* Called by every thread of a parallel region: y (M, N) = (x (M, K) @ w (N, K)^T) * scale +
   bias (+ add), each thread a share of the outputs; y complete after the next barrier. */
static inline void int8_team(const float *x, const int8_t *w, const float *scale,
                             const float *bias, const float *add, float *y, long M, long K,
                             long N, long T, long t) {
    long n0, n1;
    share(N, t, T, 4, &n0, &n1);
    int8_outputs(x, w, scale, bias, add, y, M, K, N, n0, n1);
}

void gptlab_int8_matmul(const float *x, const int8_t *w, const float *scale, const float *bias,
                        float *y, long M, long K, long N) {
    #pragma omp parallel
    {
        TEAM;
        int8_team(x, w, scale, bias, NULL, y, M, K, N, T, t);
    }
}

/* ---- GELU, tanh form (GPT-2's) ----

   y = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x * sigmoid(2u) (the
   same function: 1 + tanh u = 2 sigmoid(2u)) with one exp per element. PyTorch's CPU tanh is
   slow (a (12, 64, 512) forward and backward: 1.6 ms against 0.65 ms for the erf GELU on a
   2-core AMD EPYC), and the MLP's GELU was then ~12% of a small model's training step.
   dy/dx = s + x s (1 - s) 2u', s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2). */

#define GELU_K 0.7978845608028654f  /* sqrt(2/pi) */
#define GELU_A 0.044715f
#define GELU_ZERO -10.0f  /* at or below: y and dy/dx are 0 (|y| < 2e-37; exp(-2u) overflows) */
#define GELU_ONE 10.0f    /* at or above: dy/dx is 1 (exp(-2u), held at exp(-87), times x^3) */

#ifdef GPTLAB_AVX2
/* exp(x) for float32: x = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor polynomial to r^7
   (relative error ~1e-8, below float32's rounding), times 2^n built in the exponent bits */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* ln2, high part */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      /* and the rest */
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
/* exp(-2u) for eight x */
static inline __m256 gelu_e8(__m256 x) {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 u2 = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(2.0f * GELU_K)),
                              _mm256_fmadd_ps(x2, _mm256_set1_ps(GELU_A), _mm256_set1_ps(1.0f)));
    return exp8(_mm256_sub_ps(_mm256_setzero_ps(), u2));
}
#endif

static inline float gelu_e1(float x) {  /* (kept finite, as exp8 keeps it) */
    return expf(fminf(-2.0f * GELU_K * x * (1.0f + GELU_A * x * x), 88.0f));
}

/* y[i0:i1] = GELU(x[i0:i1]) (y may be x: in place) */
static void gelu_range(const float *x, float *y, long i0, long i1) {
    long i = i0;
#ifdef GPTLAB_AVX2
    for (; i + 8 <= i1; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), one = _mm256_set1_ps(1.0f);
        __m256 keep = _mm256_cmp_ps(v, _mm256_set1_ps(GELU_ZERO), _CMP_NLE_UQ);  /* (NaN kept) */
        __m256 out = _mm256_div_ps(v, _mm256_add_ps(one, gelu_e8(v)));
        _mm256_storeu_ps(y + i, _mm256_and_ps(keep, out));
    }
#endif
    for (; i < i1; i++) y[i] = x[i] <= GELU_ZERO ? 0.0f : x[i] / (1.0f + gelu_e1(x[i]));
}

void gptlab_gelu_tanh(const float *x, float *y, long n, int threads) {
#ifdef GPTLAB_AVX2
    #pragma omp parallel num_threads(threads)
    {
        TEAM;
        long i0, i1;
        share(n, t, T, 8, &i0, &i1);
        gelu_range(x, y, i0, i1);
    }
#else
    (void)threads;  /* (plain loops: one thread, as before) */
    gelu_range(x, y, 0, n);
#endif
}

/* dx = g * dy/dx at x = g s (1 + x t 2u') with t = e s = 1 - s (e = exp(-2u): 1 - s taken
   as a difference would lose the digits that matter where s is near 1) */
void gptlab_gelu_tanh_backward(const float *g, const float *x, float *dx, long n, int threads) {
    long n8 = 0;
#ifdef GPTLAB_AVX2
    n8 = n / 8 * 8;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < n8; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), e = gelu_e8(v), one = _mm256_set1_ps(1.0f);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, e));
        __m256 du2 = _mm256_mul_ps(  /* 2u' */
            _mm256_set1_ps(2.0f * GELU_K),
            _mm256_fmadd_ps(_mm256_mul_ps(v, v), _mm256_set1_ps(3.0f * GELU_A), one));
        __m256 t = _mm256_mul_ps(e, s);
        __m256 d = _mm256_mul_ps(s, _mm256_fmadd_ps(_mm256_mul_ps(v, t), du2, one));
        d = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(GELU_ZERO), _CMP_NLE_UQ), d);
        d = _mm256_blendv_ps(d, one, _mm256_cmp_ps(v, _mm256_set1_ps(GELU_ONE), _CMP_GE_OQ));
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), d));
    }
#else
    (void)threads;
#endif
    for (long i = n8; i < n; i++) {
        float v = x[i], e = gelu_e1(v), s = 1.0f / (1.0f + e);
        float du2 = 2.0f * GELU_K * (1.0f + 3.0f * GELU_A * v * v);
        dx[i] = v <= GELU_ZERO  ? 0.0f * g[i]
                : v >= GELU_ONE ? g[i]
                                : g[i] * s * (1.0f + v * (e * s) * du2);
    }
}

/* ---- a GPT-2 block's step for one new position ---- */

/* Called by every thread of a parallel region: y (M, C) = LayerNorm(x) over each row, w and b
   float32 or bfloat16 (bf16; either may be NULL: 1 and 0), y float32 (rounded to bfloat16
   values under bf16, as PyTorch's bfloat16 LayerNorm rounds its float32 result). Mean and
   variance summed in double. Ends in a barrier. */
INLINE void layer_norm_team(const float *x, const void *w, const void *b, float *y, long M,
                            long C, float eps, int bf16) {
    #pragma omp for schedule(static)
    for (long m = 0; m < M; m++) {
        const float *xm = x + m * C;
        double sum = 0.0, sq = 0.0;
        for (long c = 0; c < C; c++) sum += xm[c];
        float mean = (float)(sum / C);
        for (long c = 0; c < C; c++) sq += (double)(xm[c] - mean) * (xm[c] - mean);
        float rstd = (float)(1.0 / sqrt(sq / C + eps));
        for (long c = 0; c < C; c++) {
            float v = (xm[c] - mean) * rstd;
            if (w) v *= w1(w, c, bf16);
            if (b) v += w1(b, c, bf16);
            y[m * C + c] = bf16 ? round_bf16(v) : v;
        }
    }
}

/* One new position through a pre-LayerNorm GPT-2 block for B sequences, in one parallel
   region (one start and a barrier between stages, instead of a region and a Python call per
   operation):
       x1 = x + c_proj(attention(c_attn(ln_1(x))));  y = x1 + mlp_proj(GELU(c_fc(ln_2(x1))))
   x, y (B, C) float32 (bf16 = 0) or bfloat16 (bf16 = 1: every stage rounded to bfloat16 where
   PyTorch's bfloat16 operations round, the arithmetic float32). p: the 12 parameters, ln_1's
   weight and bias, c_attn's weight (C, 3C) and bias, attn.c_proj's (C, C) and bias, ln_2's
   weight and bias, c_fc's (C, F) and bias, mlp.c_proj's (F, C) and bias, each of x's dtype
   (biases and LayerNorm parameters may be NULL); then the four products' int8 scales: NULL
   for a float weight, else that weight is int8 (out, in) with one float32 scale per output
   (float32 blocks only). kc, vc, mask, pos as for attention (H heads,
   C / H wide, L positions). work: gptlab_block_step_floats(...) floats.
   fc (B, F), or NULL for the whole block: the step stops after c_fc, y receiving x1 and fc
   c_fc's output, for the caller to run the GELU and the last product. (bfloat16 needs it:
   PyTorch's tanh GELU differs from the kernel's after bfloat16 rounding in ~8% of values, its
   1 + tanh(u) cancelling for negative x, and a bfloat16 model should pick PyTorch's tokens.) */
static long stage_floats(long B, long C, long F, int bf16) {  /* work before the sums */
    return (bf16 ? B * C : 0) + B * (C + 3 * C + C + C + F);
}

long gptlab_block_step_floats(long B, long C, long F, int threads, int bf16) {
    long widest = 3 * C > F ? 3 * C : F;
    return stage_floats(B, C, F, bf16) + threads * B * (widest > C ? widest : C);
}

/* One of the block's products inside its region: w (K, N) float32 or bfloat16, or where
   scale is given, int8 (N, K) with scales (float32 only). */
INLINE void product_team(const float *x, const void *w, const float *scale, const void *bias,
                         const void *add, void *y, float *sums, long M, long K, long N,
                         long threads, long T, long t, int bf16, int io16) {
    if (scale && !bf16 && !io16)
        int8_team(x, w, scale, bias, add, y, M, K, N, T, t);
    else
        matmul_team(x, w, bias, add, y, sums, M, K, N, threads, T, t, bf16, io16);
}

INLINE void block_step(const void *x, void *y, void *fc_out, void *const *p, void *kc,
                       void *vc, const uint8_t *mask, float *work, long B, long C, long F,
                       long H, long L, long pos, float eps1, float eps2, int threads, int bf16) {
    float *xf = bf16 ? work : (float *)x, *h = work + (bf16 ? B * C : 0), *qkv = h + B * C,
          *att = qkv + 3 * B * C, *x1 = att + B * C, *fc = x1 + B * C,
          *sums = work + stage_floats(B, C, F, bf16);
    #pragma omp parallel num_threads(threads)
    {
        TEAM;
        long i0, i1;
        if (bf16) {
            share(B * C, t, T, 8, &i0, &i1);
            convert(xf + i0, 0, (const uint16_t *)x + i0, 1, i1 - i0);
            #pragma omp barrier
        }
        layer_norm_team(xf, p[0], p[1], h, B, C, eps1, bf16);
        product_team(h, p[2], p[12], p[3], NULL, qkv, sums, B, C, 3 * C, threads, T, t, bf16, 0);
        #pragma omp barrier
        attention_team(qkv, 0, kc, vc, mask, att, 0, B, H, C / H, L, pos, bf16);
        product_team(att, p[4], p[13], p[5], xf, x1, sums, B, C, C, threads, T, t, bf16, 0);
        #pragma omp barrier
        layer_norm_team(x1, p[6], p[7], h, B, C, eps2, bf16);
        product_team(h, p[8], p[14], p[9], NULL, fc, sums, B, C, F, threads, T, t, bf16, 0);
        #pragma omp barrier
        if (fc_out) {  /* stop here: x1 and c_fc's output to the caller */
            share(B * C, t, T, 8, &i0, &i1);
            convert((char *)y + i0 * (bf16 ? 2 : 4), bf16, x1 + i0, 0, i1 - i0);
            share(B * F, t, T, 8, &i0, &i1);
            convert((char *)fc_out + i0 * (bf16 ? 2 : 4), bf16, fc + i0, 0, i1 - i0);
        } else {  /* (fc_out is the same for every thread: all take this branch, or none) */
            share(B * F, t, T, 8, &i0, &i1);
            gelu_range(fc, fc, i0, i1);
            if (bf16)
                for (long i = i0; i < i1; i++) fc[i] = round_bf16(fc[i]);
            #pragma omp barrier
            product_team(fc, p[10], p[15], p[11], x1, y, sums, B, F, C, threads, T, t, bf16, bf16);
        }
    }
}

void gptlab_block_step(const void *x, void *y, void *fc, void *const *p, void *kc, void *vc,
                       const uint8_t *mask, float *work, long B, long C, long F, long H, long L,
                       long pos, float eps1, float eps2, int threads, int bf16) {
    if (B <= 0 || H <= 0 || C % H || C / H > MAX_HEAD || pos < 0 || pos >= L) return;
    if (bf16 && !fc) return;  /* (bfloat16 stops after c_fc: see above) */
    if (bf16)
        block_step(x, y, fc, p, kc, vc, mask, work, B, C, F, H, L, pos, eps1, eps2, threads, 1);
    else
        block_step(x, y, fc, p, kc, vc, mask, work, B, C, F, H, L, pos, eps1, eps2, threads, 0);
}

/* ---- causal self-attention over whole sequences, forward and backward (training) ----

   For the short sequences small models train on (T up to a few hundred), one head's q, k and
   v (T x D each) and its T x T probabilities fit in L2, and PyTorch's flash kernel spends
   more on its blocking than on arithmetic. Here one thread takes one (batch, head) at a time,
   whole. Every product is a register tile of ROWS rows by 16 floats (8 accumulators: enough
   independent FMAs to hide their latency), each vector loaded once feeding ROWS FMAs. The
   forward keeps each row's log-sum-exp; the backward recomputes the probabilities from it
   (as flash attention does), keeps this head's P and dS, and gets dQ = dS K, dK = dS^T Q,
   dV = P^T dO from them. Written with GCC vector types (8 floats), which compile to AVX2
   and FMA where the CPU has them; the head size D must be a multiple of 8. */

typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));
#define ROWS 4

static inline v8 v8_load(const float *p) { return *(const v8 *)p; }
static inline void v8_store(float *p, v8 v) { *(v8 *)p = v; }
static inline v8 v8_splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }
static inline v8 v8_exp(v8 x) {
#ifdef GPTLAB_AVX2
    return (v8)exp8((__m256)x);
#else
    v8 y;
    for (int u = 0; u < 8; u++) y[u] = expf(x[u]);
    return y;
#endif
}
static inline long round16(long n) { return (n + 15) / 16 * 16; }

/* s[r][j] = sum_d a[r][d] bt[d][j] for the ROWS rows a[r] and the columns j < n16 (a multiple
   of 16; bt: D x Tp, rows Tp apart; s: rows Tp apart) */
static void rows_by_columns(const float *const *a, const float *bt, long Tp, long D, long n16,
                            float *s) {
    for (long j = 0; j < n16; j += 16) {
        v8 lo[ROWS] = {0}, hi[ROWS] = {0};
        for (long d = 0; d < D; d++) {
            v8 b0 = v8_load(bt + d * Tp + j), b1 = v8_load(bt + d * Tp + j + 8);
            for (int r = 0; r < ROWS; r++) {
                v8 c = v8_splat(a[r][d]);
                lo[r] += c * b0;
                hi[r] += c * b1;
            }
        }
        for (int r = 0; r < ROWS; r++) {
            v8_store(s + r * Tp + j, lo[r]);
            v8_store(s + r * Tp + j + 8, hi[r]);
        }
    }
}

/* o[r][d] = sum_{j0 <= j < j1} w[r ws + j wj] b[j][d] (b's rows ldb apart) for the first R of
   ROWS rows (w must be readable for all ROWS: the others are computed and dropped) */
static void weights_by_rows(const float *w, long ws, long wj, const float *b, long ldb,
                            long j0, long j1, long D, float *const *o, long R) {
    long d = 0;
    for (; d + 16 <= D; d += 16) {
        v8 lo[ROWS] = {0}, hi[ROWS] = {0};
        for (long j = j0; j < j1; j++) {
            v8 x0 = v8_load(b + j * ldb + d), x1 = v8_load(b + j * ldb + d + 8);
            for (int r = 0; r < ROWS; r++) {
                v8 c = v8_splat(w[r * ws + j * wj]);
                lo[r] += c * x0;
                hi[r] += c * x1;
            }
        }
        for (long r = 0; r < R; r++) {
            v8_store(o[r] + d, lo[r]);
            v8_store(o[r] + d + 8, hi[r]);
        }
    }
    if (d < D) {  /* (a last 8) */
        v8 acc[ROWS] = {0};
        for (long j = j0; j < j1; j++) {
            v8 x = v8_load(b + j * ldb + d);
            for (int r = 0; r < ROWS; r++) acc[r] += v8_splat(w[r * ws + j * wj]) * x;
        }
        for (long r = 0; r < R; r++) v8_store(o[r] + d, acc[r]);
    }
}

/* x's T rows of D (rows ld apart) to xt, D x Tp, the columns past T zero */
static void transpose(const float *x, long ld, long T, long D, long Tp, float *xt) {
    for (long j = 0; j < T; j++)
        for (long d = 0; d < D; d++) xt[d * Tp + j] = x[j * ld + d];
    for (long d = 0; d < D; d++)
        for (long j = T; j < Tp; j++) xt[d * Tp + j] = 0.0f;
}

/* The ROWS rows from i0 (R of them real; the others repeat the last, their results unused)
   in `rows`, each `at + i * ld` */
static void row_pointers(const float *at, long ld, long i0, long R, const float **rows) {
    for (int r = 0; r < ROWS; r++) rows[r] = at + (i0 + (r < R ? r : R - 1)) * ld;
}

typedef int v8i __attribute__((vector_size(32), aligned(4), may_alias));

static inline v8 v8_max(v8 a, v8 b) {
#ifdef GPTLAB_AVX2
    return (v8)_mm256_max_ps((__m256)a, (__m256)b);
#else
    v8 c;
    for (int u = 0; u < 8; u++) c[u] = a[u] > b[u] ? a[u] : b[u];
    return c;
#endif
}

/* Row i's probabilities from its scores s (j <= i) in place, zeros at i < j < width (a
   multiple of 8): softmax(scale s), returning the row's log-sum-exp (lse NULL), or
   exp(scale s - *lse). A NaN or +inf score makes the whole row NaN, as it does in PyTorch's
   softmax (the vector max and exp would otherwise drop it). */
static float probabilities(float *s, long i, long width, float scale, const float *lse) {
    long n = i + 1, last = n / 8 * 8;  /* whole chunks of 8 before last, then a partial one */
    v8 sc = v8_splat(scale), lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    v8i keep = v8_splat((float)(n - last)) > lanes;  /* the partial chunk's lanes j < n */
    float top;
    if (lse) {
        top = *lse;
    } else {
        v8 m = v8_splat(-INFINITY), inf = v8_splat(INFINITY);
        v8i bad = {0};
        for (long j = 0; j < last; j += 8) {
            v8 x = v8_load(s + j);
            m = v8_max(m, x);
            bad |= (x != x) | (x == inf);
        }
        if (last < n) {
            v8 x = (v8)(((v8i)v8_load(s + last) & keep) | (~keep & (v8i)v8_splat(-INFINITY)));
            m = v8_max(m, x);
            bad |= (x != x) | (x == inf);
        }
        top = m[0];
        for (int u = 1; u < 8; u++) top = m[u] > top ? m[u] : top;
        top *= scale;  /* (scale > 0: the largest scaled score) */
        for (int u = 0; u < 8; u++)
            if (bad[u]) top = NAN;
    }
    if (isnan(top)) {
        for (long j = 0; j < width; j++) s[j] = j < n ? NAN : 0.0f;
        return top;
    }
    v8 total = {0}, shift = v8_splat(top);
    for (long j = 0; j < last; j += 8) {
        v8 p = v8_exp(v8_load(s + j) * sc - shift);
        v8_store(s + j, p);
        total += p;
    }
    if (last < n) {
        v8 p = (v8)((v8i)v8_exp(v8_load(s + last) * sc - shift) & keep);
        v8_store(s + last, p);
        total += p;
    }
    for (long j = last < n ? last + 8 : last; j < width; j += 8) v8_store(s + j, (v8){0});
    if (lse) return top;
    float sum = 0.0f;
    for (int u = 0; u < 8; u++) sum += total[u];
    v8 inverse = v8_splat(1.0f / sum);
    for (long j = 0; j < n; j += 8) v8_store(s + j, v8_load(s + j) * inverse);
    return top + logf(sum);
}

/* Floats of scratch each thread needs */
long gptlab_attention_floats(long T, long D) {
    long Tp = round16(T);
    return 2 * D * Tp + (2 * (T + ROWS) + ROWS) * Tp + T;
}

#ifdef _OPENMP
#define THREAD_SCRATCH(work, per) ((work) + omp_get_thread_num() * (per))
#else
#define THREAD_SCRATCH(work, per) ((work) + 0 * (per))
#endif

/* qkv (B, T, 3 H D): c_attn's output; y (B, T, H D): each head's causal attention, heads
   side by side; lse (B, H, T): each row's log-sum-exp of its scaled scores (for the
   backward). work: threads x gptlab_attention_floats(T, D). */
void gptlab_attention_forward(const float *qkv, float *y, float *lse, float *work, long B,
                              long T, long H, long D, int threads) {
    long C = H * D, Tp = round16(T), per = gptlab_attention_floats(T, D);
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel num_threads(threads)
    {
        float *kt = THREAD_SCRATCH(work, per), *p = kt + 2 * D * Tp;
        #pragma omp for schedule(static)
        for (long bh = 0; bh < B * H; bh++) {
            long b = bh / H, h = bh % H;
            const float *q = qkv + b * T * 3 * C + h * D, *k = q + C, *v = q + 2 * C;
            transpose(k, 3 * C, T, D, Tp, kt);
            for (long i0 = 0; i0 < T; i0 += ROWS) {
                long R = T - i0 < ROWS ? T - i0 : ROWS, n16 = round16(i0 + R);
                const float *rows[ROWS];
                float *out[ROWS];
                row_pointers(q, 3 * C, i0, R, rows);
                rows_by_columns(rows, kt, Tp, D, n16, p);
                for (int r = 0; r < ROWS; r++) {
                    float *row = p + r * Tp;
                    if (r < R)
                        lse[bh * T + i0 + r] = probabilities(row, i0 + r, n16, scale, NULL);
                    else
                        memset(row, 0, n16 * sizeof(float));
                    out[r] = y + (b * T + i0 + (r < R ? r : 0)) * C + h * D;
                }
                weights_by_rows(p, Tp, 1, v, 3 * C, 0, i0 + R, D, out, R);
            }
        }
    }
}

/* dy (B, T, H D): the loss's gradient at y; qkv, y and lse as the forward gave them; dqkv
   (B, T, 3 H D): the gradient at qkv. work as the forward's. */
void gptlab_attention_backward(const float *dy, const float *qkv, const float *y,
                               const float *lse, float *dqkv, float *work, long B, long T,
                               long H, long D, int threads) {
    long C = H * D, Tp = round16(T), per = gptlab_attention_floats(T, D);
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel num_threads(threads)
    {
        float *kt = THREAD_SCRATCH(work, per), *vt = kt + D * Tp, *p = vt + D * Tp;
        float *ds = p + (T + ROWS) * Tp, *dp = ds + (T + ROWS) * Tp, *delta = dp + ROWS * Tp;
        /* (P and dS have ROWS rows past T: the last block's unused rows, whose results are
           dropped; dP's columns from n16 on are never written, and dS's there never read) */
        #pragma omp for schedule(static)
        for (long bh = 0; bh < B * H; bh++) {
            long b = bh / H, h = bh % H;
            const float *q = qkv + b * T * 3 * C + h * D, *k = q + C, *v = q + 2 * C;
            const float *g = dy + b * T * C + h * D, *o = y + b * T * C + h * D;
            float *dq = dqkv + b * T * 3 * C + h * D, *dk = dq + C, *dv = dq + 2 * C;
            transpose(k, 3 * C, T, D, Tp, kt);
            transpose(v, 3 * C, T, D, Tp, vt);
            for (long i = 0; i < T; i++) {  /* delta_i = dO_i . O_i = sum_j P_ij dP_ij */
                float sum = 0.0f;
                for (long d = 0; d < D; d++) sum += g[i * C + d] * o[i * C + d];
                delta[i] = sum;
            }
            for (long i0 = 0; i0 < T; i0 += ROWS) {  /* P and dS, ROWS rows at a time */
                long R = T - i0 < ROWS ? T - i0 : ROWS, n16 = round16(i0 + R);
                const float *qs[ROWS], *gs[ROWS];
                row_pointers(q, 3 * C, i0, R, qs);
                row_pointers(g, C, i0, R, gs);
                rows_by_columns(qs, kt, Tp, D, n16, p + i0 * Tp);  /* scores */
                rows_by_columns(gs, vt, Tp, D, n16, dp);           /* dP = dO V^T */
                for (long r = 0; r < R; r++) {
                    long i = i0 + r;
                    float *pr = p + i * Tp, *dsr = ds + i * Tp, *dpr = dp + r * Tp;
                    probabilities(pr, i, Tp, scale, lse + bh * T + i);
                    v8 di = v8_splat(delta[i]), sc = v8_splat(scale);
                    for (long j = 0; j < Tp; j += 8)  /* dS = P (dP - delta), times the scale */
                        v8_store(dsr + j, v8_load(pr + j) * (v8_load(dpr + j) - di) * sc);
                }
            }
            for (long i0 = 0; i0 < T; i0 += ROWS) {
                long R = T - i0 < ROWS ? T - i0 : ROWS;
                float *rows[ROWS];
                for (long r = 0; r < R; r++) rows[r] = dq + (i0 + r) * 3 * C;
                weights_by_rows(ds + i0 * Tp, Tp, 1, k, 3 * C, 0, i0 + R, D, rows, R);
                for (long r = 0; r < R; r++) rows[r] = dk + (i0 + r) * 3 * C;  /* (keys i0..) */
                weights_by_rows(ds + i0, 1, Tp, q, 3 * C, i0, T, D, rows, R);  /* dK = dS^T Q */
                for (long r = 0; r < R; r++) rows[r] = dv + (i0 + r) * 3 * C;
                weights_by_rows(p + i0, 1, Tp, g, C, i0, T, D, rows, R);  /* dV = P^T dO */
            }
        }
    }
}

/* 1 where the vector paths above were compiled in (AVX2 and FMA), 0 for plain loops */
int gptlab_simd(void) {
#ifdef GPTLAB_AVX2
    return 1;
#else
    return 0;
#endif
}
