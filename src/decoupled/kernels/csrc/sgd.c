/*
 * Fused CPU kernel for SGD with momentum and decoupled weight decay (Algorithm 1 of Loshchilov & Hutter,
 * "Decoupled Weight Decay Regularization", ICLR 2019), over many tensors in one pass.
 *
 * Per element, with sign = -1 when maximizing:
 *     g     = sign * grad + l2 * theta                 (l2 != 0 only for the coupled "l2" convention)
 *     m     = momentum * m + lr * g                    (the scheduled step lr = eta_t * alpha INSIDE the buffer)
 *     u     = nesterov ? momentum * m + lr * g : m     (u = lr * g when there is no momentum buffer)
 *     theta = keep * theta - u                         (keep = 1 - eta_t * lambda: the decoupled decay)
 * and with cautious weight decay (Chen et al. 2025) the decay is skipped where u and theta have opposite signs:
 *     theta = (u * theta < 0 ? 1 : keep) * theta - u  (signs compared, so no product can underflow)
 *
 * One read of theta, grad and m and one write of theta and m per element: 20 bytes per fp32 parameter,
 * the same traffic as torch's fused SGD with momentum, which is the memory-bandwidth floor of this update.
 * Arithmetic is done in float for fp32/bf16/fp16 tensors (like torch's fused kernels) and in double for fp64.
 *
 * Threads: see for_each_share in common.h.
 * Built and loaded at run time by decoupled/kernels/native.py (plain C, OpenMP; no torch headers).
 */
#include "common.h"

typedef struct {
    double lr, momentum, keep, l2;  /* lr and l2 carry the sign of maximize (see decoupled_sgd) */
    int has_momentum, nesterov, cautious;
    double factor; /* 1 - keep as the caller computed it (the stochastic low-precision step decays by it) */
} Hyper;

/* Whether a and b have strictly opposite signs (cautious weight decay skips those coordinates). */
#define OPPOSITE(a, b) (((a) > 0 && (b) < 0) || ((a) < 0 && (b) > 0))

/*
 * One element of the update, in the accumulation type ACC. With maximize, the caller has negated lr and l2:
 * lr * (-g + l2 theta) == (-lr) * (g + (-l2) theta) exactly in IEEE arithmetic (negation is exact and
 * a - b == -(b - a)), so no per-element sign multiply is needed and the result is bit-identical.
 */
#define SGD_UPDATE(ACC, HAS_M, NESTEROV, HAS_L2, theta, grad_in, buf_io, update_out)                     \
    do {                                                                                                 \
        ACC grad_ = (grad_in);                                                                           \
        if (HAS_L2) grad_ += l2 * (theta);                                                               \
        if (HAS_M) {                                                                                     \
            const ACC buf_ = mu * (buf_io) + lr * grad_;                                                 \
            (buf_io) = buf_;                                                                             \
            (update_out) = NESTEROV ? mu * buf_ + lr * grad_ : buf_;                                     \
        } else {                                                                                         \
            (update_out) = lr * grad_;                                                                   \
        }                                                                                                \
    } while (0)

#define SGD_ELEMENT(ACC, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, theta, grad_in, buf_io, theta_out)             \
    do {                                                                                                 \
        ACC update_;                                                                                     \
        SGD_UPDATE(ACC, HAS_M, NESTEROV, HAS_L2, theta, grad_in, buf_io, update_);                       \
        const ACC keep_ = (CAUTIOUS && OPPOSITE(update_, theta)) ? (ACC)1 : keep;                        \
        (theta_out) = keep_ * (theta) - update_;                                                         \
    } while (0)

#define HYPER_LOCALS(ACC)                                                                                \
    const ACC lr = (ACC)h->lr, mu = (ACC)h->momentum, keep = (ACC)h->keep, l2 = (ACC)h->l2;              \
    const ACC factor = (ACC)h->factor;                                                                   \
    (void)mu; (void)l2; (void)keep; (void)factor

/* One specialised loop per (element type, momentum, nesterov, l2, cautious): the inner loop has no branches. */
#define DEFINE_LOOP(NAME, T, ACC, LOAD, STORE, HAS_M, NESTEROV, HAS_L2, CAUTIOUS)                         \
    static void NAME(T *restrict p, const T *restrict g, T *restrict m, int64_t begin, int64_t end,      \
                     const Hyper *h) {                                                                   \
        HYPER_LOCALS(ACC);                                                                               \
        (void)m;                                                                                         \
        for (int64_t i = begin; i < end; ++i) {                                                          \
            const ACC theta = LOAD(p[i]);                                                                \
            ACC buf = HAS_M ? LOAD(m[i]) : (ACC)0, out;                                                  \
            SGD_ELEMENT(ACC, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, theta, LOAD(g[i]), buf, out);            \
            if (HAS_M) m[i] = STORE(buf);                                                                \
            p[i] = STORE(out);                                                                           \
        }                                                                                                \
    }

#define BF16_PAIR_STEP(HAS_M, NESTEROV, HAS_L2, CAUTIOUS, pw, gw, mw)                                    \
    do {                                                                                                 \
        const float t0 = BF16_LO(pw), t1 = BF16_HI(pw), g0 = BF16_LO(gw), g1 = BF16_HI(gw);              \
        float b0 = HAS_M ? BF16_LO(mw) : 0.0f, b1 = HAS_M ? BF16_HI(mw) : 0.0f;                          \
        float o0, o1;                                                                                    \
        SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, t0, g0, b0, o0);                           \
        SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, t1, g1, b1, o1);                           \
        if (HAS_M) (mw) = BF16_PAIR(b0, b1);                                                             \
        (pw) = BF16_PAIR(o0, o1);                                                                        \
    } while (0)

/* bfloat16 loops work on pairs of elements (see pair_t in common.h). */
#define DEFINE_BF16_LOOP(NAME, HAS_M, NESTEROV, HAS_L2, CAUTIOUS)                                         \
    static void NAME(uint16_t *restrict p, const uint16_t *restrict g, uint16_t *restrict m,             \
                     int64_t begin, int64_t end, const Hyper *h) {                                       \
        HYPER_LOCALS(float);                                                                             \
        (void)m;                                                                                         \
        int64_t i = begin;                                                                               \
        for (; i < end && (i & 1); ++i) { /* odd start: one element alone (16-bit stores) */          \
            float buf = HAS_M ? bf16_to_f32(m[i]) : 0.0f, out;                                           \
            SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, bf16_to_f32(p[i]), bf16_to_f32(g[i]), buf, out); \
            if (HAS_M) m[i] = f32_to_bf16(buf);                                                          \
            p[i] = f32_to_bf16(out);                                                                     \
        }                                                                                                \
        pair_t *restrict pp = (pair_t *)(p + i);                                                         \
        const pair_t *restrict gp = (const pair_t *)(g + i);                                             \
        pair_t *restrict mp = HAS_M ? (pair_t *)(m + i) : NULL;                                          \
        const int64_t pairs = (end - i) / 2;                                                             \
        for (int64_t k = 0; k < pairs; ++k) {                                                            \
            uint32_t pw = pp[k], mw = HAS_M ? mp[k] : 0u;                                                \
            BF16_PAIR_STEP(HAS_M, NESTEROV, HAS_L2, CAUTIOUS, pw, gp[k], mw);                            \
            if (HAS_M) mp[k] = mw;                                                                       \
            pp[k] = pw;                                                                                  \
        }                                                                                                \
        for (i += 2 * pairs; i < end; ++i) { /* odd end */                                               \
            float buf = HAS_M ? bf16_to_f32(m[i]) : 0.0f, out;                                           \
            SGD_ELEMENT(float, HAS_M, NESTEROV, HAS_L2, CAUTIOUS, bf16_to_f32(p[i]), bf16_to_f32(g[i]), buf, out); \
            if (HAS_M) m[i] = f32_to_bf16(buf);                                                          \
            p[i] = f32_to_bf16(out);                                                                     \
        }                                                                                                \
    }

#define IDENTITY(x) (x)

/* The loop for h's (momentum, nesterov, l2, cautious); names are loop_<type>_<momentum><nesterov><l2><cautious>. */
#define DEFINE_RUN(SUFFIX, T)                                                                            \
    static void run_##SUFFIX(void *p, const void *g, void *m, int64_t b, int64_t e, const Hyper *h) {    \
        typedef void (*Loop)(T *restrict, const T *restrict, T *restrict, int64_t, int64_t, const Hyper *); \
        static const Loop loops[3][2][2] = {                                                             \
            {{loop_##SUFFIX##_0000, loop_##SUFFIX##_0001}, {loop_##SUFFIX##_0010, loop_##SUFFIX##_0011}}, \
            {{loop_##SUFFIX##_1000, loop_##SUFFIX##_1001}, {loop_##SUFFIX##_1010, loop_##SUFFIX##_1011}}, \
            {{loop_##SUFFIX##_1100, loop_##SUFFIX##_1101}, {loop_##SUFFIX##_1110, loop_##SUFFIX##_1111}}, \
        };                                                                                               \
        const int kind = !h->has_momentum ? 0 : (h->nesterov ? 2 : 1);                                   \
        loops[kind][h->l2 != 0.0][h->cautious != 0]((T *)p, (const T *)g, (T *)m, b, e, h);              \
    }

/* Calls DEFINE(name suffix, momentum, nesterov, l2, cautious) for the 12 valid combinations. */
#define FOR_EACH_VARIANT(DEFINE, SUFFIX, ...)                                                            \
    DEFINE(SUFFIX##_0000, __VA_ARGS__ 0, 0, 0, 0) DEFINE(SUFFIX##_0001, __VA_ARGS__ 0, 0, 0, 1)          \
    DEFINE(SUFFIX##_0010, __VA_ARGS__ 0, 0, 1, 0) DEFINE(SUFFIX##_0011, __VA_ARGS__ 0, 0, 1, 1)          \
    DEFINE(SUFFIX##_1000, __VA_ARGS__ 1, 0, 0, 0) DEFINE(SUFFIX##_1001, __VA_ARGS__ 1, 0, 0, 1)          \
    DEFINE(SUFFIX##_1010, __VA_ARGS__ 1, 0, 1, 0) DEFINE(SUFFIX##_1011, __VA_ARGS__ 1, 0, 1, 1)          \
    DEFINE(SUFFIX##_1100, __VA_ARGS__ 1, 1, 0, 0) DEFINE(SUFFIX##_1101, __VA_ARGS__ 1, 1, 0, 1)          \
    DEFINE(SUFFIX##_1110, __VA_ARGS__ 1, 1, 1, 0) DEFINE(SUFFIX##_1111, __VA_ARGS__ 1, 1, 1, 1)

#define DEFINE_TYPE(SUFFIX, T, ACC, LOAD, STORE)                                                         \
    FOR_EACH_VARIANT(DEFINE_LOOP, loop_##SUFFIX, T, ACC, LOAD, STORE,)                                   \
    DEFINE_RUN(SUFFIX, T)

DEFINE_TYPE(f32, float, float, IDENTITY, IDENTITY)
DEFINE_TYPE(f64, double, double, IDENTITY, IDENTITY)
FOR_EACH_VARIANT(DEFINE_BF16_LOOP, loop_bf16,)
DEFINE_RUN(bf16, uint16_t)
#ifdef __FLT16_MAX__
#define F16_TO_F32(x) ((float)(x))
#define F32_TO_F16(x) ((_Float16)(x))
DEFINE_TYPE(f16, _Float16, float, F16_TO_F32, F32_TO_F16)
#endif

typedef void (*RunFn)(void *, const void *, void *, int64_t, int64_t, const Hyper *);

/* Bumped whenever an exported signature changes (native.py checks it before it calls anything). */
int decoupled_abi_version(void) { return 4; }

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

typedef struct {
    RunFn run;
    Hyper h;
    const int64_t *params, *grads, *bufs;
} SgdStep;

static void sgd_segment(int64_t t, int64_t begin, int64_t end, const void *ctx) {
    const SgdStep *s = (const SgdStep *)ctx;
    s->run((void *)(intptr_t)s->params[t], (const void *)(intptr_t)s->grads[t],
           s->h.has_momentum ? (void *)(intptr_t)s->bufs[t] : NULL, begin, end, &s->h);
}

/*
 * One step over n tensors described by `table`, 3n int64 (4n with momentum) laid out as
 *     numels[n], params[n], grads[n], bufs[n]
 * (element counts, then data addresses; one array so that Python builds one buffer per step).
 * Returns 0 on success, -1 for an unknown dtype, -2 when memory for the offset table cannot be had.
 */
int decoupled_sgd(int64_t n, const int64_t *table, int dtype, double lr, double momentum, int nesterov,
                  int maximize, double keep, double l2, int cautious, int num_threads) {
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
    const SgdStep step = {
        run, {sign * lr, momentum, keep, sign * l2, momentum != 0.0, nesterov != 0, cautious != 0, 1.0 - keep},
        table + n, table + 2 * n, table + 3 * n,
    };
    return for_each_share(n, table, num_threads, sgd_segment, &step);
}


/*
 * Low-precision parameters (bfloat16 or float16) with a float32 momentum buffer, stepped in float32: SGD_ELEMENT on
 * theta read through the mode's THETA_* and written through its STORE_* (common.h).
 */
#define DEFINE_LOWP_LOOP(NAME, THETA, GRAD, WRITE, STOCHASTIC, HAS_M, NESTEROV, HAS_L2, CAUTIOUS)       \
    static void NAME(uint16_t *restrict p, const uint16_t *restrict g, float *restrict m, void *restrict x, \
                     int64_t begin, int64_t end, const Hyper *h, uint32_t key) {                         \
        HYPER_LOCALS(float);                                                                             \
        (void)m;                                                                                         \
        (void)x;                                                                                         \
        FOR_EACH_LOWP_ELEMENT(STOCHASTIC, key, begin, end,                                               \
            const float theta_ = THETA(p, x, i);                                                         \
            float buf = HAS_M ? m[i] : 0.0f, u_;                                                         \
            SGD_UPDATE(float, HAS_M, NESTEROV, HAS_L2, theta_, GRAD(g[i]), buf, u_);                     \
            if (HAS_M) m[i] = buf;                                                                       \
            WRITE(p, x, i, theta_, u_, CAUTIOUS && OPPOSITE(u_, theta_), random))                        \
    }

typedef void (*LowpFn)(uint16_t *, const uint16_t *, float *, void *, int64_t, int64_t, const Hyper *, uint32_t);

#define DEFINE_LOWP_MODE(SUFFIX, THETA, GRAD, STORE, STOCHASTIC)                                         \
    FOR_EACH_VARIANT(DEFINE_LOWP_LOOP, lowp_##SUFFIX, THETA, GRAD, STORE, STOCHASTIC,)                    \
    static const LowpFn lowp_##SUFFIX[3][2][2] = {                                                       \
        {{lowp_##SUFFIX##_0000, lowp_##SUFFIX##_0001}, {lowp_##SUFFIX##_0010, lowp_##SUFFIX##_0011}},    \
        {{lowp_##SUFFIX##_1000, lowp_##SUFFIX##_1001}, {lowp_##SUFFIX##_1010, lowp_##SUFFIX##_1011}},    \
        {{lowp_##SUFFIX##_1100, lowp_##SUFFIX##_1101}, {lowp_##SUFFIX##_1110, lowp_##SUFFIX##_1111}},    \
    };

DEFINE_LOWP_MODE(bf16_exact, THETA_BF16_EXACT, bf16_to_f32, WRITE_BF16_EXACT, 0)
DEFINE_LOWP_MODE(bf16_stochastic, THETA_BF16_STOCHASTIC, bf16_to_f32, WRITE_BF16_STOCHASTIC, 1)
#ifdef __FLT16_MAX__
DEFINE_LOWP_MODE(f16_exact, THETA_F16_EXACT, f16_bits_to_f32, WRITE_F16_EXACT, 0)
DEFINE_LOWP_MODE(f16_stochastic, THETA_F16_STOCHASTIC, f16_bits_to_f32, WRITE_F16_STOCHASTIC, 1)
#endif

typedef struct {
    LowpFn run;
    Hyper h;
    const int64_t *params, *grads, *bufs, *extras;
    const uint32_t *keys;
} LowpSgdStep;

static void lowp_sgd_segment(int64_t t, int64_t begin, int64_t end, const void *ctx) {
    const LowpSgdStep *s = (const LowpSgdStep *)ctx;
    s->run((uint16_t *)(intptr_t)s->params[t], (const uint16_t *)(intptr_t)s->grads[t],
           s->h.has_momentum ? (float *)(intptr_t)s->bufs[t] : NULL, (void *)(intptr_t)s->extras[t], begin, end,
           &s->h, s->keys ? s->keys[t] : 0u);
}

/*
 * One step over n low-precision tensors (dtype DTYPE_BF16 or DTYPE_F16, mode LOWP_EXACT or LOWP_STOCHASTIC)
 * described by `table`, 4n int64 (3n without momentum) laid out as
 *     numels[n], params[n], grads[n], bufs[n] (float32; absent without momentum), extras[n]
 * with extras the remainders (exact) or the rounding streams (stochastic: key and count, advanced here).
 * Returns 0, -1 for an unknown dtype or mode, -2 when memory cannot be had (then nothing has changed).
 */
int decoupled_sgd_lowp(int64_t n, const int64_t *table, int dtype, int mode, double lr, double momentum,
                       int nesterov, int maximize, double keep, double factor, double l2, int cautious,
                       int num_threads) {
    const LowpFn(*loops)[2][2] = NULL;
    if (dtype == DTYPE_BF16 && mode == LOWP_EXACT) loops = lowp_bf16_exact;
    if (dtype == DTYPE_BF16 && mode == LOWP_STOCHASTIC) loops = lowp_bf16_stochastic;
#ifdef __FLT16_MAX__
    if (dtype == DTYPE_F16 && mode == LOWP_EXACT) loops = lowp_f16_exact;
    if (dtype == DTYPE_F16 && mode == LOWP_STOCHASTIC) loops = lowp_f16_stochastic;
#endif
    if (!loops) return -1;
    const int has_momentum = momentum != 0.0;
    const int64_t *extras = table + (has_momentum ? 4 : 3) * n;
    uint32_t *keys = NULL;
    if (mode == LOWP_STOCHASTIC) {
        keys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(n > 0 ? n : 1));
        if (!keys) return -2;
        for (int64_t t = 0; t < n; ++t) {
            int64_t *stream = (int64_t *)(intptr_t)extras[t];
            stream[1] += 1;
            keys[t] = rounding_key(stream);
        }
    }
    const double sign = maximize ? -1.0 : 1.0;
    const int kind = !has_momentum ? 0 : (nesterov ? 2 : 1);
    const LowpSgdStep step = {
        loops[kind][l2 != 0.0][cautious != 0],
        {sign * lr, momentum, keep, sign * l2, has_momentum, nesterov != 0, cautious != 0, factor},
        table + n, table + 2 * n, table + 3 * n, extras, keys,
    };
    const int status = for_each_share(n, table, num_threads, lowp_sgd_segment, &step);
    if (status != 0 && keys) {
        for (int64_t t = 0; t < n; ++t) ((int64_t *)(intptr_t)extras[t])[1] -= 1;
    }
    free(keys);
    return status;
}
