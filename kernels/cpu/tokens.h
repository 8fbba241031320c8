/* tokens.h — CPU loops over token streams: the byte tokenizer
 * (core/train/tokenizer.c), token files (core/train/tokfile.c) and the
 * dataset's packed streams (core/train/dataset.c). Ids are uint32_t; N is
 * the number of tokens. */
#ifndef MOELAB_CPU_TOKENS_H
#define MOELAB_CPU_TOKENS_H

#include <stdint.h>

/* Position of the first id of IDS [N] that is VOCAB or more, or -1 when all
 * fit a vocabulary of VOCAB ids. */
int64_t moe_cpu_tokens_find_outside(const uint32_t *ids, int64_t n, int64_t vocab);

/* The byte tokenizer: IDS [N] ← BYTES [N] (one id per byte, 0 … 255), and
 * back: BYTES [N] ← IDS [N] (every id below 256). */
void moe_cpu_tokens_from_bytes(uint32_t *ids, const char *bytes, int64_t n);
void moe_cpu_tokens_to_bytes(char *bytes, const uint32_t *ids, int64_t n);

/* Token files, little-endian whatever the host: IDS [N] ← P [N·WIDTH], and
 * P [N·WIDTH] ← IDS [N] (WIDTH 2 or 4 bytes; ids that do not fit 2 bytes keep
 * their low bytes). */
void moe_cpu_tokens_unpack(uint32_t *ids, const unsigned char *p, int64_t n, int width);
void moe_cpu_tokens_pack(unsigned char *p, const uint32_t *ids, int64_t n, int width);

/* OUT [N] (i64, as the model reads ids) ← IDS [N]. */
void moe_cpu_tokens_widen(int64_t *out, const uint32_t *ids, int64_t n);

#endif
