/* The inner loops of the FP8 block-scaled, MXFP4 and ggml Q8_0 kernels (ops/fp8.py, ops/mxfp4.py,
 * ops/ggml.py), built
 * into a shared library when mapspec is installed (hatch_build.py) and called through ctypes
 * (native.py), which releases the GIL.
 *
 * numpy runs these kernels as chains of whole-array passes, each writing a temporary the size
 * of a slice: about ten passes to round a bf16 value to e4m3, 5 ns a value on this project's
 * 2-core machine, where the disk would allow under 1. Here each row is worked on in one or
 * a few simple passes, in L1 cache. The float32 operations are numpy's, in the same order (a product
 * rounded once, the same bit-level rounding to e4m3), so the bits are the same: the tests hold
 * the two to each other and both to ml_dtypes and transformers. Built without -ffast-math
 * (no reassociation) and with -ffp-contract=off (no fused multiply-adds).
 *
 * The callers check every shape, dtype and contiguity before calling: these loops trust them.
 */

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(MAPSPEC_ONE_BODY)
/* one body per instruction set, the best chosen when the library loads (ifunc); a GCC too
 * old for the x86-64-vN names (before 11) builds again with -DMAPSPEC_ONE_BODY */
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "arch=x86-64-v2", "default")))
#else
#define VECTORIZED
#endif

/* The calling convention of this file's functions: native.py refuses a library whose number
 * is not its own (a library built from an older source, left beside a newer one). */
int kernels_abi(void) { return 5; }

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* out[i / bm][j / bn] = max(bits[i][j] & mask) over a slice of whole block rows: the block
 * maxima of the magnitudes of float bits (bf16/fp16 as uint16, fp32 as uint32: their order
 * is that of |x|, NaN above infinity). A column's maximum over a block row first, then the
 * maximum over each block's columns. `column` is scratch of `cols` elements. */
#define BLOCK_MAX(NAME, T)                                                                    \
    VECTORIZED void NAME(const T *bits, int64_t rows, int64_t cols, int64_t bm, int64_t bn,  \
                         T mask, T *column, T *out) {                                         \
        int64_t blocks = (cols + bn - 1) / bn;                                                \
        for (int64_t i0 = 0; i0 < rows; i0 += bm) {                                           \
            memset(column, 0, (size_t)cols * sizeof(T));                                      \
            for (int64_t i = i0; i < min64(rows, i0 + bm); i++) {                             \
                const T *row = bits + i * cols;                                               \
                for (int64_t j = 0; j < cols; j++) {                                          \
                    T v = row[j] & mask;                                                      \
                    column[j] = v > column[j] ? v : column[j];                                \
                }                                                                             \
            }                                                                                 \
            T *maxima = out + (i0 / bm) * blocks;                                             \
            for (int64_t b = 0; b < blocks; b++) {                                            \
                T m = 0;                                                                      \
                for (int64_t j = b * bn; j < min64(cols, b * bn + bn); j++)                   \
                    m = column[j] > m ? column[j] : m;                                        \
                maxima[b] = m;                                                                \
            }                                                                                 \
        }                                                                                     \
    }

BLOCK_MAX(block_max_u16, uint16_t)
BLOCK_MAX(block_max_u32, uint32_t)

/* float32 -> e4m3 code, for |y| clamped to 448 first: the mantissa rounded to 3 bits,
 * nearest even, on the bits (+ 0x7FFFF and the bit above it, at bit 20), the exponent
 * rebased from 127 to 7 (- 960 << 20), magnitudes from 448 up (infinity too) taken as 448;
 * below 2 ** -6 rint(|y| * 512), by adding and taking away 2 ** 23 in float32 (exact, to
 * even; without -ffast-math the compiler keeps both); NaN -> 0x7F; the sign kept. The
 * choices are masks, not branches: a loop with branches is not vectorized below AVX-512. */
static inline uint8_t e4m3_code(float y) {
    uint32_t bits;
    memcpy(&bits, &y, 4); /* the bits of a float: a register move, and vectorizable */
    int32_t a = (int32_t)(bits & 0x7FFFFFFFu);
    int32_t clamped = a < 0x43E00000 ? a : 0x43E00000;
    int32_t normal = (clamped + (int32_t)(0x7FFFF - (960 << 20)) + ((clamped >> 20) & 1)) >> 20;
    float magnitude;
    memcpy(&magnitude, &a, 4);
    int32_t small = (int32_t)((magnitude * 512.0f + 8388608.0f) - 8388608.0f);
    int32_t is_small = -(int32_t)(a < 0x3C800000), is_nan = -(int32_t)(a > 0x7F800000);
    int32_t c = (small & is_small) | (normal & ~is_small);
    c = (0x7F & is_nan) | (c & ~is_nan);
    return (uint8_t)((uint32_t)c | ((bits >> 24) & 0x80u));
}

/* q = e4m3(clamp(float32(x) * scale of its block, -448, 448)) for a slice of whole block rows
 * (`scale`: the slice's block rows of float32 scales, ceil(cols / bn) per row); x is bf16 bits
 * (uint16, shifted into a float32) or float32 bits. One pass per row, which x86-64-v2 and up
 * vectorize (0.35 ns a value with AVX-512 here; three passes through a float32 row took
 * 0.47); `per_column` (cols floats) holds each column's scale, once per block row. */
#define QUANTIZE(NAME, T, SHIFT)                                                               \
    VECTORIZED void NAME(const T *restrict x, int64_t rows, int64_t cols, int64_t bm,          \
                         int64_t bn, const float *restrict scale, float *restrict per_column,  \
                         uint8_t *restrict q) {                                                \
        int64_t blocks = (cols + bn - 1) / bn;                                                 \
        for (int64_t i = 0; i < rows; i++) {                                                   \
            if (i % bm == 0) {                                                                 \
                const float *s = scale + (i / bm) * blocks;                                    \
                for (int64_t j = 0; j < cols; j++)                                             \
                    per_column[j] = s[j / bn];                                                 \
            }                                                                                  \
            const T *restrict row = x + i * cols;                                              \
            uint8_t *restrict out = q + i * cols;                                              \
            for (int64_t j = 0; j < cols; j++) {                                               \
                uint32_t v = (uint32_t)row[j] << SHIFT;                                        \
                float f;                                                                       \
                memcpy(&f, &v, 4);                                                             \
                out[j] = e4m3_code(f * per_column[j]);                                         \
            }                                                                                  \
        }                                                                                      \
    }

QUANTIZE(quantize_e4m3_bf16, uint16_t, 16)
QUANTIZE(quantize_e4m3_f32, uint32_t, 0)

/* out[i][j] = table[j / bn][codes[i][j]]: rows of one-byte codes looked up in the tables of
 * 256 results of their column block. */
#define GATHER(NAME, T)                                                                       \
    void NAME(const uint8_t *codes, int64_t rows, int64_t cols, int64_t bn, const T *table,   \
              T *out) {                                                                       \
        int64_t blocks = (cols + bn - 1) / bn;                                                \
        for (int64_t i = 0; i < rows; i++) {                                                  \
            const uint8_t *src = codes + i * cols;                                            \
            T *dst = out + i * cols;                                                          \
            for (int64_t b = 0; b < blocks; b++) {                                            \
                const T *t = table + b * 256;                                                 \
                for (int64_t j = b * bn; j < min64(cols, b * bn + bn); j++)                   \
                    dst[j] = t[src[j]];                                                       \
            }                                                                                 \
        }                                                                                     \
    }

GATHER(gather_blocks_u16, uint16_t)
GATHER(gather_blocks_u32, uint32_t)

/* MXFP4 experts -> the transposed layout of the model: for each row r of a slice of N (its
 * `groups` blocks of 16 bytes, two E2M1 values a byte, and one E8M0 scale byte a block),
 * table[scale << 8 | byte] holds the byte's two output values (low, then high), and they go
 * to column r of out, rows 32 g + 2 b and 32 g + 2 b + 1: out is a (32 groups) x rows view
 * with `stride` elements between its rows. Rows are taken TILE at a time and each block's
 * 32 x TILE values gathered in `tile` first, so that out is written TILE adjacent elements
 * (a whole cache line) at a time rather than one element per line, and per memory page. */
#define TILE 32
#define MXFP4(NAME, T, PAIR, BITS)                                                            \
    void NAME(const uint8_t *restrict blocks, const uint8_t *restrict scales, int64_t rows,   \
              int64_t groups, const PAIR *restrict table, T *restrict out, int64_t stride) {  \
        T tile[32][TILE];                                                                     \
        for (int64_t r0 = 0; r0 < rows; r0 += TILE) {                                         \
            int64_t n = min64(TILE, rows - r0);                                               \
            for (int64_t g = 0; g < groups; g++) {                                            \
                for (int64_t r = 0; r < n; r++) {                                             \
                    int64_t block = (r0 + r) * groups + g;                                    \
                    const PAIR *t = table + ((size_t)scales[block] << 8);                     \
                    const uint8_t *bytes = blocks + block * 16;                               \
                    for (int64_t b = 0; b < 16; b++) {                                        \
                        PAIR p = t[bytes[b]];                                                 \
                        tile[2 * b][r] = (T)p;                                                \
                        tile[2 * b + 1][r] = (T)(p >> BITS);                                  \
                    }                                                                         \
                }                                                                             \
                for (int64_t k = 0; k < 32; k++)                                              \
                    memcpy(out + (g * 32 + k) * stride + r0, tile[k], (size_t)n * sizeof(T)); \
            }                                                                                 \
        }                                                                                     \
    }

MXFP4(mxfp4_dequantize_u16, uint16_t, uint32_t, 16)
MXFP4(mxfp4_dequantize_u32, uint32_t, uint64_t, 32)

/* float32 -> IEEE half bits, rounded to nearest even as numpy's astype(float16): subnormal
 * halves included, past 65520 infinity, NaN kept NaN (quiet, the top of its payload kept). */
static inline uint16_t half_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7FFFFFFF;
    if (a >= 0x7F800000) /* infinity, or NaN with its payload's top bits (never 0: quiet) */
        return sign | (a == 0x7F800000 ? 0x7C00 : (uint16_t)(0x7E00 | ((a >> 13) & 0x3FF)));
    if (a >= 0x477FF000) /* 65520 and up round to infinity */
        return sign | 0x7C00;
    if (a >= 0x38800000) { /* normal half: drop 13 bits, nearest even */
        uint32_t r = a + 0xFFF + ((a >> 13) & 1);
        return sign | (uint16_t)((r - 0x38000000) >> 13);
    }
    if (a < 0x33000000) /* below half the smallest subnormal: zero */
        return sign;
    /* subnormal half: the significand with its implicit one, shifted to 2 ** -24 units */
    uint32_t e = a >> 23, m = (a & 0x7FFFFF) | 0x800000;
    uint32_t shift = 126 - e; /* 14 for 2 ** -15, up to 24 */
    uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    q += (rest > half) | ((rest == half) & (q & 1));
    return sign | (uint16_t)q;
}

/* ggml Q8_0 of `blocks` blocks of 32 values, bf16 bits (uint16) or float32, as gguf-py's
 * quantize_q8_0 computes it: d = max |x| / 127 (on the magnitudes' bits, so a NaN makes d NaN),
 * q = round half away from zero of |x| * (1 / d) with x's sign (0 where d is 0), d stored as
 * float16 then the 32 int8 codes, 34 bytes a block. The caller checks the scales (a NaN or
 * infinite d is refused). */
#define Q8_0(NAME, T, SHIFT)                                                                  \
    VECTORIZED void NAME(const T *in, int64_t blocks, uint8_t *out) {                        \
        for (int64_t b = 0; b < blocks; b++) {                                                \
            const T *x = in + b * 32;                                                         \
            uint32_t mag[32], amax = 0;                                                       \
            for (int k = 0; k < 32; k++) {                                                    \
                mag[k] = ((uint32_t)x[k] << SHIFT) & 0x7FFFFFFF;                              \
                amax = mag[k] > amax ? mag[k] : amax;                                         \
            }                                                                                 \
            float m, d, id;                                                                   \
            memcpy(&m, &amax, 4);                                                             \
            d = m / 127.0f;                                                                   \
            id = d != 0.0f ? 1.0f / d : 0.0f;                                                 \
            uint16_t h = half_bits(d);                                                        \
            uint8_t *o = out + b * 34;                                                        \
            memcpy(o, &h, 2);                                                                 \
            if (amax >= 0x7F800000u) { /* NaN or infinity: refused by the caller; no float */ \
                memset(o + 2, 0, 32); /* -> int conversion of NaN (undefined in C) */         \
                continue;                                                                     \
            }                                                                                 \
            for (int k = 0; k < 32; k++) {                                                    \
                float v;                                                                      \
                memcpy(&v, &mag[k], 4);                                                       \
                uint32_t q = (uint32_t)(int32_t)(v * id + 0.49999997f); /* 0..127 */          \
                o[2 + k] = (uint8_t)((((uint32_t)x[k] << SHIFT) >> 31) ? 0u - q : q);         \
            }                                                                                 \
        }                                                                                     \
    }

Q8_0(quantize_q8_0_bf16, uint16_t, 16)
Q8_0(quantize_q8_0_f32, uint32_t, 0)
