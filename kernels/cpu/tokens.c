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

void moe_cpu_tokens_unpack(uint32_t *ids, const unsigned char *p, int64_t n, int width)
{
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *b = p + i * width;
        ids[i] = width == 2 ? (uint32_t)b[0] | (uint32_t)b[1] << 8
                            : (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    }
}

void moe_cpu_tokens_pack(unsigned char *p, const uint32_t *ids, int64_t n, int width)
{
    for (int64_t i = 0; i < n; i++) {
        unsigned char *b = p + i * width;
        for (int k = 0; k < width; k++) b[k] = (unsigned char)(ids[i] >> (8 * k));
    }
}

void moe_cpu_tokens_widen(int64_t *out, const uint32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = ids[i];
}
