/* tokfile.h — pre-tokenized corpora on disk: raw little-endian u16/u32 token
 * streams and llm.c's .bin shards.
 *
 * A .bin shard is a header of 256 little-endian int32 followed by the tokens:
 *   header[0]  magic    20240520 (GPT-2 style, u16 tokens, header[1] = 1)
 *                       20240801 (Llama-3 style, u32 tokens, header[1] = 7)
 *   header[1]  version
 *   header[2]  number of tokens that follow
 * The rest of the header is zero. Raw files are the tokens alone.
 *
 * Readers check everything a corrupt file can get wrong (short header, wrong
 * magic or version, a count the file does not hold, a size that is not a
 * whole number of tokens) and fail with MOE_ERR_IO naming the file. */
#ifndef MOELAB_TRAIN_TOKFILE_H
#define MOELAB_TRAIN_TOKFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "../error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_tokfile_format {
    MOE_TOKFILE_U16,   /* raw little-endian uint16 */
    MOE_TOKFILE_U32,   /* raw little-endian uint32 */
    MOE_TOKFILE_BIN,   /* llm.c shard, magic 20240520 version 1, uint16 tokens */
    MOE_TOKFILE_BIN32, /* llm.c shard, magic 20240801 version 7, uint32 tokens */
    MOE_TOKFILE_FORMAT_COUNT
} moe_tokfile_format;

#define MOE_TOKFILE_HEADER_INTS 256
#define MOE_TOKFILE_MAGIC_U16 20240520
#define MOE_TOKFILE_MAGIC_U32 20240801

/* "u16", "u32", "bin", "bin32". */
const char *moe_tokfile_format_name(moe_tokfile_format f);
bool moe_tokfile_format_parse(const char *name, moe_tokfile_format *out);
/* The format a path names by its extension: .u16, .u32, .bin (a .bin file
 * says in its header whether its tokens are u16 or u32). False for any other
 * path (a text file). */
bool moe_tokfile_format_of_path(const char *path, moe_tokfile_format *out);

/* Read the tokens of PATH into a new array (*TOKENS, free() it; NULL when
 * the file holds none) of *N entries. FORMAT MOE_TOKFILE_BIN accepts both
 * .bin magics. OP names the operation in error messages. */
moe_status moe_tokfile_read(uint32_t **tokens, int64_t *n, const char *path, moe_tokfile_format format,
                            const char *op);

/* Write N tokens to PATH (replacing it) in FORMAT; a token that does not fit
 * the format's width is refused before anything is written. */
moe_status moe_tokfile_write(const char *path, const uint32_t *tokens, int64_t n,
                             moe_tokfile_format format, const char *op);

#ifdef __cplusplus
}
#endif
#endif
