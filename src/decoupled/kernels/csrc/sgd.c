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
 * Work is split into fixed chunks over all tensors together, so that many small tensors and a few large
 * ones keep every thread busy; chunks are independent, so the result does not depend on the thread count.
 * Built and loaded at run time by decoupled/kernels/native.py (plain C, OpenMP; no torch headers).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK ((int64_t)1 << 15)
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)

enum { DTYPE_F32 = 0, DTYPE_F64 = 1, DTYPE_BF16 = 2, DTYPE_F16 = 3 };

typedef struct {
    double lr, momentum, keep, l2, sign;
    int has_momentum, nesterov;
} Hyper;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, NaN kept quiet: the rounding c10::BFloat16 uses. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One specialised loop per (element type, momentum, nesterov, l2) so the inner loop has no branches. */
#define DEFINE_LOOP(NAME, T, ACC, LOAD, STORE, HAS_M, NESTEROV, HAS_L2)                                   \
    static void NAME(T *restrict p, const T *restrict g, T *restrict m, int64_t begin, int64_t end,      \
                     const Hyper *h) {                                                                   \
        const ACC lr = (ACC)h->lr, mu = (ACC)h->momentum, keep = (ACC)h->keep, l2 = (ACC)h->l2;           \
        const ACC sign = (ACC)h->sign;                                                                   \
        (void)mu; (void)l2; (void)m;                                                                     \
        for (int64_t i = begin; i < end; ++i) {                                                          \
            const ACC theta = LOAD(p[i]);                                                                \
            ACC grad = sign * LOAD(g[i]);                                                                \
            if (HAS_L2) grad += l2 * theta;                                                              \
            ACC update;                                                                                  \
            if (HAS_M) {                                                                                 \
                const ACC buf = mu * LOAD(m[i]) + lr * grad;                                             \
                m[i] = STORE(buf);                                                                       \
                update = NESTEROV ? mu * buf + lr * grad : buf;                                          \
            } else {                                                                                     \
                update = lr * grad;                                                                      \
            }                                                                                            \
            p[i] = STORE(keep * theta - update);                                                         \
        }                                                                                                \
    }

#define IDENTITY(x) (x)

#define DEFINE_TYPE(SUFFIX, T, ACC, LOAD, STORE)                                                         \
    DEFINE_LOOP(loop_##SUFFIX##_000, T, ACC, LOAD, STORE, 0, 0, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_001, T, ACC, LOAD, STORE, 0, 0, 1)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_100, T, ACC, LOAD, STORE, 1, 0, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_101, T, ACC, LOAD, STORE, 1, 0, 1)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_110, T, ACC, LOAD, STORE, 1, 1, 0)                                        \
    DEFINE_LOOP(loop_##SUFFIX##_111, T, ACC, LOAD, STORE, 1, 1, 1)                                        \
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

DEFINE_TYPE(f32, float, float, IDENTITY, IDENTITY)
DEFINE_TYPE(f64, double, double, IDENTITY, IDENTITY)
DEFINE_TYPE(bf16, uint16_t, float, bf16_to_f32, f32_to_bf16)
#ifdef __FLT16_MAX__
#define F16_TO_F32(x) ((float)(x))
#define F32_TO_F16(x) ((_Float16)(x))
DEFINE_TYPE(f16, _Float16, float, F16_TO_F32, F32_TO_F16)
#endif

typedef void (*RunFn)(void *, const void *, void *, int64_t, int64_t, const Hyper *);

int decoupled_abi_version(void) { return 1; }

int decoupled_supports_f16(void) {
#ifdef __FLT16_MAX__
    return 1;
#else
    return 0;
#endif
}

/*
 * params, grads, bufs: arrays of n data pointers (bufs ignored without momentum); numels: elements of each.
 * Returns 0 on success, -1 for an unknown dtype, -2 when memory for the chunk table cannot be had.
 */
int decoupled_sgd(int64_t n, void *const *params, const void *const *grads, void *const *bufs,
                  const int64_t *numels, int dtype, double lr, double momentum, int nesterov, int maximize,
                  double keep, double l2, int num_threads) {
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
    const Hyper h = {lr, momentum, keep, l2, maximize ? -1.0 : 1.0, momentum != 0.0, nesterov != 0};

    int64_t chunks = 0, total = 0;
    for (int64_t t = 0; t < n; ++t) {
        chunks += (numels[t] + CHUNK - 1) / CHUNK;
        total += numels[t];
    }
    if (chunks == 0) return 0;
    int64_t *chunk_tensor = (int64_t *)malloc(sizeof(int64_t) * (size_t)chunks * 2);
    if (!chunk_tensor) return -2;
    int64_t *chunk_begin = chunk_tensor + chunks;
    for (int64_t t = 0, c = 0; t < n; ++t)
        for (int64_t b = 0; b < numels[t]; b += CHUNK, ++c) {
            chunk_tensor[c] = t;
            chunk_begin[c] = b;
        }

    const int threads = (total >= PARALLEL_MIN_ELEMENTS && num_threads > 1) ? num_threads : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t t = chunk_tensor[c], b = chunk_begin[c];
        const int64_t e = b + CHUNK < numels[t] ? b + CHUNK : numels[t];
        run(params[t], grads[t], h.has_momentum ? bufs[t] : NULL, b, e, &h);
    }
    free(chunk_tensor);
    return 0;
}
