/*
 * Fused CPU kernel for Adam/AdamW (Algorithm 2 of Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
 * ICLR 2019), with optional cautious weight decay (Chen et al. 2025, arXiv:2510.12402), over many tensors in
 * one pass. Per element, with sign = -1 when maximizing and t the tensor's own step count:
 *     g     = sign * grad + l2 * theta                 (l2 != 0 only for the coupled "l2" convention)
 *     m     = beta1 * m + (1 - beta1) * g
 *     v     = beta2 * v + (1 - beta2) * g^2;  vmax = max(vmax, v) and v -> vmax below (amsgrad)
 *     theta = k * theta - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
 * with k = keep = 1 - factor (the decoupled decay of this step), or, with cautious decay, k = 1 where the
 * update direction u = mhat / (sqrt(vhat) + eps) and theta have opposite signs. u has the sign of m (its
 * denominator is positive), so the signs of m and theta are compared: no product that could underflow.
 *
 * One read of theta, grad, m and v and one write of theta, m and v per element (plus vmax with amsgrad): 28
 * bytes per fp32 parameter and 14 per bf16 one, the traffic of torch's fused AdamW, which is the memory-bandwidth
 * floor of this update; the cautious mask costs no traffic. Arithmetic is in float for fp32/bf16/fp16 tensors
 * (as torch's fused kernels do) and in double for fp64. The step counts are float32 or float64 scalars that
 * this kernel increments (once per tensor, before the parallel part), as torch's fused kernels read theirs.
 * bf16 loops work on pairs (see common.h), which keeps them at the memory-bandwidth floor where torch's fused
 * bf16 AdamW, converting element by element, is compute bound on a Zen 3 core.
 * Threads: see for_each_share in common.h. Built and loaded at run time by decoupled/kernels/native.py.
 */
#include <math.h>

#include "common.h"

typedef struct {
    double beta1, beta2, eps, keep, l2, sign;
    int amsgrad, cautious;
    double factor; /* 1 - keep as the caller computed it (the stochastic low-precision step decays by it) */
} AdamHyper;

typedef struct {
    double step_size, inv_bc2_sqrt; /* lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t) of one tensor */
    uint32_t rounding;              /* the tensor's rounding key this step (stochastic low precision) */
} Bias;

#define OPPOSITE(a, b) (((a) > 0 && (b) < 0) || ((a) < 0 && (b) > 0))

#define ADAM_LOCALS(ACC)                                                                                 \
    const ACC beta1 = (ACC)h->beta1, beta2 = (ACC)h->beta2, one_minus_beta1 = (ACC)(1.0 - h->beta1);     \
    const ACC one_minus_beta2 = (ACC)(1.0 - h->beta2), eps = (ACC)h->eps, keep = (ACC)h->keep;           \
    const ACC l2 = (ACC)h->l2, sign = (ACC)h->sign, factor = (ACC)h->factor;                             \
    const ACC step_size = (ACC)bias->step_size, inv_bc2 = (ACC)bias->inv_bc2_sqrt;                       \
    (void)l2;                                                                                            \
    (void)keep;                                                                                          \
    (void)factor

/* The Adam update u of one element in ACC: reads theta, grad_in, m_io, v_io (vmax_io), writes m_io, v_io
 * (vmax_io) and update_out = step_size * m / (sqrt(v) * inv_bc2 + eps). */
#define ADAM_UPDATE(ACC, SQRT, AMSGRAD, HAS_L2, theta, grad_in, m_io, v_io, vmax_io, update_out)          \
    do {                                                                                                 \
        ACC g_ = sign * (grad_in);                                                                       \
        if (HAS_L2) g_ += l2 * (theta);                                                                  \
        const ACC m_ = beta1 * (m_io) + one_minus_beta1 * g_;                                            \
        const ACC v_ = beta2 * (v_io) + one_minus_beta2 * (g_ * g_);                                     \
        (m_io) = m_;                                                                                     \
        (v_io) = v_;                                                                                     \
        ACC second_ = v_;                                                                                \
        if (AMSGRAD) {                                                                                   \
            second_ = ((vmax_io) > v_ || (vmax_io) != (vmax_io)) ? (vmax_io) : v_; /* NaN propagates */ \
            (vmax_io) = second_;                                                                         \
        }                                                                                                \
        const ACC denom_ = SQRT(second_) * inv_bc2 + eps;                                                \
        (update_out) = step_size * m_ / denom_;                                                          \
    } while (0)

/* One element in ACC: reads theta, grad_in, m_io, v_io (vmax_io), writes m_io, v_io (vmax_io), theta_out. */
#define ADAM_ELEMENT(ACC, SQRT, AMSGRAD, HAS_L2, CAUTIOUS, theta, grad_in, m_io, v_io, vmax_io, theta_out)  \
    do {                                                                                                 \
        ACC u_;                                                                                          \
        ADAM_UPDATE(ACC, SQRT, AMSGRAD, HAS_L2, theta, grad_in, m_io, v_io, vmax_io, u_);               \
        const ACC keep_ = (CAUTIOUS && OPPOSITE((m_io), theta)) ? (ACC)1 : keep;                         \
        (theta_out) = keep_ * (theta) - u_;                                                              \
    } while (0)

#define DEFINE_LOOP(NAME, T, ACC, SQRT, LOAD, STORE, AMSGRAD, HAS_L2, CAUTIOUS)                           \
    static void NAME(T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vmax, \
                     int64_t begin, int64_t end, const AdamHyper *h, const Bias *bias) {                 \
        ADAM_LOCALS(ACC);                                                                                \
        (void)vmax;                                                                                      \
        for (int64_t i = begin; i < end; ++i) {                                                          \
            const ACC theta = LOAD(p[i]);                                                                \
            ACC m0 = LOAD(m[i]), v0 = LOAD(v[i]), x0 = AMSGRAD ? LOAD(vmax[i]) : (ACC)0, out;            \
            ADAM_ELEMENT(ACC, SQRT, AMSGRAD, HAS_L2, CAUTIOUS, theta, LOAD(g[i]), m0, v0, x0, out);      \
            m[i] = STORE(m0);                                                                            \
            v[i] = STORE(v0);                                                                            \
            if (AMSGRAD) vmax[i] = STORE(x0);                                                            \
            p[i] = STORE(out);                                                                           \
        }                                                                                                \
    }

/* One bfloat16 element alone (an odd start or end of a segment): 16-bit loads and stores. */
#define BF16_SINGLE(AMSGRAD, HAS_L2, CAUTIOUS, i)                                                         \
    do {                                                                                                 \
        float m0 = bf16_to_f32(m[i]), v0 = bf16_to_f32(v[i]), out;                                       \
        float x0 = AMSGRAD ? bf16_to_f32(vmax[i]) : 0.0f;                                                \
        ADAM_ELEMENT(float, sqrtf, AMSGRAD, HAS_L2, CAUTIOUS, bf16_to_f32(p[i]), bf16_to_f32(g[i]), m0, v0, x0, \
                     out);                                                                               \
        m[i] = f32_to_bf16(m0);                                                                          \
        v[i] = f32_to_bf16(v0);                                                                          \
        if (AMSGRAD) vmax[i] = f32_to_bf16(x0);                                                          \
        p[i] = f32_to_bf16(out);                                                                         \
    } while (0)

#define DEFINE_BF16_LOOP(NAME, AMSGRAD, HAS_L2, CAUTIOUS)                                                 \
    static void NAME(uint16_t *restrict p, const uint16_t *restrict g, uint16_t *restrict m,             \
                     uint16_t *restrict v, uint16_t *restrict vmax, int64_t begin, int64_t end,          \
                     const AdamHyper *h, const Bias *bias) {                                             \
        ADAM_LOCALS(float);                                                                              \
        (void)vmax;                                                                                      \
        int64_t i = begin;                                                                               \
        for (; i < end && (i & 1); ++i) BF16_SINGLE(AMSGRAD, HAS_L2, CAUTIOUS, i);                        \
        pair_t *restrict pp = (pair_t *)(p + i), *restrict mp = (pair_t *)(m + i);                       \
        pair_t *restrict vp = (pair_t *)(v + i), *restrict xp = AMSGRAD ? (pair_t *)(vmax + i) : NULL;   \
        const pair_t *restrict gp = (const pair_t *)(g + i);                                             \
        const int64_t pairs = (end - i) / 2;                                                             \
        for (int64_t k = 0; k < pairs; ++k) {                                                            \
            const uint32_t pw = pp[k], gw = gp[k], mw = mp[k], vw = vp[k], xw = AMSGRAD ? xp[k] : 0u;    \
            float m0 = BF16_LO(mw), m1 = BF16_HI(mw), v0 = BF16_LO(vw), v1 = BF16_HI(vw);                \
            float x0 = AMSGRAD ? BF16_LO(xw) : 0.0f, x1 = AMSGRAD ? BF16_HI(xw) : 0.0f, o0, o1;          \
            ADAM_ELEMENT(float, sqrtf, AMSGRAD, HAS_L2, CAUTIOUS, BF16_LO(pw), BF16_LO(gw), m0, v0, x0, o0); \
            ADAM_ELEMENT(float, sqrtf, AMSGRAD, HAS_L2, CAUTIOUS, BF16_HI(pw), BF16_HI(gw), m1, v1, x1, o1); \
            mp[k] = BF16_PAIR(m0, m1);                                                                   \
            vp[k] = BF16_PAIR(v0, v1);                                                                   \
            if (AMSGRAD) xp[k] = BF16_PAIR(x0, x1);                                                      \
            pp[k] = BF16_PAIR(o0, o1);                                                                   \
        }                                                                                                \
        for (i += 2 * pairs; i < end; ++i) BF16_SINGLE(AMSGRAD, HAS_L2, CAUTIOUS, i);                     \
    }

typedef void (*RunFn)(void *, const void *, void *, void *, void *, int64_t, int64_t, const AdamHyper *,
                      const Bias *);

/* The loop for h's (amsgrad, l2, cautious); names are loop_<type>_<amsgrad><l2><cautious>. */
#define DEFINE_RUN(SUFFIX, T)                                                                            \
    static void run_##SUFFIX(void *p, const void *g, void *m, void *v, void *x, int64_t b, int64_t e,    \
                             const AdamHyper *h, const Bias *bias) {                                     \
        typedef void (*Loop)(T *restrict, const T *restrict, T *restrict, T *restrict, T *restrict,      \
                             int64_t, int64_t, const AdamHyper *, const Bias *);                         \
        static const Loop loops[2][2][2] = {                                                             \
            {{loop_##SUFFIX##_000, loop_##SUFFIX##_001}, {loop_##SUFFIX##_010, loop_##SUFFIX##_011}},    \
            {{loop_##SUFFIX##_100, loop_##SUFFIX##_101}, {loop_##SUFFIX##_110, loop_##SUFFIX##_111}},    \
        };                                                                                               \
        loops[h->amsgrad != 0][h->l2 != 0.0][h->cautious != 0]((T *)p, (const T *)g, (T *)m, (T *)v,    \
                                                              (T *)x, b, e, h, bias);                    \
    }

#define FOR_EACH_VARIANT(DEFINE, SUFFIX, ...)                                                            \
    DEFINE(SUFFIX##_000, __VA_ARGS__ 0, 0, 0) DEFINE(SUFFIX##_001, __VA_ARGS__ 0, 0, 1)                  \
    DEFINE(SUFFIX##_010, __VA_ARGS__ 0, 1, 0) DEFINE(SUFFIX##_011, __VA_ARGS__ 0, 1, 1)                  \
    DEFINE(SUFFIX##_100, __VA_ARGS__ 1, 0, 0) DEFINE(SUFFIX##_101, __VA_ARGS__ 1, 0, 1)                  \
    DEFINE(SUFFIX##_110, __VA_ARGS__ 1, 1, 0) DEFINE(SUFFIX##_111, __VA_ARGS__ 1, 1, 1)

#define IDENTITY(x) (x)
#define DEFINE_TYPE(SUFFIX, T, ACC, SQRT, LOAD, STORE)                                                   \
    FOR_EACH_VARIANT(DEFINE_LOOP, loop_##SUFFIX, T, ACC, SQRT, LOAD, STORE,)                             \
    DEFINE_RUN(SUFFIX, T)

DEFINE_TYPE(f32, float, float, sqrtf, IDENTITY, IDENTITY)
DEFINE_TYPE(f64, double, double, sqrt, IDENTITY, IDENTITY)
FOR_EACH_VARIANT(DEFINE_BF16_LOOP, loop_bf16,)
DEFINE_RUN(bf16, uint16_t)
#ifdef __FLT16_MAX__
#define F16_TO_F32(x) ((float)(x))
#define F32_TO_F16(x) ((_Float16)(x))
DEFINE_TYPE(f16, _Float16, float, sqrtf, F16_TO_F32, F32_TO_F16)
#endif

typedef struct {
    RunFn run;
    AdamHyper h;
    const Bias *bias;
    const int64_t *params, *grads, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs;
} AdamStep;

static void adam_segment(int64_t t, int64_t begin, int64_t end, const void *ctx) {
    const AdamStep *s = (const AdamStep *)ctx;
    s->run((void *)(intptr_t)s->params[t], (const void *)(intptr_t)s->grads[t], (void *)(intptr_t)s->exp_avgs[t],
           (void *)(intptr_t)s->exp_avg_sqs[t], s->h.amsgrad ? (void *)(intptr_t)s->max_exp_avg_sqs[t] : NULL,
           begin, end, &s->h, &s->bias[t]);
}

/*
 * One step over n tensors described by `table`, 6n int64 (7n with amsgrad) laid out as
 *     numels[n], params[n], grads[n], exp_avgs[n], exp_avg_sqs[n], steps[n], max_exp_avg_sqs[n]
 * (element counts, then data addresses; steps point to one float32, or float64 when step_f64, each).
 * Each step count is incremented here, as by torch's fused kernels. keep = 1 - this step's decay factor.
 * Returns 0 on success, -1 for an unknown dtype, -2 when memory cannot be had (then nothing has changed).
 */
int decoupled_adam(int64_t n, const int64_t *table, int dtype, int step_f64, double lr, double beta1, double beta2,
                   double eps, double keep, double l2, int amsgrad, int maximize, int cautious, int num_threads) {
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
    Bias *bias = (Bias *)malloc(sizeof(Bias) * (size_t)(n > 0 ? n : 1));
    if (!bias) return -2;
    const int64_t *steps = table + 5 * n;
    for (int64_t t = 0; t < n; ++t) {
        double step;
        if (step_f64) {
            double *count = (double *)(intptr_t)steps[t];
            step = *count += 1.0;
        } else {
            float *count = (float *)(intptr_t)steps[t];
            step = *count += 1.0f;
        }
        /* In double, as torch's fused kernels compute them. */
        bias[t].step_size = lr / (1.0 - pow(beta1, step));
        bias[t].inv_bc2_sqrt = 1.0 / sqrt(1.0 - pow(beta2, step));
    }
    const AdamStep s = {
        run, {beta1, beta2, eps, keep, l2, maximize ? -1.0 : 1.0, amsgrad != 0, cautious != 0, 1.0 - keep}, bias,
        table + n, table + 2 * n, table + 3 * n, table + 4 * n, table + 6 * n,
    };
    const int status = for_each_share(n, table, num_threads, adam_segment, &s);
    if (status != 0) { /* nothing was updated: take the step counts back */
        for (int64_t t = 0; t < n; ++t) {
            if (step_f64) *(double *)(intptr_t)steps[t] -= 1.0;
            else *(float *)(intptr_t)steps[t] -= 1.0f;
        }
    }
    free(bias);
    return status;
}


/*
 * Low-precision parameters (bfloat16 or float16) with float32 moments, stepped in float32: the element is the
 * float32 ADAM_ELEMENT above on theta read through the mode's THETA_* and written through its STORE_* (common.h).
 * Traffic per bfloat16 parameter with a remainder: read 14 bytes (param, remainder, grad, m, v), write 12.
 */
#define DEFINE_LOWP_LOOP(NAME, THETA, GRAD, WRITE, STOCHASTIC, AMSGRAD, HAS_L2, CAUTIOUS)                 \
    static void NAME(uint16_t *restrict p, const uint16_t *restrict g, float *restrict m, float *restrict v, \
                     float *restrict vmax, void *restrict x, int64_t begin, int64_t end, const AdamHyper *h, \
                     const Bias *bias) {                                                                 \
        ADAM_LOCALS(float);                                                                              \
        (void)vmax;                                                                                      \
        (void)x;                                                                                         \
        FOR_EACH_LOWP_ELEMENT(STOCHASTIC, bias->rounding, begin, end,                                    \
            const float theta_ = THETA(p, x, i);                                                         \
            float m0 = m[i], v0 = v[i], x0 = AMSGRAD ? vmax[i] : 0.0f, u_;                               \
            ADAM_UPDATE(float, sqrtf, AMSGRAD, HAS_L2, theta_, GRAD(g[i]), m0, v0, x0, u_);            \
            m[i] = m0;                                                                                   \
            v[i] = v0;                                                                                   \
            if (AMSGRAD) vmax[i] = x0;                                                                   \
            WRITE(p, x, i, theta_, u_, CAUTIOUS && OPPOSITE(m0, theta_), random))                        \
    }

typedef void (*LowpFn)(uint16_t *, const uint16_t *, float *, float *, float *, void *, int64_t, int64_t,
                       const AdamHyper *, const Bias *);

#define DEFINE_LOWP_MODE(SUFFIX, THETA, GRAD, STORE, STOCHASTIC)                                         \
    FOR_EACH_VARIANT(DEFINE_LOWP_LOOP, lowp_##SUFFIX, THETA, GRAD, STORE, STOCHASTIC,)                    \
    static const LowpFn lowp_##SUFFIX[2][2][2] = {                                                       \
        {{lowp_##SUFFIX##_000, lowp_##SUFFIX##_001}, {lowp_##SUFFIX##_010, lowp_##SUFFIX##_011}},        \
        {{lowp_##SUFFIX##_100, lowp_##SUFFIX##_101}, {lowp_##SUFFIX##_110, lowp_##SUFFIX##_111}},        \
    };

DEFINE_LOWP_MODE(bf16_exact, THETA_BF16_EXACT, bf16_to_f32, WRITE_BF16_EXACT, 0)
DEFINE_LOWP_MODE(bf16_stochastic, THETA_BF16_STOCHASTIC, bf16_to_f32, WRITE_BF16_STOCHASTIC, 1)
#ifdef __FLT16_MAX__
DEFINE_LOWP_MODE(f16_exact, THETA_F16_EXACT, f16_bits_to_f32, WRITE_F16_EXACT, 0)
DEFINE_LOWP_MODE(f16_stochastic, THETA_F16_STOCHASTIC, f16_bits_to_f32, WRITE_F16_STOCHASTIC, 1)
#endif

typedef struct {
    LowpFn run;
    AdamHyper h;
    const Bias *bias;
    const int64_t *params, *grads, *exp_avgs, *exp_avg_sqs, *extras, *max_exp_avg_sqs;
} LowpStep;

static void lowp_segment(int64_t t, int64_t begin, int64_t end, const void *ctx) {
    const LowpStep *s = (const LowpStep *)ctx;
    s->run((uint16_t *)(intptr_t)s->params[t], (const uint16_t *)(intptr_t)s->grads[t],
           (float *)(intptr_t)s->exp_avgs[t], (float *)(intptr_t)s->exp_avg_sqs[t],
           s->h.amsgrad ? (float *)(intptr_t)s->max_exp_avg_sqs[t] : NULL, (void *)(intptr_t)s->extras[t], begin,
           end, &s->h, &s->bias[t]);
}

/*
 * One step over n low-precision tensors (dtype DTYPE_BF16 or DTYPE_F16, mode LOWP_EXACT or LOWP_STOCHASTIC)
 * described by `table`, 7n int64 (8n with amsgrad) laid out as
 *     numels[n], params[n], grads[n], exp_avgs[n], exp_avg_sqs[n], steps[n], extras[n], max_exp_avg_sqs[n]
 * where the moments are float32, the grads of the parameters' dtype, and extras the remainders (exact: int16 for
 * bfloat16, float32 for float16) or the rounding streams (stochastic: two int64 each, key and count; the count is
 * advanced here). keep = 1 - factor: "exact" multiplies theta by keep (as the float32 kernels), "stochastic"
 * subtracts factor * theta (see WRITE_*_STOCHASTIC in common.h).
 * Returns 0, -1 for an unknown dtype or mode, -2 when memory cannot be had (nothing changed).
 */
int decoupled_adam_lowp(int64_t n, const int64_t *table, int dtype, int mode, int step_f64, double lr, double beta1,
                        double beta2, double eps, double keep, double factor, double l2, int amsgrad, int maximize,
                        int cautious, int num_threads) {
    const LowpFn(*loops)[2][2] = NULL;
    if (dtype == DTYPE_BF16 && mode == LOWP_EXACT) loops = lowp_bf16_exact;
    if (dtype == DTYPE_BF16 && mode == LOWP_STOCHASTIC) loops = lowp_bf16_stochastic;
#ifdef __FLT16_MAX__
    if (dtype == DTYPE_F16 && mode == LOWP_EXACT) loops = lowp_f16_exact;
    if (dtype == DTYPE_F16 && mode == LOWP_STOCHASTIC) loops = lowp_f16_stochastic;
#endif
    if (!loops) return -1;
    Bias *bias = (Bias *)malloc(sizeof(Bias) * (size_t)(n > 0 ? n : 1));
    if (!bias) return -2;
    const int64_t *steps = table + 5 * n, *extras = table + 6 * n;
    for (int64_t t = 0; t < n; ++t) {
        double step;
        if (step_f64) {
            double *count = (double *)(intptr_t)steps[t];
            step = *count += 1.0;
        } else {
            float *count = (float *)(intptr_t)steps[t];
            step = *count += 1.0f;
        }
        bias[t].step_size = lr / (1.0 - pow(beta1, step));
        bias[t].inv_bc2_sqrt = 1.0 / sqrt(1.0 - pow(beta2, step));
        bias[t].rounding = 0;
        if (mode == LOWP_STOCHASTIC) {
            int64_t *stream = (int64_t *)(intptr_t)extras[t];
            stream[1] += 1;
            bias[t].rounding = rounding_key(stream);
        }
    }
    const LowpStep s = {
        loops[amsgrad != 0][l2 != 0.0][cautious != 0],
        {beta1, beta2, eps, keep, l2, maximize ? -1.0 : 1.0, amsgrad != 0, cautious != 0, factor},
        bias, table + n, table + 2 * n, table + 3 * n, table + 4 * n, extras, table + 7 * n,
    };
    const int status = for_each_share(n, table, num_threads, lowp_segment, &s);
    if (status != 0) { /* nothing was updated: take the counts back */
        for (int64_t t = 0; t < n; ++t) {
            if (step_f64) *(double *)(intptr_t)steps[t] -= 1.0;
            else *(float *)(intptr_t)steps[t] -= 1.0f;
            if (mode == LOWP_STOCHASTIC) ((int64_t *)(intptr_t)extras[t])[1] -= 1;
        }
    }
    free(bias);
    return status;
}
