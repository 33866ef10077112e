/* Matrix products for decoding on a CPU (gptlab.model.kernels), where a step multiplies a few
   rows (one per sequence) by every weight matrix and so runs at the speed memory delivers the
   weights. Compiled at first use with the system's C compiler; OpenMP threads are the runtime
   PyTorch itself loaded (the same libgomp), so there is one thread pool.

   gptlab_f32_matmul: y (M, N) = x (M, K) @ w (K, N) + bias (N), float32, w stored (in, out)
   as gptlab's Linear keeps it. Each thread takes a band of w's rows (a contiguous stretch of
   memory, streamed once) and sums its part of every output; the parts are added at the end.

   gptlab_decode_attention: one new position of causal self-attention over the KV cache
   (stores its key and value, then softmax(q k^T / sqrt(D)) v over every cached position), in
   one call instead of the half-dozen small operations PyTorch would run for it.

   gptlab_int8_matmul: y (M, N) = (x (M, K) @ w (N, K)^T) * scale (N) + bias (N), w int8, one
   row per output, widened to float32 in registers, so a step reads a quarter of float32's
   bytes. Four outputs are computed together, from one or two rows of x at a time: 4 or 8
   independent sums, so the loop is not held up by the latency of one running sum.

   Without AVX2 and FMA, plain loops compute the same sums. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stddef.h>
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
#endif

/* ---- float32, w (K, N) ---- */

/* part[m, c0:c1] += x[m, k0:k1] @ w[k0:k1, c0:c1] for every row m. Four rows of w at a time,
   and two rows of x share each load of them; for one row of x, eight rows of w at a time
   (1.1x faster than four over GPT-2 small's matrices read from memory). */
static void f32_band(const float *x, const float *w, float *part, long M, long K, long N,
                     long k0, long k1, long c0, long c1) {
    long k = k0;
#ifdef GPTLAB_AVX2
    long c8 = c0 + (c1 - c0) / 8 * 8;
    for (; M == 1 && k + 8 <= k1; k += 8) {
        const float *w0 = w + k * N, *xa = x + k;
        __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
               a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3),
               a4 = _mm256_broadcast_ss(xa + 4), a5 = _mm256_broadcast_ss(xa + 5),
               a6 = _mm256_broadcast_ss(xa + 6), a7 = _mm256_broadcast_ss(xa + 7);
        for (long n = c0; n < c8; n += 8) {  /* two running sums, added at the store */
            __m256 s = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + n), _mm256_loadu_ps(part + n));
            __m256 u = _mm256_mul_ps(a1, _mm256_loadu_ps(w0 + N + n));
            s = _mm256_fmadd_ps(a2, _mm256_loadu_ps(w0 + 2 * N + n), s);
            u = _mm256_fmadd_ps(a3, _mm256_loadu_ps(w0 + 3 * N + n), u);
            s = _mm256_fmadd_ps(a4, _mm256_loadu_ps(w0 + 4 * N + n), s);
            u = _mm256_fmadd_ps(a5, _mm256_loadu_ps(w0 + 5 * N + n), u);
            s = _mm256_fmadd_ps(a6, _mm256_loadu_ps(w0 + 6 * N + n), s);
            u = _mm256_fmadd_ps(a7, _mm256_loadu_ps(w0 + 7 * N + n), u);
            _mm256_storeu_ps(part + n, _mm256_add_ps(s, u));
        }
        for (long n = c8; n < c1; n++)
            for (long r = 0; r < 8; r++) part[n] += xa[r] * w0[r * N + n];
    }
    for (; k + 4 <= k1; k += 4) {
        const float *w0 = w + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        long m = 0;
        for (; m + 2 <= M; m += 2) {
            const float *xa = x + m * K + k, *xb = xa + K;
            __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
                   a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3);
            __m256 b0 = _mm256_broadcast_ss(xb), b1 = _mm256_broadcast_ss(xb + 1),
                   b2 = _mm256_broadcast_ss(xb + 2), b3 = _mm256_broadcast_ss(xb + 3);
            float *pa = part + m * N, *pb = pa + N;
            for (long n = c0; n < c8; n += 8) {
                __m256 v0 = _mm256_loadu_ps(w0 + n), v1 = _mm256_loadu_ps(w1 + n),
                       v2 = _mm256_loadu_ps(w2 + n), v3 = _mm256_loadu_ps(w3 + n);
                __m256 s = _mm256_fmadd_ps(a0, v0, _mm256_loadu_ps(pa + n));
                __m256 u = _mm256_fmadd_ps(b0, v0, _mm256_loadu_ps(pb + n));
                s = _mm256_fmadd_ps(a1, v1, s); u = _mm256_fmadd_ps(b1, v1, u);
                s = _mm256_fmadd_ps(a2, v2, s); u = _mm256_fmadd_ps(b2, v2, u);
                s = _mm256_fmadd_ps(a3, v3, s); u = _mm256_fmadd_ps(b3, v3, u);
                _mm256_storeu_ps(pa + n, s);
                _mm256_storeu_ps(pb + n, u);
            }
            for (long n = c8; n < c1; n++) {
                pa[n] += xa[0] * w0[n] + xa[1] * w1[n] + xa[2] * w2[n] + xa[3] * w3[n];
                pb[n] += xb[0] * w0[n] + xb[1] * w1[n] + xb[2] * w2[n] + xb[3] * w3[n];
            }
        }
        for (; m < M; m++) {  /* one row of x: two running sums per 8 outputs */
            const float *xa = x + m * K + k;
            __m256 a0 = _mm256_broadcast_ss(xa), a1 = _mm256_broadcast_ss(xa + 1),
                   a2 = _mm256_broadcast_ss(xa + 2), a3 = _mm256_broadcast_ss(xa + 3);
            float *pa = part + m * N;
            for (long n = c0; n < c8; n += 8) {
                __m256 s = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + n), _mm256_loadu_ps(pa + n));
                __m256 u = _mm256_mul_ps(a1, _mm256_loadu_ps(w1 + n));
                s = _mm256_fmadd_ps(a2, _mm256_loadu_ps(w2 + n), s);
                u = _mm256_fmadd_ps(a3, _mm256_loadu_ps(w3 + n), u);
                _mm256_storeu_ps(pa + n, _mm256_add_ps(s, u));
            }
            for (long n = c8; n < c1; n++)
                pa[n] += xa[0] * w0[n] + xa[1] * w1[n] + xa[2] * w2[n] + xa[3] * w3[n];
        }
    }
#endif
    for (; k < k1; k++)  /* the rows left (all of them without AVX2) */
        for (long m = 0; m < M; m++)
            for (long n = c0; n < c1; n++) part[m * N + n] += x[m * K + k] * w[k * N + n];
}

/* Each thread's partial sums stay in its first-level cache: columns in chunks of this many
   bytes of M rows (32 KiB: 1.2x faster than 8 KiB for GPT-2 small's matrices at 8 rows). */
#define F32_CHUNK_BYTES 32768

void gptlab_f32_matmul(const float *x, const float *w, const float *bias, float *y,
                       float *work, long M, long K, long N, int threads) {
    /* work: room for (threads - 1) * M * N floats, the other threads' partial sums */
    if (M <= 0 || N <= 0) return;
    #pragma omp parallel num_threads(threads)
    {
        long T = 1, t = 0;
#ifdef _OPENMP
        T = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        /* thread t: rows [k0, k1) of w, whole groups of four where it can */
        long k0 = K * t / T / 4 * 4, k1 = t == T - 1 ? K : K * (t + 1) / T / 4 * 4;
        float *part = t == 0 ? y : work + (t - 1) * M * N;
        for (long i = 0; i < M * N; i++) part[i] = 0.0f;
        long chunk = F32_CHUNK_BYTES / 4 / M / 8 * 8;
        if (chunk < 64) chunk = 64;
        for (long c0 = 0; c0 < N; c0 += chunk)
            f32_band(x, w, part, M, K, N, k0, k1, c0, c0 + chunk < N ? c0 + chunk : N);
        #pragma omp barrier
        /* the parts added, each thread a share of the columns */
        long n0 = N * t / T, n1 = N * (t + 1) / T;
        for (long m = 0; m < M; m++)
            for (long n = n0; n < n1; n++) {
                float s = y[m * N + n];
                for (long u = 1; u < T; u++) s += work[(u - 1) * M * N + m * N + n];
                y[m * N + n] = bias ? s + bias[n] : s;
            }
    }
}

/* ---- attention for one new position ---- */

static inline float dot(const float *a, const float *b, long n) {
    long i = 0;
    float s = 0.0f;
#ifdef GPTLAB_AVX2
    __m256 u = _mm256_setzero_ps(), w = u;
    for (; i + 16 <= n; i += 16) {
        u = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), u);
        w = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), w);
    }
    s = hsum(_mm256_add_ps(u, w));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* qkv (B, 3 * H * D): this position's query, key and value (c_attn's output, heads side by
   side). kc, vc (B, H, L, D): the cache, positions [0, pos) filled; this position's key and
   value are written at pos. mask (B, pos + 1), 1 = may attend, or NULL for all. y (B, H * D):
   each head's softmax-weighted sum of the values, heads side by side. */
void gptlab_decode_attention(const float *qkv, float *kc, float *vc, const uint8_t *mask,
                             float *y, long B, long H, long D, long L, long pos, int threads) {
    long C = H * D, n = pos + 1;
    float scale = 1.0f / sqrtf((float)D);
    if (pos < 0 || pos >= L) return;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long bh = 0; bh < B * H; bh++) {
        long b = bh / H, h = bh % H;
        const float *q = qkv + b * 3 * C + h * D;
        float *k = kc + bh * L * D, *v = vc + bh * L * D, *out = y + b * C + h * D;
        const uint8_t *keep = mask ? mask + b * n : NULL;
        for (long d = 0; d < D; d++) {
            k[pos * D + d] = q[C + d];
            v[pos * D + d] = q[2 * C + d];
        }
        float local[4096], *scores = n <= 4096 ? local : malloc(n * sizeof(float));
        if (!scores) {  /* out of memory: NaN, for the caller to see */
            for (long d = 0; d < D; d++) out[d] = NAN;
            continue;
        }
        float top = -INFINITY;
        for (long t = 0; t < n; t++) {
            float s = -INFINITY;
            if (!keep || keep[t]) s = dot(q, k + t * D, D) * scale;
            scores[t] = s;
            if (s > top) top = s;
        }
        for (long d = 0; d < D; d++) out[d] = 0.0f;
        if (top == -INFINITY) {  /* nothing to attend to: zeros */
            if (scores != local) free(scores);
            continue;
        }
        float total = 0.0f;
        for (long t = 0; t < n; t++) {
            float p = scores[t] == -INFINITY ? 0.0f : expf(scores[t] - top);
            scores[t] = p;
            total += p;
        }
        for (long t = 0; t < n; t++) {
            float p = scores[t] / total;
            if (p == 0.0f) continue;
            for (long d = 0; d < D; d++) out[d] += p * v[t * D + d];
        }
        if (scores != local) free(scores);
    }
}

/* ---- int8, w (N, K) ---- */

/* Scalar reference for the outputs [n0, n1) and the K-tail from k0 (any CPU). */
static void scalar_part(const float *x, const int8_t *w, float *acc, long M, long K, long N,
                        long n0, long n1, long k0) {
    #pragma omp parallel for schedule(static)
    for (long n = n0; n < n1; n++)
        for (long m = 0; m < M; m++) {
            float s = 0.0f;
            for (long k = k0; k < K; k++) s += (float)w[n * K + k] * x[m * K + k];
            acc[m * N + n] += s;
        }
}

void gptlab_int8_matmul(const float *x, const int8_t *w, const float *scale, const float *bias,
                        float *y, long M, long K, long N) {
    for (long i = 0; i < M * N; i++) y[i] = 0.0f;
    long K8 = 0;
#ifdef GPTLAB_AVX2
    K8 = K - K % 8;
    long N4 = N - N % 4;
    #pragma omp parallel for schedule(static)
    for (long n = 0; n < N4; n += 4) {
        const int8_t *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        if (n + PREFETCH_BLOCKS * 4 < N4) {  /* the rows a few blocks ahead, into cache */
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
    scalar_part(x, w, y, M, K, N, N4, N, 0);  /* the last N % 4 outputs, whole */
    if (K8 < K) scalar_part(x, w, y, M, K, N, 0, N4, K8);  /* the K % 8 tail of the others */
#else
    scalar_part(x, w, y, M, K, N, 0, N, 0);
#endif
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < M * N; i++) {
        long n = i % N;
        y[i] = y[i] * scale[n] + (bias ? bias[n] : 0.0f);
    }
}
