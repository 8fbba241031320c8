/* tokens.c — loops over token streams (see tokens.h). */
#include "tokens.h"

int64_t moe_cpu_tokens_find_outside(const uint32_t *ids, int64_t n, int64_t vocab)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= (uint64_t)vocab) return i;
    return -1;
}

void moe_cpu_tokens_from_bytes(uint32_t *ids, const char *bytes, int64_t n)
{
    for (int64_t i = 0; i < n; i++) ids[i] = (unsigned char)bytes[i];
}

void moe_cpu_tokens_to_bytes(char *bytes, const uint32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++) bytes[i] = (char)ids[i];
}
