/*
 * Shared by the native kernels (sgd.c, adam.c): bfloat16 conversions and the split of a step's elements into
 * one contiguous share per thread. Plain C11 + OpenMP; no torch headers. Built by decoupled/kernels/native.py.
 */
#ifndef DECOUPLED_COMMON_H
#define DECOUPLED_COMMON_H

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
