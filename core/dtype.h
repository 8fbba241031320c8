/* dtype.h — element types and devices, with their trait tables. */
#ifndef MOELAB_DTYPE_H
#define MOELAB_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_dtype {
    MOE_F32,
    MOE_F64,
    MOE_BF16, /* storage and conversion; compute happens in f32 */
    MOE_I32,
    MOE_I64,
    MOE_BOOL, /* one byte, 0 or 1 */
    MOE_DTYPE_COUNT
} moe_dtype;

typedef enum moe_device {
    MOE_CPU,
    MOE_CUDA,
    MOE_DEVICE_COUNT
} moe_device;

size_t moe_dtype_size(moe_dtype d);
const char *moe_dtype_name(moe_dtype d);    /* "f32", "bf16", … */
bool moe_dtype_is_float(moe_dtype d);        /* f32 f64 bf16 */
/* The dtype kernels compute in: f32 for f32/bf16, f64 for everything else. */
moe_dtype moe_dtype_compute(moe_dtype d);
/* Parse a name; returns false when unknown. */
bool moe_dtype_parse(const char *name, moe_dtype *out);
/* Result dtype of a binary op (f64 > f32 > bf16 > i64 > i32 > bool). */
moe_dtype moe_dtype_promote(moe_dtype a, moe_dtype b);

const char *moe_device_name(moe_device d); /* "cpu", "cuda" */
bool moe_device_parse(const char *name, moe_device *out);

/* bf16 is the upper half of an f32; conversion rounds to nearest even and
 * keeps NaN a NaN. */
static inline float moe_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t moe_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Read/write one element of any dtype as a double (slow path: tests,
 * bindings, printing). */
double moe_dtype_load(moe_dtype d, const void *p);
void moe_dtype_store(moe_dtype d, void *p, double v);

#ifdef __cplusplus
}
#endif
#endif
