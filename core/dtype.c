/* dtype.c — trait tables for dtypes and devices. */
#include "dtype.h"

#include <math.h>

#include "names.h"

static const struct {
    const char *name;
    size_t size;
    bool is_float;
    int rank; /* promotion order */
} dtype_traits[] = {
    [MOE_F32] = {"f32", 4, true, 4},  [MOE_F64] = {"f64", 8, true, 5},
    [MOE_BF16] = {"bf16", 2, true, 3}, [MOE_I32] = {"i32", 4, false, 1},
    [MOE_I64] = {"i64", 8, false, 2}, [MOE_BOOL] = {"bool", 1, false, 0},
};
_Static_assert(sizeof dtype_traits / sizeof *dtype_traits == MOE_DTYPE_COUNT,
               "one trait row per dtype");

NAME_TABLE(moe_device, device, MOE_DEVICE_COUNT, [MOE_CPU] = "cpu", [MOE_CUDA] = "cuda")

size_t moe_dtype_size(moe_dtype d) { return d < MOE_DTYPE_COUNT ? dtype_traits[d].size : 0; }
const char *moe_dtype_name(moe_dtype d) { return d < MOE_DTYPE_COUNT ? dtype_traits[d].name : "?"; }
bool moe_dtype_is_float(moe_dtype d) { return d < MOE_DTYPE_COUNT && dtype_traits[d].is_float; }

moe_dtype moe_dtype_compute(moe_dtype d)
{
    return (d == MOE_F32 || d == MOE_BF16) ? MOE_F32 : MOE_F64;
}

bool moe_dtype_parse(const char *name, moe_dtype *out)
{
    for (int d = 0; d < MOE_DTYPE_COUNT; d++)
        if (strcmp(name, dtype_traits[d].name) == 0) {
            *out = (moe_dtype)d;
            return true;
        }
    return false;
}

moe_dtype moe_dtype_promote(moe_dtype a, moe_dtype b)
{
    return dtype_traits[a].rank >= dtype_traits[b].rank ? a : b;
}

double moe_dtype_load(moe_dtype d, const void *p)
{
    switch (d) {
    case MOE_F32: return *(const float *)p;
    case MOE_F64: return *(const double *)p;
    case MOE_BF16: return moe_bf16_to_f32(*(const uint16_t *)p);
    case MOE_I32: return *(const int32_t *)p;
    case MOE_I64: return (double)*(const int64_t *)p;
    case MOE_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    default: return NAN;
    }
}

void moe_dtype_store(moe_dtype d, void *p, double v)
{
    switch (d) {
    case MOE_F32: *(float *)p = (float)v; break;
    case MOE_F64: *(double *)p = v; break;
    case MOE_BF16: *(uint16_t *)p = moe_f32_to_bf16((float)v); break;
    case MOE_I32: *(int32_t *)p = (int32_t)v; break;
    case MOE_I64: *(int64_t *)p = (int64_t)v; break;
    case MOE_BOOL: *(uint8_t *)p = v != 0.0; break;
    default: break;
    }
}
