/* mesh.c — named parallel dimensions over a world group; one process group per
 * combination of dimensions, made collectively when the mesh is built.
 *
 * Dimension index d: 0 tp, 1 cp, 2 ep, 3 dp, 4 pp (fastest first). A
 * combination is a bit mask over d. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "mesh.h"

#define NDIM MOE_MESH_MAX_DIMS
#define NMASK (1 << NDIM)

const char *const moe_mesh_dim_names[NDIM] = {"tp", "cp", "ep", "dp", "pp"};

struct moe_mesh {
    moe_group *world;
    int size[NDIM];    /* 1 for absent dims */
    bool given[NDIM];  /* named when the mesh was built */
    int stride[NDIM];  /* world-rank stride of each dim */
    int coord[NDIM];   /* this rank's coordinates */
    moe_group *groups[NMASK]; /* by mask over dims of size > 1; others NULL */
    int live_mask;     /* dims of size > 1 */
};

static int dim_index(const char *name, size_t len)
{
    for (int d = 0; d < NDIM; d++)
        if (strlen(moe_mesh_dim_names[d]) == len && strncmp(name, moe_mesh_dim_names[d], len) == 0) return d;
    return -1;
}

/* "dp cp" style name of MASK, slowest first. */
static void mask_name(int mask, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = 0;
    if (!mask) snprintf(buf, size, "self");
    for (int d = NDIM - 1; d >= 0; d--)
        if (mask & (1 << d)) {
            int k = snprintf(buf + len, size - len, "%s%s", len ? " " : "", moe_mesh_dim_names[d]);
            if (k > 0) len += (size_t)k;
        }
}

void moe_mesh_free(moe_mesh *m)
{
    if (!m) return;
    for (int i = 0; i < NMASK; i++) moe_group_release(m->groups[i]);
    moe_group_release(m->world);
    free(m);
}

static const char *dims_str(const int *size, const bool *given, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int d = NDIM - 1; d >= 0; d--)
        if (given[d]) {
            int k = snprintf(buf + len, n - len, "%s%s=%d", len ? " " : "", moe_mesh_dim_names[d], size[d]);
            if (k > 0 && (size_t)k < n - len) len += (size_t)k;
        }
    return buf;
}

moe_status moe_mesh_new(moe_mesh **out, moe_group *world, int ndims, const char *const *names,
                        const int *sizes)
{
    const char *opn = "mesh";
    *out = NULL;
    moe_status st = MOE_OK;
    moe_mesh *m = calloc(1, sizeof *m);
    if (!m) return moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of a mesh", sizeof *m);
    for (int d = 0; d < NDIM; d++) m->size[d] = 1;
    if (ndims < 0 || ndims > NDIM || (ndims > 0 && (!names || !sizes)))
        st = moe_fail(MOE_ERR_ARG, opn, "%d dims given; between 0 and %d (tp cp ep dp pp)", ndims, NDIM);
    for (int i = 0; i < ndims && st == MOE_OK; i++) {
        int d = names[i] ? dim_index(names[i], strlen(names[i])) : -1;
        if (d < 0)
            st = moe_fail(MOE_ERR_ARG, opn, "unknown dimension '%s': use tp, cp, ep, dp or pp",
                          names[i] ? names[i] : "(null)");
        else if (m->given[d])
            st = moe_fail(MOE_ERR_ARG, opn, "dimension %s given twice", names[i]);
        else if (sizes[i] < 1)
            st = moe_fail(MOE_ERR_ARG, opn, "dimension %s has size %d; sizes must be >= 1", names[i], sizes[i]);
        else {
            m->given[d] = true;
            m->size[d] = sizes[i];
        }
    }
    int64_t product = 1;
    for (int d = 0; d < NDIM; d++) product *= m->size[d];
    int wsize = moe_group_size(world);
    char buf[96];
    if (st == MOE_OK && product != wsize)
        st = moe_fail(MOE_ERR_SHAPE, opn, "dims %s make %lld ranks but the world has %d",
                      ndims ? dims_str(m->size, m->given, buf, sizeof buf) : "(none)", (long long)product, wsize);
    if (st != MOE_OK) {
        free(m); /* every rank passes the same dims, so every rank fails alike */
        return st;
    }
    m->world = moe_group_retain(world);
    int me = moe_group_rank(world), stride = 1;
    for (int d = 0; d < NDIM; d++) {
        m->stride[d] = stride;
        m->coord[d] = me / stride % m->size[d];
        stride *= m->size[d];
        if (m->size[d] > 1) m->live_mask |= 1 << d;
    }
    /* one split per combination of live dims, in the same order on every rank */
    for (int mask = 0; mask < NMASK && st == MOE_OK; mask++) {
        if ((mask & ~m->live_mask) != 0) continue;
        if (mask == m->live_mask) {
            m->groups[mask] = moe_group_retain(world);
            continue;
        }
        /* color: this rank's coordinates outside MASK, linearised */
        int color = 0;
        for (int d = NDIM - 1; d >= 0; d--)
            if (!(mask & (1 << d))) color = color * m->size[d] + m->coord[d];
        st = moe_group_split(&m->groups[mask], world, color, me);
        if (st == MOE_OK && m->groups[mask]) {
            mask_name(mask, buf, sizeof buf);
            moe_group_set_name(m->groups[mask], buf);
        }
    }
    if (st != MOE_OK) {
        moe_mesh_free(m);
        return st;
    }
    *out = m;
    return MOE_OK;
}

moe_status moe_mesh_spec_parse(const char *spec, int *ndims, const char **names, int *sizes)
{
    const char *opn = "mesh";
    const char *p = spec ? spec : "";
    bool seen[NDIM] = {false};
    int n = 0;
    *ndims = 0;
    for (;;) {
        while (*p && (isspace((unsigned char)*p) || *p == ',')) p++;
        if (!*p) break;
        const char *start = p;
        while (*p && isalpha((unsigned char)*p)) p++;
        int d = dim_index(start, (size_t)(p - start));
        char *end = NULL;
        long v = -1;
        if ((*p == '=' || *p == ':') && isdigit((unsigned char)p[1])) v = strtol(p + 1, &end, 10);
        if (p == start || v < 0 || n == NDIM || v > 1 << 20)
            return moe_fail(MOE_ERR_ARG, opn, "cannot parse '%s': expected e.g. \"dp=2 cp=2 tp=2\"",
                            spec ? spec : "");
        if (d < 0)
            return moe_fail(MOE_ERR_ARG, opn, "unknown dimension '%.*s' in '%s': use tp, cp, ep, dp or pp",
                            (int)(p - start), start, spec);
        if (seen[d]) return moe_fail(MOE_ERR_ARG, opn, "dimension %s given twice in '%s'", moe_mesh_dim_names[d], spec);
        if (v < 1)
            return moe_fail(MOE_ERR_ARG, opn, "dimension %s has size %ld in '%s'; sizes must be >= 1",
                            moe_mesh_dim_names[d], v, spec);
        seen[d] = true;
        names[n] = moe_mesh_dim_names[d];
        sizes[n] = (int)v;
        n++;
        p = end;
    }
    *ndims = n;
    return MOE_OK;
}

moe_status moe_mesh_parse(moe_mesh **out, moe_group *world, const char *spec)
{
    *out = NULL;
    const char *names[NDIM];
    int sizes[NDIM], n = 0;
    MOE_TRY(moe_mesh_spec_parse(spec, &n, names, sizes));
    return moe_mesh_new(out, world, n, names, sizes);
}

moe_group *moe_mesh_world(const moe_mesh *m) { return m ? m->world : NULL; }

int moe_mesh_size(const moe_mesh *m, const char *dim)
{
    int d = dim ? dim_index(dim, strlen(dim)) : -1;
    return d < 0 ? -1 : m->size[d];
}

int moe_mesh_coord(const moe_mesh *m, const char *dim)
{
    int d = dim ? dim_index(dim, strlen(dim)) : -1;
    return d < 0 ? -1 : m->coord[d];
}

moe_status moe_mesh_coords(const moe_mesh *m, int world_rank, int *coords)
{
    if (world_rank < 0 || world_rank >= moe_group_size(m->world))
        return moe_fail(MOE_ERR_INDEX, "mesh-coord", "rank %d is not in the world of %d ranks", world_rank,
                        moe_group_size(m->world));
    for (int d = 0; d < NDIM; d++) coords[d] = world_rank / m->stride[d] % m->size[d];
    return MOE_OK;
}

int moe_mesh_rank_at(const moe_mesh *m, const int *coords)
{
    int r = 0;
    for (int d = 0; d < NDIM; d++) {
        if (coords[d] < 0 || coords[d] >= m->size[d]) return -1;
        r += coords[d] * m->stride[d];
    }
    return r;
}

const char *moe_mesh_str(const moe_mesh *m)
{
    static _Thread_local char buf[128];
    char dims[96];
    bool any = false;
    for (int d = 0; d < NDIM; d++) any |= m->given[d];
    snprintf(buf, sizeof buf, "%s (%d ranks)", any ? dims_str(m->size, m->given, dims, sizeof dims) : "(no dims)",
             moe_group_size(m->world));
    return buf;
}

moe_status moe_mesh_group(moe_group **out, const moe_mesh *m, const char *dims)
{
    *out = NULL;
    if (!m) return moe_fail(MOE_ERR_ARG, "mesh-group", "mesh is NULL");
    int mask = 0;
    const char *p = dims ? dims : "";
    while (*p) {
        while (*p && (isspace((unsigned char)*p) || *p == ',' || *p == '-')) p++;
        if (!*p) break;
        const char *start = p;
        while (*p && !isspace((unsigned char)*p) && *p != ',' && *p != '-') p++;
        size_t len = (size_t)(p - start);
        if (len == 4 && strncmp(start, "self", 4) == 0) continue;
        int d = dim_index(start, len);
        if (d < 0)
            return moe_fail(MOE_ERR_ARG, "mesh-group", "unknown dimension '%.*s' in \"%s\": use tp, cp, ep, dp or pp",
                            (int)len, start, dims);
        mask |= 1 << d;
    }
    *out = moe_group_retain(m->groups[mask & m->live_mask]);
    return MOE_OK;
}
