/* y = x W^T for a few rows of x, streaming each weight row once (specdecode, see kernels.py).
 *
 * x [rows, in], w [out, in], y [rows, out], all float32, row-major and contiguous.
 *
 * A decode step or a verify pass multiplies 1-17 token rows by every weight matrix of the model. That is a
 * memory-bound product: the weights are read from DRAM once per step, the arithmetic is small. This kernel reads
 * each weight row once for up to 8 token rows (one 8-float weight chunk feeds 8 FMA accumulators), splits the
 * output features over OpenMP threads, and walks the outputs in blocks of 64 so a block's weights stay in L2 while
 * further 8-row groups reuse them. Built by kernels.py with -O3 -mavx2 -mfma -fopenmp; used only when torch reports
 * AVX2 or AVX-512 support.
 */
#include <immintrin.h>
#include <omp.h>

#define OUT_BLOCK 64
/* Each weight row's cache lines are requested this many rows ahead. With 5-8 token rows the arithmetic per weight
 * line is large enough that the hardware prefetcher alone lets DRAM idle while it runs (SmolLM2-135M, 2 AMD EPYC
 * cores: an 8-row forward fell from ~38-43 ms to ~26 ms with it, a 1-row one stayed at ~21 ms). A prefetch past
 * the end of the matrix is harmless (it never faults). */
#define PREFETCH_ROWS 4

static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

/* R token rows (compile-time, so the accumulators live in registers) against weight rows o0..o1. */
#define ROWS_KERNEL(R)                                                                                   \
    static void rows_##R(const float *x, const float *w, float *y, long in, long ldy, long o0, long o1) { \
        const long vec_end = in & ~7L;                                                                   \
        for (long o = o0; o < o1; o++) {                                                                 \
            const float *wr = w + o * in;                                                                \
            __m256 acc[R];                                                                               \
            for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                    \
            for (long i = 0; i < vec_end; i += 8) {                                                      \
                if ((i & 15) == 0) _mm_prefetch((const char *)(wr + PREFETCH_ROWS * in + i), _MM_HINT_T0); \
                const __m256 wv = _mm256_loadu_ps(wr + i);                                               \
                for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * in + i), acc[r]); \
            }                                                                                            \
            for (int r = 0; r < R; r++) {                                                                \
                float s = hsum256(acc[r]);                                                               \
                for (long i = vec_end; i < in; i++) s += wr[i] * x[r * in + i];                          \
                y[r * ldy + o] = s;                                                                      \
            }                                                                                            \
        }                                                                                                \
    }

ROWS_KERNEL(1)
ROWS_KERNEL(2)
ROWS_KERNEL(3)
ROWS_KERNEL(4)
ROWS_KERNEL(5)
ROWS_KERNEL(6)
ROWS_KERNEL(7)
ROWS_KERNEL(8)

typedef void (*rows_fn)(const float *, const float *, float *, long, long, long, long);
static const rows_fn ROWS[9] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

int specdecode_few_rows_linear(const float *x, const float *w, float *y, long rows, long in, long out,
                               int num_threads) {
    if (rows < 1 || in < 1 || out < 1 || num_threads < 1) return 1;
    /* Token rows in as few groups of <= 8 as possible, of equal size (9 rows: 5 + 4, not 8 + 1: a group pays a pass
     * over the block's weights, however few rows it has). Which rows share a group does not change any sum. */
    const long groups = (rows + 7) / 8, group = (rows + groups - 1) / groups;
#pragma omp parallel num_threads(num_threads)
    {
        const long threads = omp_get_num_threads(), t = omp_get_thread_num();
        const long per = (out + threads - 1) / threads;
        const long start = t * per, stop = start + per < out ? start + per : out;
        for (long b = start; b < stop; b += OUT_BLOCK) {
            const long b1 = b + OUT_BLOCK < stop ? b + OUT_BLOCK : stop;
            for (long r0 = 0; r0 < rows; r0 += group) {
                const long n = rows - r0 < group ? rows - r0 : group;
                ROWS[n](x + r0 * in, w, y + r0 * out, in, out, b, b1);
            }
        }
    }
    return 0;
}
