/*
 * Shared by the native kernels (sgd.c, adam.c): bfloat16 conversions and the split of a step's elements into
 * one contiguous share per thread. Plain C11 + OpenMP; no torch headers. Built by decoupled/kernels/native.py.
 */
#ifndef DECOUPLED_COMMON_H
#define DECOUPLED_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SHARE_ALIGN ((int64_t)64) /* shares start on a multiple of 64 elements (whole cache lines) */
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)

enum { DTYPE_F32 = 0, DTYPE_F64 = 1, DTYPE_BF16 = 2, DTYPE_F16 = 3 };

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
 * No NaN case is needed here: every float these kernels round is computed from bfloat16 inputs (whose low 16
 * bits are 0) and finite hyperparameters, so a NaN among them is either an input's NaN, quieted, or the
 * default NaN 0x?fc00000: its low 16 bits are 0, adding at most 0x8000 cannot carry into the upper half, and
 * it stays the same NaN. (A general-purpose conversion would need the check; it cost 5-8% of the bf16 step.)
 */
static inline uint32_t bf16_round_bits(float f) {
    const uint32_t u = f32_to_bits(f);
    return u + 0x7fffu + ((u >> 16) & 1u);
}

static inline uint16_t f32_to_bf16(float f) { return (uint16_t)(bf16_round_bits(f) >> 16); }

/* The two bfloat16 halves of a 32-bit word as floats: element 2k (low half) and 2k+1 (high half). */
#define BF16_LO(w) bits_to_f32((uint32_t)(w) << 16)
#define BF16_HI(w) bits_to_f32((uint32_t)(w) & 0xffff0000u)
/* Two floats rounded to bfloat16 and merged into one word (lo -> element 2k, hi -> element 2k+1). */
#define BF16_PAIR(lo, hi) ((bf16_round_bits(hi) & 0xffff0000u) | (bf16_round_bits(lo) >> 16))

/*
 * bfloat16 loops work on pairs: a 32-bit word holds elements 2k and 2k+1, so the conversions are a shift or a
 * mask per word and the results are merged back with one mask and one shift, with no packing or lane shuffles
 * (several times fewer instructions than element-wise conversion, which made the bf16 step compute bound).
 * Words may sit at any even address: pair_t is a 2-aligned alias.
 */
typedef uint32_t pair_t __attribute__((aligned(2), may_alias));

/*
 * Low-precision parameters stepped in float32 (the scheme is described in decoupled/kernels/lowp.py, whose torch
 * ops compute the same bits). Parameters and gradients are bfloat16 or float16 bit patterns (uint16_t); the
 * moments are float32. `exact` keeps a remainder per element (int16 for bfloat16: the master's low 16 bits;
 * float32 for float16: master - param); `stochastic` rounds with counter-based random bits.
 */
enum { LOWP_EXACT = 1, LOWP_STOCHASTIC = 2 };

/* A 32-bit hash with full avalanche (the lowbias32 constants of C. Wellons). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0x735a2d97u;
    x ^= x >> 15;
    return x;
}

/* The key of one rounding of a tensor: stream = (key, count), count already advanced. */
static inline uint32_t rounding_key(const int64_t *stream) {
    return mix32((uint32_t)stream[0] ^ mix32((uint32_t)stream[1]));
}

static inline int f32_bits_are_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

/* bfloat16 high part and int16 low part -> float32: (high << 16) + sign-extended low, modulo 2^32. */
static inline float bf16_join(uint16_t high, uint16_t low) {
    return bits_to_f32(((uint32_t)high << 16) + (uint32_t)(int32_t)(int16_t)low);
}

/* The bfloat16 nearest to float32 bits u, ties away from zero (the split's high part); a NaN stays a quiet NaN. */
static inline uint16_t bf16_nearest_away(uint32_t u) {
    return (uint16_t)(f32_bits_are_nan(u) ? ((u >> 16) | 0x40u) : ((u + 0x8000u) >> 16));
}

/* u rounded to bfloat16 up or down, unbiased: the 16 dropped bits plus 16 random bits, cut off. */
static inline uint16_t bf16_stochastic(uint32_t u, uint32_t random) {
    return (uint16_t)(f32_bits_are_nan(u) ? ((u >> 16) | 0x40u) : ((u + (random >> 16)) >> 16));
}

/* u rounded to float16 up or down, unbiased: in float16's normal range the 13 dropped bits plus 13 random bits,
 * below it the fraction on the grid of 2^-24 against 32 random bits. NaN -> 0x7e00, overflow -> inf. */
static inline uint16_t f16_stochastic(uint32_t u, uint32_t random) {
    const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu, e = a >> 23;
    uint32_t normal = ((a + (random & 0x1fffu)) >> 13) - (112u << 10);
    normal = normal > 0x7c00u ? 0x7c00u : normal;
    const uint64_t mantissa = e ? (uint64_t)((a & 0x7fffffu) | 0x800000u) : (uint64_t)(a & 0x7fffffu);
    const uint32_t shift = 126u - (e ? e : 1u);
    const uint64_t scaled = shift < 56u ? (mantissa << 32) >> shift : 0u;
    const uint32_t subnormal = (uint32_t)(scaled >> 32) + ((uint32_t)scaled > random ? 1u : 0u);
    const uint32_t high = e >= 113u ? normal : subnormal;
    return (uint16_t)(a > 0x7f800000u ? 0x7e00u : (sign | high));
}

#ifdef __FLT16_MAX__
/* float16 bit patterns and floats; a union (not memcpy) so that the loops around them vectorize. */
typedef union {
    uint16_t bits;
    _Float16 value;
} f16_bits;

static inline float f16_bits_to_f32(uint16_t bits) {
    const f16_bits h = {.bits = bits};
    return (float)h.value;
}

static inline uint16_t f32_to_f16_bits(float f) {
    const f16_bits h = {.value = (_Float16)f}; /* round to nearest, ties to even */
    return h.bits;
}
#endif

/*
 * theta - delta rounded stochastically to the bfloat16 or float16 (F16) neighbours of theta (bits `own`), without
 * bias; the same rule as decoupled/kernels/lowp.py round_stochastic_. A change smaller than the gap to the next
 * value in its direction moves there with probability |delta| / gap, on 32 random bits (no float32 rounding of the
 * difference enters: at a decay of 1e-7 it would be a fifth of the change); a larger one rounds the float32
 * difference on its dropped bits.
 */
static inline uint16_t lowp_stochastic(uint16_t own, float theta, float delta, uint32_t random, int F16) {
    const int away = ((delta < 0.0f) == (theta > 0.0f)) || theta == 0.0f;
    uint32_t neighbour = away ? (uint32_t)own + 1u : (uint32_t)own - 1u;
    if (theta == 0.0f) neighbour = delta > 0.0f ? 0x8001u : 1u;
#ifdef __FLT16_MAX__
    const float next = F16 ? f16_bits_to_f32((uint16_t)neighbour) : bf16_to_f32((uint16_t)neighbour);
#else
    const float next = bf16_to_f32((uint16_t)neighbour);
#endif
    const float gap = fabsf(next - theta), size = fabsf(delta);
    const int small = size < gap && (f32_to_bits(theta) & 0x7f800000u) != 0x7f800000u;
    const uint32_t threshold = (uint32_t)(small ? size / gap * 4294967296.0f : 0.0f);
    const uint32_t u = f32_to_bits(theta - delta);
    const uint16_t rounded = F16 ? f16_stochastic(u, random) : bf16_stochastic(u, random);
    return small ? (random < threshold ? (uint16_t)neighbour : own) : rounded;
}

/*
 * The float32 value theta of element i of a low-precision parameter p (uint16_t bits) with remainders x, and the
 * write back of a step that changes it by update u (masked: cautious decay skips the decay of this element):
 * "exact" writes the float32 k * theta - u (k = keep or 1) as parameter and remainder, "stochastic" rounds
 * theta - (f * theta + u) (f = factor or 0) with the element's 32 `random` bits.
 */
#define THETA_BF16_EXACT(p, x, i) bf16_join((p)[i], ((const uint16_t *)(x))[i])
#define THETA_BF16_STOCHASTIC(p, x, i) bf16_to_f32((p)[i])
#define WRITE_BF16_EXACT(p, x, i, theta, u, masked, random)                                              \
    do {                                                                                                 \
        const float out_ = ((masked) ? 1.0f : keep) * (theta) - (u);                                     \
        const uint32_t bits_ = f32_to_bits(out_);                                                        \
        (p)[i] = bf16_nearest_away(bits_);                                                               \
        ((uint16_t *)(x))[i] = (uint16_t)bits_;                                                          \
    } while (0)
#define WRITE_BF16_STOCHASTIC(p, x, i, theta, u, masked, random)                                         \
    ((p)[i] = lowp_stochastic((p)[i], (theta), ((masked) ? 0.0f : factor) * (theta) + (u), (random), 0))
#ifdef __FLT16_MAX__
#define THETA_F16_EXACT(p, x, i) (f16_bits_to_f32((p)[i]) + ((const float *)(x))[i])
#define THETA_F16_STOCHASTIC(p, x, i) f16_bits_to_f32((p)[i])
#define WRITE_F16_EXACT(p, x, i, theta, u, masked, random)                                               \
    do {                                                                                                 \
        const float out_ = ((masked) ? 1.0f : keep) * (theta) - (u);                                     \
        const uint16_t h_ = f32_to_f16_bits(out_);                                                       \
        const float hf_ = f16_bits_to_f32(h_);                                                           \
        (p)[i] = h_;                                                                                     \
        ((float *)(x))[i] = (f32_to_bits(hf_) & 0x7fffffffu) == 0x7f800000u ? 0.0f : out_ - hf_;         \
    } while (0)
#define WRITE_F16_STOCHASTIC(p, x, i, theta, u, masked, random)                                          \
    ((p)[i] = lowp_stochastic((p)[i], (theta), ((masked) ? 0.0f : factor) * (theta) + (u), (random), 1))
#endif

/*
 * Runs the statements given last for i in [begin, end): `random` is element i's 32 random bits when STOCHASTIC (from the
 * tensor's rounding key; see decoupled/kernels/lowp.py random_bits), else 0.
 */
#define FOR_EACH_LOWP_ELEMENT(STOCHASTIC, key, begin, end, ...)                                         \
    for (int64_t lo_ = (begin); lo_ < (end);) {                                                          \
        const int64_t next_ = ((lo_ >> 32) + 1) << 32, stop_ = next_ < (end) ? next_ : (end);            \
        const uint32_t block_ = STOCHASTIC ? mix32((key) + (uint32_t)(lo_ >> 32)) : 0u;                  \
        for (int64_t i = lo_; i < stop_; ++i) {                                                          \
            const uint32_t random = STOCHASTIC ? mix32((uint32_t)i ^ block_) : 0u;                       \
            (void)random;                                                                                \
            __VA_ARGS__;                                                                                 \
        }                                                                                                \
        lo_ = stop_;                                                                                     \
    }

/* Updates elements [begin, end) of tensor `t` of a step; `ctx` is the kernel's own description of the step. */
typedef void (*SegmentFn)(int64_t t, int64_t begin, int64_t end, const void *ctx);

/*
 * Calls `segment` on every element of n tensors (element counts `numels`), all of them seen as one sequence
 * cut into equal contiguous shares, one per thread, so that many small tensors and a few large ones keep every
 * thread equally busy (cutting them into fixed chunks left one of two threads with 11% more work on a mixed
 * 10M-parameter model). Each element is updated once, independently of the others, so the result does not
 * depend on the thread count. A share may begin mid-tensor at an odd index: the bf16 loops then update that
 * element alone with a 16-bit store, never a word a neighbour writes.
 * Returns 0, or -2 when memory for the offset table cannot be had.
 */
static int for_each_share(int64_t n, const int64_t *numels, int num_threads, SegmentFn segment, const void *ctx) {
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
        const int64_t units = (total + SHARE_ALIGN - 1) / SHARE_ALIGN;
        int64_t lo = units * rank / team * SHARE_ALIGN, hi = units * (rank + 1) / team * SHARE_ALIGN;
        if (hi > total) hi = total;
        int64_t t = 0;
        while (t < n && offsets[t + 1] <= lo) ++t;
        for (; t < n && offsets[t] < hi; ++t) {
            const int64_t b = (lo > offsets[t] ? lo : offsets[t]) - offsets[t];
            const int64_t e = (hi < offsets[t + 1] ? hi : offsets[t + 1]) - offsets[t];
            if (b < e) segment(t, b, e, ctx);
        }
    }
    free(offsets);
    return 0;
}

#endif
