/*
 * Fused CPU kernel for SGD with momentum and decoupled weight decay (Algorithm 1 of Loshchilov & Hutter,
 * "Decoupled Weight Decay Regularization", ICLR 2019), over many tensors in one pass.
 *
 * Per element, with sign = -1 when maximizing:
 *     g     = sign * grad + l2 * theta                 (l2 != 0 only for the coupled "l2" convention)
 *     m     = momentum * m + lr * g                    (the scheduled step lr = eta_t * alpha INSIDE the buffer)
 *     u     = nesterov ? momentum * m + lr * g : m     (u = lr * g when there is no momentum buffer)
 *     theta = keep * theta - u                         (keep = 1 - eta_t * lambda: the decoupled decay)
 *
 * One read of theta, grad and m and one write of theta and m per element: 20 bytes per fp32 parameter,
 * the same traffic as torch's fused SGD with momentum, which is the memory-bandwidth floor of this update.
 * Arithmetic is done in float for fp32/bf16/fp16 tensors (like torch's fused kernels) and in double for fp64.
 *
 * All tensors together are one sequence of elements, cut into equal contiguous shares, one per thread, so that
 * many small tensors and a few large ones keep every thread equally busy (cutting them into fixed
 * chunks left one of two threads with 11% more work on a mixed 10M-parameter model). Every element's update
 * is independent of the others, so the result does not depend on the thread count.
 * Built and loaded at run time by decoupled/kernels/native.py (plain C, OpenMP; no torch headers).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SHARE_ALIGN ((int64_t)64) /* shares start on a multiple of 64 elements (whole cache lines) */
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)

enum { DTYPE_F32 = 0, DTYPE_F64 = 1, DTYPE_BF16 = 2, DTYPE_F16 = 3 };

typedef struct {
    double lr, momentum, keep, l2;  /* lr and l2 carry the sign of maximize (see decoupled_sgd) */
    int has_momentum, nesterov;
} Hyper;

/*
 * One element of the update, in the accumulation type ACC. With maximize, the caller has negated lr and l2:
 * lr * (-g + l2 theta) == (-lr) * (g + (-l2) theta) exactly in IEEE arithmetic (negation is exact and
 * a - b == -(b - a)), so no per-element sign multiply is needed and the result is bit-identical.
 */
#define SGD_ELEMENT(ACC, HAS_M, NESTEROV, HAS_L2, theta, grad_in, buf_io, theta_out)                       \
    do {                                                                                                 \
        ACC grad_ = (grad_in);                                                                           \
        if (HAS_L2) grad_ += l2 * (theta);                                                               \
        ACC update_;                                                                                     \
        if (HAS_M) {                                                                                     \
            const ACC buf_ = mu * (buf_io) + lr * grad_;                                                 \
            (buf_io) = buf_;                                                                             \
            update_ = NESTEROV ? mu * buf_ + lr * grad_ : buf_;                                          \
        } else {                                                                                         \
            update_ = lr * grad_;                                                                        \
        }                                                                                                \
        (theta_out) = keep * (theta) - update_;                                                          \
    } while (0)

#define HYPER_LOCALS(ACC)                                                                                \
    const ACC lr = (ACC)h->lr, mu = (ACC)h->momentum, keep = (ACC)h->keep, l2 = (ACC)h->l2;              \
    (void)mu; (void)l2

/* One specialised loop per (element type, momentum, nesterov, l2) so the inner loop has no branches. */
#define DEFINE_LOOP(NAME, T, ACC, LOAD, STORE, HAS_M, NESTEROV, HAS_L2)                                   \
    static void NAME(T *restrict p, const T *restrict g, T *restrict m, int64_t begin, int64_t end,      \
                     const Hyper *h) {                                                                   \
        HYPER_LOCALS(ACC);                                                                               \
        (void)m;                                                                                         \
        for (int64_t i = begin; i < end; ++i) {                                                          \
            const ACC theta = LOAD(p[i]);                                                                \
            ACC buf = HAS_M ? LOAD(m[i]) : (ACC)0, out;                                                  \
            SGD_ELEMENT(ACC, HAS_M, NESTEROV, HAS_L2, theta, LOAD(g[i]), buf, out);                      \
            if (HAS_M) m[i] = STORE(buf);                                                                \
            p[i] = STORE(out);                                                                           \
        }                                                                                                \
    }

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

/*
 * f rounded to bfloat16 (nearest, ties to even), in the upper 16 bits of the result (the lower 16 are junk).
 * No NaN case is needed here: every float this kernel rounds is computed from bfloat16 inputs (whose low 16
 * bits are 0) and finite hyperparameters, so a NaN among them is either an input's NaN, quieted, or the
 * default NaN 0x?fc00000: its low 16 bits are 0, adding at most 0x8000 cannot carry into the upper half, and
 * it stays the same NaN. (A general-purpose conversion would need the check; it cost 5-8% of the bf16 step.)
 */
static inline uint32_t bf16_round_bits(float f) {
    const uint32_t u = f32_to_bits(f);
    return u + 0x7fffu + ((u >> 16) & 1u);
}

static inline uint16_t f32_to_bf16(float f) { return (uint16_t)(bf16_round_bits(f) >> 16); }

/*
 * bfloat16 loops work on pairs: a 32-bit word holds elements 2k (low half) and 2k+1 (high half), so the
 * conversions are a shift or a mask per word and the results are merged back with one mask and one shift,
 * with no packing or lane shuffles (several times fewer instructions than element-wise conversion, which
 * made the bf16 step compute bound). Words may sit at any even address: pair_t is a 2-aligned alias.
 */
typedef uint32_t pair_t __attribute__((aligned(2), may_alias));

#define BF16_PAIR_STEP(HAS_M, NESTEROV, HAS_L2, pw, gw, mw)                                              \
    do {                                                                                                 \
        const float t0 = bits_to_f32((pw) << 16), t1 = bits_to_f32((pw) & 0xffff0000u);                  \
        const float g0 = bits_to_f32((gw) << 16), g1 = bits_to_f32((gw) & 0xffff0000u);                  \
        float b0 = HAS_M ? bits_to_f32((mw) << 16) : 0.0f, b1 = HAS_M ? bits_to_f32((mw) & 0xffff0000u) : 0.0f; \
        float o0, o1;                                                                                    \
        SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, t0, g0, b0, o0);                                     \
        SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, t1, g1, b1, o1);                                     \
        if (HAS_M) (mw) = (bf16_round_bits(b1) & 0xffff0000u) | (bf16_round_bits(b0) >> 16);             \
        (pw) = (bf16_round_bits(o1) & 0xffff0000u) | (bf16_round_bits(o0) >> 16);                        \
    } while (0)

#define DEFINE_BF16_LOOP(NAME, HAS_M, NESTEROV, HAS_L2)                                                   \
    static void NAME(uint16_t *restrict p, const uint16_t *restrict g, uint16_t *restrict m,             \
                     int64_t begin, int64_t end, const Hyper *h) {                                       \
        HYPER_LOCALS(float);                                                                             \
        (void)m;                                                                                         \
        int64_t i = begin;                                                                               \
        for (; i < end && (i & 1); ++i) { /* odd start: one element alone (16-bit stores) */          \
            float buf = HAS_M ? bf16_to_f32(m[i]) : 0.0f, out;                                           \
            SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, bf16_to_f32(p[i]), bf16_to_f32(g[i]), buf, out); \
            if (HAS_M) m[i] = f32_to_bf16(buf);                                                          \
            p[i] = f32_to_bf16(out);                                                                     \
        }                                                                                                \
        pair_t *restrict pp = (pair_t *)(p + i);                                                         \
        const pair_t *restrict gp = (const pair_t *)(g + i);                                             \
        pair_t *restrict mp = HAS_M ? (pair_t *)(m + i) : NULL;                                          \
        const int64_t pairs = (end - i) / 2;                                                             \
        for (int64_t k = 0; k < pairs; ++k) {                                                            \
            uint32_t pw = pp[k], mw = HAS_M ? mp[k] : 0u;                                                \
            BF16_PAIR_STEP(HAS_M, NESTEROV, HAS_L2, pw, gp[k], mw);                                      \
            if (HAS_M) mp[k] = mw;                                                                       \
            pp[k] = pw;                                                                                  \
        }                                                                                                \
        for (i += 2 * pairs; i < end; ++i) { /* odd end */                                               \
            float buf = HAS_M ? bf16_to_f32(m[i]) : 0.0f, out;                                           \
            SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, bf16_to_f32(p[i]), bf16_to_f32(g[i]), buf, out); \
            if (HAS_M) m[i] = f32_to_bf16(buf);                                                          \
            p[i] = f32_to_bf16(out);                                                                     \
        }                                                                                                \
    }

#define IDENTITY(x) (x)

#define DEFINE_RUN(SUFFIX, T)                                                                            \
    static void run_##SUFFIX(void *p, const void *g, void *m, int64_t b, int64_t e, const Hyper *h) {    \
        const int l2 = h->l2 != 0.0;                                                                     \
        if (!h->has_momentum) {                                                                          \
            (l2 ? loop_##SUFFIX##_001 : loop_##SUFFIX##_000)((T *)p, (const T *)g, (T *)m, b, e, h);     \
        } else if (h->nesterov) {                                                                        \
            (l2 ? loop_##SUFFIX##_111 : loop_##SUFFIX##_110)((T *)p, (const T *)g, (T *)m, b, e, h);     \
        } else {                                                                                         \
            (l2 ? loop_##SUFFIX##_101 : loop_##SUFFIX##_100)((T *)p, (const T *)g, (T *)m, b, e, h);     \
        }                                                                                                \
    }

#define DEFINE_TYPE(SUFFIX, T, ACC, LOAD, STORE)                                                         \
    DEFINE_LOOP(loop_##SUFFIX##_000, T, ACC, LOAD, STORE, 0, 0, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_001, T, ACC, LOAD, STORE, 0, 0, 1)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_100, T, ACC, LOAD, STORE, 1, 0, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_101, T, ACC, LOAD, STORE, 1, 0, 1)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_110, T, ACC, LOAD, STORE, 1, 1, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_111, T, ACC, LOAD, STORE, 1, 1, 1)                                        \
    DEFINE_RUN(SUFFIX, T)

DEFINE_TYPE(f32, float, float, IDENTITY, IDENTITY)
DEFINE_TYPE(f64, double, double, IDENTITY, IDENTITY)
DEFINE_BF16_LOOP(loop_bf16_000, 0, 0, 0)
DEFINE_BF16_LOOP(loop_bf16_001, 0, 0, 1)
DEFINE_BF16_LOOP(loop_bf16_100, 1, 0, 0)
DEFINE_BF16_LOOP(loop_bf16_101, 1, 0, 1)
DEFINE_BF16_LOOP(loop_bf16_110, 1, 1, 0)
DEFINE_BF16_LOOP(loop_bf16_111, 1, 1, 1)
DEFINE_RUN(bf16, uint16_t)
#ifdef __FLT16_MAX__
#define F16_TO_F32(x) ((float)(x))
#define F32_TO_F16(x) ((_Float16)(x))
DEFINE_TYPE(f16, _Float16, float, F16_TO_F32, F32_TO_F16)
#endif

typedef void (*RunFn)(void *, const void *, void *, int64_t, int64_t, const Hyper *);

int decoupled_abi_version(void) { return 2; }

int decoupled_supports_f16(void) {
#ifdef __FLT16_MAX__
    return 1;
#else
    return 0;
#endif
}

/* The number of threads a parallel region of this library gets when asked for `requested` (for tests). */
int decoupled_team_size(int requested) {
    int size = 1;
#pragma omp parallel num_threads(requested) if (requested > 1)
    {
#ifdef _OPENMP
#pragma omp single
        size = omp_get_num_threads();
#endif
    }
    return size;
}

/*
 * One step over n tensors described by `table`, 3n int64 (4n with momentum) laid out as
 *     numels[n], params[n], grads[n], bufs[n]
 * (element counts, then data addresses; one array so that Python builds one buffer per step).
 * Returns 0 on success, -1 for an unknown dtype, -2 when memory for the offset table cannot be had.
 */
int decoupled_sgd(int64_t n, const int64_t *table, int dtype, double lr, double momentum, int nesterov,
                  int maximize, double keep, double l2, int num_threads) {
    RunFn run;
    switch (dtype) {
        case DTYPE_F32: run = run_f32; break;
        case DTYPE_F64: run = run_f64; break;
        case DTYPE_BF16: run = run_bf16; break;
#ifdef __FLT16_MAX__
        case DTYPE_F16: run = run_f16; break;
#endif
        default: return -1;
    }
    /* maximize: the update uses -grad; fold the sign into lr and l2 (exact, see SGD_ELEMENT). */
    const double sign = maximize ? -1.0 : 1.0;
    const Hyper h = {sign * lr, momentum, keep, sign * l2, momentum != 0.0, nesterov != 0};
    const int64_t *numels = table, *params = table + n, *grads = table + 2 * n, *bufs = table + 3 * n;

    /* offsets[t] = where tensor t starts in the sequence of all elements; offsets[n] = total. */
    int64_t *offsets = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!offsets) return -2;
    offsets[0] = 0;
    for (int64_t t = 0; t < n; ++t) offsets[t + 1] = offsets[t] + numels[t];
    const int64_t total = offsets[n];

    const int threads = (total >= PARALLEL_MIN_ELEMENTS && num_threads > 1) ? num_threads : 1;
    (void)threads; /* unused when built without OpenMP */
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int team = 1, rank = 0;
#ifdef _OPENMP
        team = omp_get_num_threads();
        rank = omp_get_thread_num();
#endif
        /* This thread's share [lo, hi) of the sequence. A share may begin mid-tensor at an odd index: the
         * bf16 loops then update that element alone with a 16-bit store, never a word a neighbour writes. */
        const int64_t units = (total + SHARE_ALIGN - 1) / SHARE_ALIGN;
        int64_t lo = units * rank / team * SHARE_ALIGN, hi = units * (rank + 1) / team * SHARE_ALIGN;
        if (hi > total) hi = total;
        int64_t t = 0;
        while (t < n && offsets[t + 1] <= lo) ++t;
        for (; t < n && offsets[t] < hi; ++t) {
            const int64_t b = (lo > offsets[t] ? lo : offsets[t]) - offsets[t];
            const int64_t e = (hi < offsets[t + 1] ? hi : offsets[t + 1]) - offsets[t];
            if (b < e)
                run((void *)(intptr_t)params[t], (const void *)(intptr_t)grads[t],
                    h.has_momentum ? (void *)(intptr_t)bufs[t] : NULL, b, e, &h);
        }
    }
    free(offsets);
    return 0;
}
