/* safetensors.c — the safetensors format (see safetensors.h): header through
 * jansson, checksum through libcrypto's SHA-256. A load reads the whole file,
 * checks everything, and only then makes tensors. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "../../kernels/cpu/copy.h"
#include "safetensors.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c writes the host's bytes; it assumes a little-endian host"
#endif

#define SHA_HEX 64

static const char *const FILE_DTYPES[MOE_DTYPE_COUNT] = {
    [MOE_F32] = "F32", [MOE_F64] = "F64", [MOE_BF16] = "BF16",
    [MOE_I32] = "I32", [MOE_I64] = "I64", [MOE_BOOL] = "BOOL",
};

static bool file_dtype_parse(const char *s, moe_dtype *out)
{
    for (int d = 0; d < MOE_DTYPE_COUNT; d++) {
        if (strcmp(s, FILE_DTYPES[d]) == 0) {
            *out = (moe_dtype)d;
            return true;
        }
    }
    return false;
}

static void to_hex(const unsigned char *md, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA_HEX / 2; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[SHA_HEX] = '\0';
}

/* SHA-256 (hex) of the NPARTS buffers one after the other. */
static moe_status sha256_hex(const char *op, int nparts, const void *const *parts,
                             const size_t *lens, char *hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (int i = 0; ok && i < nparts; i++) ok = EVP_DigestUpdate(ctx, parts[i], lens[i]) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == SHA_HEX / 2;
    EVP_MD_CTX_free(ctx);
    if (!ok) return moe_fail(MOE_ERR_BACKEND, op, "SHA-256 failed in libcrypto");
    to_hex(md, hex);
    return MOE_OK;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ---- save -------------------------------------------------------------------- */

static moe_status check_save_args(const char *op, const char *path, int n,
                                  const char *const *names, moe_tensor *const *tensors,
                                  int nmeta, const char *const *keys, const char *const *values)
{
    if (!path || !*path) return moe_fail(MOE_ERR_ARG, op, "no file name given");
    if (n < 0 || nmeta < 0) return moe_fail(MOE_ERR_ARG, op, "%s: negative count", path);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !*names[i])
            return moe_fail(MOE_ERR_ARG, op, "%s: tensor %d has an empty name", path, i);
        if (strcmp(names[i], "__metadata__") == 0)
            return moe_fail(MOE_ERR_ARG, op, "%s: \"__metadata__\" is reserved, not a tensor name",
                            path);
        if (!tensors[i])
            return moe_fail(MOE_ERR_ARG, op, "%s: tensor \"%s\" is missing", path, names[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return moe_fail(MOE_ERR_ARG, op, "%s: the name \"%s\" is given twice", path,
                                names[i]);
    }
    for (int i = 0; i < nmeta; i++) {
        if (!keys[i] || !values[i])
            return moe_fail(MOE_ERR_ARG, op, "%s: metadata entry %d is missing", path, i);
        if (strcmp(keys[i], MOE_SAFETENSORS_CHECKSUM_KEY) == 0 ||
            strcmp(keys[i], MOE_SAFETENSORS_SCHEME_KEY) == 0)
            return moe_fail(MOE_ERR_ARG, op, "%s: the metadata key \"%s\" is reserved (the checksum)",
                            path, keys[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(keys[i], keys[j]) == 0)
                return moe_fail(MOE_ERR_ARG, op, "%s: the metadata key \"%s\" is given twice", path,
                                keys[i]);
    }
    return MOE_OK;
}

static moe_status build_header(const char *op, const char *path, int n, const char *const *names,
                               moe_tensor *const *tensors, int nmeta, const char *const *keys,
                               const char *const *values, json_t **out, size_t *data_len)
{
    char zeros[SHA_HEX + 1];
    memset(zeros, '0', SHA_HEX);
    zeros[SHA_HEX] = '\0';
    json_t *root = json_object(), *meta = json_object();
    bool ok = root && meta;
    for (int i = 0; ok && i < nmeta; i++) ok = json_object_set_new(meta, keys[i], json_string(values[i])) == 0;
    ok = ok && json_object_set_new(meta, MOE_SAFETENSORS_SCHEME_KEY, json_string("sha256")) == 0;
    ok = ok && json_object_set_new(meta, MOE_SAFETENSORS_CHECKSUM_KEY, json_string(zeros)) == 0;
    ok = ok && json_object_set(root, "__metadata__", meta) == 0;
    json_decref(meta);
    size_t at = 0;
    for (int i = 0; ok && i < n; i++) {
        const moe_tensor *t = tensors[i];
        json_t *shape = json_array(), *offs = json_array(), *entry = json_object();
        ok = shape && offs && entry;
        for (int d = 0; ok && d < t->ndim; d++) ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
        size_t nb = moe_tensor_nbytes(t);
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)at)) == 0 &&
             json_array_append_new(offs, json_integer((json_int_t)(at + nb))) == 0 &&
             json_object_set_new(entry, "dtype", json_string(FILE_DTYPES[t->dtype])) == 0 &&
             json_object_set(entry, "shape", shape) == 0 &&
             json_object_set(entry, "data_offsets", offs) == 0 &&
             json_object_set(root, names[i], entry) == 0;
        json_decref(shape);
        json_decref(offs);
        json_decref(entry);
        if (!ok) {
            /* a name that is not valid UTF-8 is the likely cause */
            json_decref(root);
            return moe_fail(MOE_ERR_ARG, op, "%s: cannot describe tensor \"%s\" in the header "
                            "(names must be UTF-8)", path, names[i]);
        }
        at += nb;
    }
    if (!ok) {
        json_decref(root);
        return moe_fail(MOE_ERR_ARG, op, "%s: cannot build the header (metadata must be UTF-8)", path);
    }
    *out = root;
    *data_len = at;
    return MOE_OK;
}

moe_status moe_safetensors_save_op(const char *op, const char *path, int n,
                                   const char *const *names, moe_tensor *const *tensors,
                                   int nmeta, const char *const *keys, const char *const *values)
{
    MOE_TRY(check_save_args(op, path, n, names, tensors, nmeta, keys, values));
    json_t *root = NULL;
    size_t data_len = 0;
    MOE_TRY(build_header(op, path, n, names, tensors, nmeta, keys, values, &root, &data_len));
    char *json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!json) return moe_fail(MOE_ERR_NOMEM, op, "%s: cannot format the header", path);
    size_t jlen = strlen(json), hlen = (jlen + 7) / 8 * 8;
    moe_status st = MOE_OK;
    unsigned char lenbuf[8];
    char *header = malloc(hlen ? hlen : 1);
    unsigned char *data = malloc(data_len ? data_len : 1);
    if (!header || !data) {
        st = moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for %zu bytes of data", path, data_len);
        goto done;
    }
    memcpy(header, json, jlen);
    memset(header + jlen, ' ', hlen - jlen);
    put_le64(lenbuf, hlen);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        MOE_TRYG(moe_tensor_to_host(tensors[i], tensors[i]->dtype, data + at));
        at += moe_tensor_nbytes(tensors[i]);
    }
    /* The checksum: the file with the placeholder zeros, then the digits in place. */
    static const char key[] = "\"" MOE_SAFETENSORS_CHECKSUM_KEY "\":\"";
    char *slot = strstr(header, key);
    if (!slot) {
        st = moe_fail(MOE_ERR_STATE, op, "%s: checksum slot missing from the header", path);
        goto done;
    }
    slot += sizeof key - 1;
    char hex[SHA_HEX + 1];
    const void *parts[3] = {lenbuf, header, data};
    size_t lens[3] = {8, hlen, data_len};
    MOE_TRYG(sha256_hex(op, 3, parts, lens, hex));
    memcpy(slot, hex, SHA_HEX);
    st = moe_file_write_atomic(op, path, 3, parts, lens);
done:
    free(json);
    free(header);
    free(data);
    return st;
}

moe_status moe_safetensors_save(const char *path, int n, const char *const *names,
                                moe_tensor *const *tensors, int nmeta,
                                const char *const *meta_keys, const char *const *meta_values)
{
    return moe_safetensors_save_op("save-tensors", path, n, names, tensors, nmeta, meta_keys,
                                   meta_values);
}

/* ---- load -------------------------------------------------------------------- */

typedef struct entry {
    const char *name; /* borrowed from the JSON */
    moe_dtype dtype;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
    uint64_t begin, end;
} entry;

static int by_begin(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static moe_status read_file(const char *op, const char *path, unsigned char **buf, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return moe_fail(MOE_ERR_IO, op, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return moe_fail(MOE_ERR_IO, op, "%s is not a regular file", path);
    }
    size_t n = (size_t)sb.st_size;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for the file's %zu bytes", path, n);
    }
    size_t got = fread(b, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (got != n || err) {
        free(b);
        return moe_fail(MOE_ERR_IO, op, "cannot read %s (%zu of %zu bytes)", path, got, n);
    }
    *buf = b;
    *size = n;
    return MOE_OK;
}

/* Parse one tensor entry of the header into E. */
static moe_status parse_entry(const char *op, const char *path, const char *name, json_t *j,
                              entry *e)
{
    e->name = name;
    if (!json_is_object(j))
        return moe_fail(MOE_ERR_VALUE, op, "%s: tensor \"%s\": its header entry is not an object",
                        path, name);
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return moe_fail(MOE_ERR_VALUE, op, "%s: tensor \"%s\": unknown field \"%s\"", path,
                            name, k);
    }
    json_t *dt = json_object_get(j, "dtype"), *shape = json_object_get(j, "shape"),
           *offs = json_object_get(j, "data_offsets");
    if (!json_is_string(dt))
        return moe_fail(MOE_ERR_VALUE, op, "%s: tensor \"%s\": dtype missing or not a string", path,
                        name);
    if (!file_dtype_parse(json_string_value(dt), &e->dtype))
        return moe_fail(MOE_ERR_DTYPE, op,
                        "%s: tensor \"%s\": dtype \"%s\" is not one of F64 F32 BF16 I64 I32 BOOL",
                        path, name, json_string_value(dt));
    if (!json_is_array(shape))
        return moe_fail(MOE_ERR_VALUE, op, "%s: tensor \"%s\": shape missing or not an array", path,
                        name);
    size_t nd = json_array_size(shape);
    if (nd > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, op, "%s: tensor \"%s\": %zu dimensions (at most %d)", path,
                        name, nd, MOE_MAX_DIMS);
    e->ndim = (int)nd;
    /* the element count, refusing overflow: at most 2^62 bytes in all */
    uint64_t bytes = moe_dtype_size(e->dtype), limit = (uint64_t)1 << 62;
    bool zero = false;
    for (size_t d = 0; d < nd; d++) {
        json_t *x = json_array_get(shape, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return moe_fail(MOE_ERR_SHAPE, op,
                            "%s: tensor \"%s\": shape entry %zu is not a non-negative integer", path,
                            name, d);
        uint64_t s = (uint64_t)json_integer_value(x);
        e->shape[d] = (int64_t)s;
        if (s == 0) zero = true;
        else if (!zero && bytes > limit / s)
            return moe_fail(MOE_ERR_SHAPE, op, "%s: tensor \"%s\": shape %s is too large", path,
                            name, moe_dims_str(e->ndim, e->shape));
        else if (!zero) bytes *= s;
    }
    if (zero) bytes = 0;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
        return moe_fail(MOE_ERR_VALUE, op,
                        "%s: tensor \"%s\": data_offsets must be two integers [begin, end]", path,
                        name);
    json_int_t b = json_integer_value(json_array_get(offs, 0)),
               en = json_integer_value(json_array_get(offs, 1));
    if (b < 0 || en < b)
        return moe_fail(MOE_ERR_INDEX, op, "%s: tensor \"%s\": data_offsets [%" JSON_INTEGER_FORMAT
                        ", %" JSON_INTEGER_FORMAT "] are not 0 <= begin <= end", path, name, b, en);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end - e->begin != bytes)
        return moe_fail(MOE_ERR_SHAPE, op,
                        "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                        " bytes but %s %s needs %" PRIu64, path, name, e->begin, e->end,
                        e->end - e->begin, FILE_DTYPES[e->dtype], moe_dims_str(e->ndim, e->shape),
                        bytes);
    return MOE_OK;
}

/* Verify the checksum HEX (from the metadata) against the file BUF. */
static moe_status verify_checksum(const char *op, const char *path, const char *hex,
                                  unsigned char *buf, size_t size, size_t hlen)
{
    bool well_formed = strlen(hex) == SHA_HEX;
    for (int i = 0; well_formed && i < SHA_HEX; i++)
        well_formed = (hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f');
    if (!well_formed)
        return moe_fail(MOE_ERR_VALUE, op, "%s: the checksum \"%s\" is not 64 hex digits", path, hex);
    /* Find the digits as written: "moelab.sha256":"<hex>" inside the header. */
    char key[SHA_HEX + 32];
    snprintf(key, sizeof key, "\"%s\":\"%s\"", MOE_SAFETENSORS_CHECKSUM_KEY, hex);
    size_t klen = strlen(key);
    unsigned char *slot = NULL;
    for (size_t i = 8; i + klen <= 8 + hlen; i++) {
        if (memcmp(buf + i, key, klen) == 0) {
            slot = buf + i + klen - 1 - SHA_HEX;
            break;
        }
    }
    if (!slot)
        return moe_fail(MOE_ERR_VALUE, op, "%s: the checksum is not where moelab writes it "
                        "(was the header rewritten?)", path);
    char saved[SHA_HEX], actual[SHA_HEX + 1];
    memcpy(saved, slot, SHA_HEX);
    memset(slot, '0', SHA_HEX);
    const void *parts[1] = {buf};
    moe_status st = sha256_hex(op, 1, parts, &size, actual);
    memcpy(slot, saved, SHA_HEX);
    MOE_TRY(st);
    if (memcmp(actual, hex, SHA_HEX) != 0)
        return moe_fail(MOE_ERR_VALUE, op, "%s: checksum mismatch: the file says %s, its contents "
                        "give %s (the file is damaged)", path, hex, actual);
    return MOE_OK;
}

void moe_safetensors_free(moe_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->count; i++) {
        free(st->names[i]);
        moe_tensor_release(st->tensors[i]);
    }
    for (int i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->names);
    free(st->tensors);
    free(st->meta_keys);
    free(st->meta_values);
    free(st);
}

/* Make the result from the checked entries. */
static moe_status build_result(const char *op, const char *path, const entry *es, int n,
                               json_t *meta, const unsigned char *data, moe_safetensors **out)
{
    moe_safetensors *st = calloc(1, sizeof *st);
    int nm = meta ? (int)json_object_size(meta) : 0;
    if (st) {
        st->names = calloc((size_t)n + 1, sizeof *st->names);
        st->tensors = calloc((size_t)n + 1, sizeof *st->tensors);
        st->meta_keys = calloc((size_t)nm + 1, sizeof *st->meta_keys);
        st->meta_values = calloc((size_t)nm + 1, sizeof *st->meta_values);
    }
    if (!st || !st->names || !st->tensors || !st->meta_keys || !st->meta_values) {
        moe_safetensors_free(st);
        return moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for %zu bytes of tables (%d tensors, %d metadata entries)",
                        path, sizeof(moe_safetensors) + ((size_t)n + 1) * (sizeof(char *) + sizeof(moe_tensor *))
                                  + ((size_t)nm + 1) * 2 * sizeof(char *), n, nm);
    }
    for (int i = 0; i < n; i++) {
        moe_status s = moe_tensor_from_data(&st->tensors[i], es[i].dtype, MOE_CPU, es[i].ndim,
                                            es[i].shape, data + es[i].begin);
        st->names[i] = strdup(es[i].name);
        st->count = i + 1;
        if (s != MOE_OK || !st->names[i]) {
            moe_safetensors_free(st);
            return s != MOE_OK ? s : moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory", path);
        }
    }
    if (meta) {
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            int i = st->meta_count++;
            st->meta_keys[i] = strdup(k);
            st->meta_values[i] = strdup(json_string_value(v));
            if (!st->meta_keys[i] || !st->meta_values[i]) {
                moe_safetensors_free(st);
                return moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for %zu bytes of metadata entry \"%s\"", path,
                                strlen(k) + strlen(json_string_value(v)) + 2, k);
            }
        }
    }
    *out = st;
    return MOE_OK;
}

moe_status moe_safetensors_load_op(const char *op, moe_safetensors **out, const char *path)
{
    if (!path || !*path) return moe_fail(MOE_ERR_ARG, op, "no file name given");
    unsigned char *buf = NULL;
    size_t size = 0;
    MOE_TRY(read_file(op, path, &buf, &size));
    moe_status st = MOE_OK;
    json_t *root = NULL;
    entry *es = NULL;
    if (size < 8) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: %zu bytes, too short for the 8-byte header length "
                      "(truncated?)", path, size);
        goto done;
    }
    uint64_t hlen = get_le64(buf);
    if (hlen > MOE_SAFETENSORS_MAX_HEADER) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: header length %" PRIu64 " is over the limit of %u "
                      "bytes (not a safetensors file?)", path, hlen, MOE_SAFETENSORS_MAX_HEADER);
        goto done;
    }
    if (hlen < 2 || hlen > size - 8) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: header length %" PRIu64 " does not fit a file of %zu "
                      "bytes (truncated?)", path, hlen, size);
        goto done;
    }
    json_error_t jerr;
    root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: the header is not valid JSON: %s (at byte %d of the "
                      "header)", path, jerr.text, jerr.position);
        goto done;
    }
    if (!json_is_object(root)) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: the header is not a JSON object", path);
        goto done;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        if (!json_is_object(meta)) {
            st = moe_fail(MOE_ERR_VALUE, op, "%s: __metadata__ is not an object", path);
            goto done;
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                st = moe_fail(MOE_ERR_VALUE, op, "%s: __metadata__ value of \"%s\" is not a string",
                              path, k);
                goto done;
            }
        }
    }
    int n = (int)json_object_size(root) - (meta ? 1 : 0);
    es = calloc((size_t)n + 1, sizeof *es);
    if (!es) {
        st = moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for %zu bytes of the header's %d entries", path,
                      ((size_t)n + 1) * sizeof *es, n);
        goto done;
    }
    int at = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) continue;
        if (!*k) {
            st = moe_fail(MOE_ERR_VALUE, op, "%s: a tensor has an empty name", path);
            goto done;
        }
        MOE_TRYG(parse_entry(op, path, k, v, &es[at++]));
    }
    /* The data region: no overlap, no gap, to the end of the file. */
    uint64_t data_len = size - 8 - hlen, pos = 0;
    qsort(es, (size_t)n, sizeof *es, by_begin);
    for (int i = 0; i < n; i++) {
        if (es[i].end > data_len) {
            st = moe_fail(MOE_ERR_INDEX, op, "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                          "] run past the %" PRIu64 " bytes of data (truncated?)", path, es[i].name,
                          es[i].begin, es[i].end, data_len);
            goto done;
        }
        if (es[i].begin < pos) {
            st = moe_fail(MOE_ERR_INDEX, op, "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                          "] overlap tensor \"%s\"", path, es[i].name, es[i].begin, es[i].end,
                          es[i - 1].name);
            goto done;
        }
        if (es[i].begin > pos) {
            st = moe_fail(MOE_ERR_INDEX, op, "%s: tensor \"%s\": a gap of %" PRIu64 " bytes before "
                          "its data at %" PRIu64, path, es[i].name, es[i].begin - pos, es[i].begin);
            goto done;
        }
        pos = es[i].end;
    }
    if (pos != data_len) {
        st = moe_fail(MOE_ERR_INDEX, op, "%s: %" PRIu64 " bytes of data after the last tensor "
                      "(the data must end at the end of the file)", path, data_len - pos);
        goto done;
    }
    const unsigned char *data = buf + 8 + hlen;
    for (int i = 0; i < n; i++) {
        if (es[i].dtype != MOE_BOOL) continue;
        int64_t bad = moe_cpu_bool_find_bad(data + es[i].begin, (int64_t)(es[i].end - es[i].begin));
        if (bad >= 0) {
            st = moe_fail(MOE_ERR_VALUE, op, "%s: tensor \"%s\": BOOL element %" PRId64 " is %u (0 or 1 expected)",
                          path, es[i].name, bad, data[es[i].begin + (uint64_t)bad]);
            goto done;
        }
    }
    json_t *sum = meta ? json_object_get(meta, MOE_SAFETENSORS_CHECKSUM_KEY) : NULL;
    json_t *scheme = meta ? json_object_get(meta, MOE_SAFETENSORS_SCHEME_KEY) : NULL;
    if (!sum != !scheme) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: __metadata__ has \"%s\" without \"%s\" (the file "
                      "is damaged)", path, sum ? MOE_SAFETENSORS_CHECKSUM_KEY : MOE_SAFETENSORS_SCHEME_KEY,
                      sum ? MOE_SAFETENSORS_SCHEME_KEY : MOE_SAFETENSORS_CHECKSUM_KEY);
        goto done;
    }
    if (scheme && strcmp(json_string_value(scheme), "sha256") != 0) {
        st = moe_fail(MOE_ERR_VALUE, op, "%s: unknown checksum \"%s\" (sha256 expected)", path,
                      json_string_value(scheme));
        goto done;
    }
    if (sum) MOE_TRYG(verify_checksum(op, path, json_string_value(sum), buf, size, (size_t)hlen));
    st = build_result(op, path, es, n, meta, data, out);
done:
    free(es);
    json_decref(root);
    free(buf);
    return st;
}

moe_status moe_safetensors_load(moe_safetensors **out, const char *path)
{
    return moe_safetensors_load_op("load-tensors", out, path);
}

moe_tensor *moe_safetensors_get(const moe_safetensors *st, const char *name)
{
    for (int i = 0; i < st->count; i++)
        if (strcmp(st->names[i], name) == 0) return st->tensors[i];
    return NULL;
}

const char *moe_safetensors_meta(const moe_safetensors *st, const char *key)
{
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}
