/* safetensors.h — named tensors in the safetensors format, written
 * atomically with a checksum, read back only after every check passed.
 *
 * The format: an 8-byte little-endian length N, then N bytes of JSON (padded
 * with spaces to a multiple of 8)
 *     {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [B, E]}, …,
 *      "__metadata__": {"KEY": "VALUE", …}}
 * then the data: each tensor's elements, row-major and little-endian, at
 * bytes [B, E) of the region after the header, the ranges covering it with no
 * gap and no overlap. Dtypes: F64 F32 BF16 I64 I32 BOOL.
 *
 * moelab's files carry "moelab.checksum": "sha256" and "moelab.sha256" in
 * __metadata__: the SHA-256 (hex) of the whole file with the 64 hex digits
 * of that value replaced by '0'. A load verifies it when present; files from
 * other writers load after the structural checks alone. The two keys come
 * together, so that a damaged key name is caught too: a file with one and
 * not the other fails.
 *
 *     moe_safetensors_save("w.safetensors", 2, (const char *[]){"a", "b"},
 *                          (moe_tensor *[]){a, b}, 0, NULL, NULL);
 *     moe_safetensors *st;
 *     if (moe_safetensors_load(&st, "w.safetensors") != MOE_OK) puts(moe_last_error());
 *     moe_tensor *a2 = moe_safetensors_get(st, "a");      // borrowed
 *     moe_safetensors_free(st);
 */
#ifndef MOELAB_TRAIN_SAFETENSORS_H
#define MOELAB_TRAIN_SAFETENSORS_H

#include <stdint.h>
#include "../error.h"
#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest header a load accepts (bytes). */
#define MOE_SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)
/* The metadata key of moelab's checksum. */
#define MOE_SAFETENSORS_CHECKSUM_KEY "moelab.sha256"
#define MOE_SAFETENSORS_SCHEME_KEY "moelab.checksum"

/* What a load returns: the tensors in file order (by data offset) and the
 * metadata. Everything is owned by the struct. */
typedef struct moe_safetensors {
    int count;
    char **names;
    moe_tensor **tensors; /* contiguous, on the CPU */
    int meta_count;
    char **meta_keys;
    char **meta_values;
} moe_safetensors;

/* Write N tensors (any dtype above, any strides, on the CPU) under NAMES
 * (distinct, non-empty, not "__metadata__") and NMETA string pairs of
 * metadata to PATH, atomically (see moe_file_write_atomic) and with the
 * checksum added. Fails naming save-tensors and the file or the tensor. */
moe_status moe_safetensors_save(const char *path, int n, const char *const *names,
                                moe_tensor *const *tensors, int nmeta,
                                const char *const *meta_keys, const char *const *meta_values);
/* The same, naming OP in its errors (save-model, save-checkpoint, …). */
moe_status moe_safetensors_save_op(const char *op, const char *path, int n,
                                   const char *const *names, moe_tensor *const *tensors,
                                   int nmeta, const char *const *meta_keys,
                                   const char *const *meta_values);

/* Read PATH: the header length (at most MOE_SAFETENSORS_MAX_HEADER and
 * within the file), the JSON, each entry's dtype, shape and offsets (in
 * range, matching the shape, no overlap, no gap, data to the end of the
 * file), BOOL values 0 or 1, and the checksum when present. Fails naming
 * load-tensors, the file and the tensor; *OUT is set only on success. */
moe_status moe_safetensors_load(moe_safetensors **out, const char *path);
moe_status moe_safetensors_load_op(const char *op, moe_safetensors **out, const char *path);
void moe_safetensors_free(moe_safetensors *st); /* NULL is fine */

/* The tensor NAME (borrowed) or NULL; the metadata value of KEY or NULL. */
moe_tensor *moe_safetensors_get(const moe_safetensors *st, const char *name);
const char *moe_safetensors_meta(const moe_safetensors *st, const char *key);

/* Write the NPARTS buffers PARTS/LENS, one after the other, to PATH so that
 * PATH holds either its old contents or all the new ones, whatever happens:
 * a temporary file in the same directory, written and fsynced, renamed over
 * PATH, then the directory fsynced. Errors name OP and the file. */
moe_status moe_file_write_atomic(const char *op, const char *path, int nparts,
                                 const void *const *parts, const size_t *lens);
/* fsync the directory DIR (after a rename into it). */
moe_status moe_dir_sync(const char *op, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
