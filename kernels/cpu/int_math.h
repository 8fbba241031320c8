/* int_math.h — integer helpers that more than one CPU kernel uses. */
#ifndef MOELAB_CPU_INT_MATH_H
#define MOELAB_CPU_INT_MATH_H

#include <stdint.h>

static inline int64_t min64(int64_t x, int64_t y)
{
    return x < y ? x : y;
}

#endif
