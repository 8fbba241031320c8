/* tokfile.c — raw u16/u32 token files and llm.c .bin shards, read and written
 * byte by byte in little-endian order (independent of the host's) by the
 * token-stream kernels (kernels/cpu/tokens.c). */
#include "tokfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/tokens.h"
#include "../names.h"
#include "source.h"

NAME_TABLE(moe_tokfile_format, tokfile_format, MOE_TOKFILE_FORMAT_COUNT, [MOE_TOKFILE_U16] = "u16",
           [MOE_TOKFILE_U32] = "u32", [MOE_TOKFILE_BIN] = "bin", [MOE_TOKFILE_BIN32] = "bin32")

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

bool moe_tokfile_format_of_path(const char *path, moe_tokfile_format *out)
{
    if (ends_with(path, ".bin")) *out = MOE_TOKFILE_BIN;
    else if (ends_with(path, ".u16")) *out = MOE_TOKFILE_U16;
    else if (ends_with(path, ".u32")) *out = MOE_TOKFILE_U32;
    else return false;
    return true;
}

/* N tokens of WIDTH bytes at P into a new array. */
static moe_status decode(uint32_t **tokens, const unsigned char *p, int64_t n, int width, const char *path,
                         const char *op)
{
    *tokens = NULL;
    if (n == 0) return MOE_OK;
    uint32_t *t = malloc((size_t)n * sizeof *t);
    if (!t) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes reading %lld tokens of '%s'", (size_t)n * sizeof *t,
                            (long long)n, path);
    moe_cpu_tokens_unpack(t, p, n, width);
    *tokens = t;
    return MOE_OK;
}

/* The tokens of a .bin shard held in DATA[0, LEN). */
static moe_status read_bin(uint32_t **tokens, int64_t *n, const unsigned char *data, size_t len,
                           const char *path, const char *op)
{
    const size_t header = MOE_TOKFILE_HEADER_INTS * 4;
    if (len < header)
        return moe_fail(MOE_ERR_IO, op,
                        "'%s' is truncated: %zu bytes, shorter than the %zu-byte header of a .bin token file",
                        path, len, header);
    uint32_t head[3]; /* magic, version, token count */
    moe_cpu_tokens_unpack(head, data, 3, 4);
    int32_t magic = (int32_t)head[0], version = (int32_t)head[1], count = (int32_t)head[2];
    int width;
    if (magic == MOE_TOKFILE_MAGIC_U16 && version == 1) width = 2;
    else if (magic == MOE_TOKFILE_MAGIC_U32 && version == 7) width = 4;
    else if (magic == MOE_TOKFILE_MAGIC_U16 || magic == MOE_TOKFILE_MAGIC_U32)
        return moe_fail(MOE_ERR_IO, op, "'%s': unsupported .bin version %d for magic %d (expected %d)", path,
                        (int)version, (int)magic, magic == MOE_TOKFILE_MAGIC_U16 ? 1 : 7);
    else
        return moe_fail(MOE_ERR_IO, op,
                        "'%s' is not a .bin token file: bad magic %d (expected %d with u16 tokens "
                        "or %d with u32 tokens)",
                        path, (int)magic, MOE_TOKFILE_MAGIC_U16, MOE_TOKFILE_MAGIC_U32);
    if (count < 0)
        return moe_fail(MOE_ERR_IO, op, "'%s': the header's token count %d is negative", path, (int)count);
    size_t body = len - header, want = (size_t)count * (size_t)width;
    if (body < want)
        return moe_fail(MOE_ERR_IO, op,
                        "'%s' is truncated: its header counts %d tokens (%zu bytes) but %zu bytes follow "
                        "the header",
                        path, (int)count, want, body);
    if (body > want)
        return moe_fail(MOE_ERR_IO, op, "'%s': %zu bytes follow the %d tokens its header counts", path,
                        body - want, (int)count);
    MOE_TRY(decode(tokens, data + header, count, width, path, op));
    *n = count;
    return MOE_OK;
}

moe_status moe_tokfile_read(uint32_t **tokens, int64_t *n, const char *path, moe_tokfile_format format,
                            const char *op)
{
    if ((unsigned)format >= MOE_TOKFILE_FORMAT_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown token file format %d", (int)format);
    char *data;
    size_t len;
    MOE_TRY(moe_read_file(&data, &len, path, op));
    const unsigned char *bytes = (const unsigned char *)data;
    moe_status st;
    if (format == MOE_TOKFILE_BIN || format == MOE_TOKFILE_BIN32) {
        st = read_bin(tokens, n, bytes, len, path, op);
    } else {
        int width = format == MOE_TOKFILE_U16 ? 2 : 4;
        if (len % (size_t)width) {
            st = moe_fail(MOE_ERR_IO, op, "'%s': %zu bytes is not a whole number of %s tokens", path, len,
                          tokfile_format_names[format]);
        } else {
            st = decode(tokens, bytes, (int64_t)(len / (size_t)width), width, path, op);
            if (st == MOE_OK) *n = (int64_t)(len / (size_t)width);
        }
    }
    free(data);
    return st;
}

moe_status moe_tokfile_write(const char *path, const uint32_t *tokens, int64_t n, moe_tokfile_format format,
                             const char *op)
{
    if ((unsigned)format >= MOE_TOKFILE_FORMAT_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown token file format %d", (int)format);
    if (n < 0) return moe_fail(MOE_ERR_ARG, op, "negative token count %lld", (long long)n);
    bool bin = format == MOE_TOKFILE_BIN || format == MOE_TOKFILE_BIN32;
    int width = format == MOE_TOKFILE_U16 || format == MOE_TOKFILE_BIN ? 2 : 4;
    if (bin && n > INT32_MAX)
        return moe_fail(MOE_ERR_ARG, op, "%lld tokens do not fit a .bin header (at most %d)", (long long)n,
                        INT32_MAX);
    int64_t bad = width == 2 ? moe_cpu_tokens_find_outside(tokens, n, 0x10000) : -1;
    if (bad >= 0)
        return moe_fail(MOE_ERR_VALUE, op, "token %u at position %lld does not fit the %s format (u16)",
                        (unsigned)tokens[bad], (long long)bad, tokfile_format_names[format]);
    size_t header = bin ? MOE_TOKFILE_HEADER_INTS * 4 : 0, size = header + (size_t)n * (size_t)width;
    unsigned char *buf = calloc(size ? size : 1, 1);
    if (!buf) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes writing '%s'", size ? size : 1, path);
    if (bin) { /* magic, version, token count; the rest of the header stays zero */
        uint32_t head[3] = {format == MOE_TOKFILE_BIN ? MOE_TOKFILE_MAGIC_U16 : MOE_TOKFILE_MAGIC_U32,
                            format == MOE_TOKFILE_BIN ? 1 : 7, (uint32_t)n};
        moe_cpu_tokens_pack(buf, head, 3, 4);
    }
    moe_cpu_tokens_pack(buf + header, tokens, n, width);
    moe_status st = MOE_OK;
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = moe_fail(MOE_ERR_IO, op, "cannot create '%s': %s", path, strerror(errno));
    } else {
        size_t put = fwrite(buf, 1, size, f);
        if (fclose(f) != 0 || put != size) st = moe_fail(MOE_ERR_IO, op, "cannot write '%s'", path);
    }
    free(buf);
    return st;
}
