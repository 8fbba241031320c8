/* refs.c — reading the reference-vector files and comparing against them
 * (see refs.h). */
#include "refs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/aux_loss.h"

static moe_tensor *parse_tensor(char *line, char **name)
{
    char *save = NULL;
    strtok_r(line, " ", &save); /* "tensor" */
    const char *nm = strtok_r(NULL, " ", &save), *dts = strtok_r(NULL, " ", &save),
               *nds = strtok_r(NULL, " ", &save);
    moe_dtype dt;
    if (!nm || !dts || !nds || !moe_dtype_parse(dts, &dt)) return NULL;
    int nd = atoi(nds);
    if (nd < 0 || nd > MOE_MAX_DIMS) return NULL;
    int64_t shape[MOE_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        const char *tok = strtok_r(NULL, " ", &save);
        if (!tok) return NULL;
        shape[i] = atoll(tok);
    }
    moe_tensor *t;
    if (moe_tensor_empty(&t, dt, MOE_CPU, nd, shape) != MOE_OK) return NULL;
    int64_t n = moe_tensor_numel(t);
    char *data = moe_tensor_data(t);
    for (int64_t i = 0; i < n; i++) {
        char *tok = strtok_r(NULL, " ", &save);
        if (!tok) {
            moe_tensor_release(t);
            return NULL;
        }
        moe_dtype_store(dt, data + (size_t)i * moe_dtype_size(dt), strtod(tok, NULL));
    }
    *name = strdup(nm);
    return t;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1))) {
        if (fread(buf, 1, (size_t)len, f) == (size_t)len) {
            buf[len] = 0;
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

int refs_load(const char *path, ref_case **out)
{
    *out = NULL;
    char *buf = read_file(path);
    if (!buf) {
        moe_fail(MOE_ERR_IO, "refs", "cannot read %s", path);
        return -1;
    }
    size_t first = strcspn(buf, "\r\n");
    if (first != strlen(REF_FORMAT_LINE) || strncmp(buf, REF_FORMAT_LINE, first) != 0) {
        moe_fail(MOE_ERR_VALUE, "refs",
                 "%s starts with '%.*s', expected '%s': a file of another format (regenerate it with the "
                 "command on its second line, or update tests/reference/refs.c)",
                 path, (int)(first < 60 ? first : 60), buf, REF_FORMAT_LINE);
        free(buf);
        return -1;
    }
    ref_case *cases = NULL, *cur = NULL;
    int n = 0, cap = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "case ", 5) == 0) {
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                ref_case *grown = realloc(cases, sizeof *cases * (size_t)cap);
                if (!grown) goto fail;
                cases = grown;
            }
            cur = &cases[n++];
            memset(cur, 0, sizeof *cur);
            snprintf(cur->name, sizeof cur->name, "%s", line + 5);
        } else if (cur && strncmp(line, "set ", 4) == 0 && cur->nsets < REF_MAX_SETS) {
            char *sp = strchr(line + 4, ' ');
            if (!sp) continue;
            *sp = 0;
            cur->key[cur->nsets] = strdup(line + 4);
            cur->val[cur->nsets++] = strdup(sp + 1);
        } else if (cur && strncmp(line, "tensor ", 7) == 0 && cur->ntens < REF_MAX_TENSORS) {
            char *nm = NULL;
            char head[80];
            snprintf(head, sizeof head, "%.79s", line);
            moe_tensor *t = parse_tensor(line, &nm);
            if (!t) {
                moe_fail(MOE_ERR_VALUE, "refs", "%s: case %s: malformed tensor line '%s…'", path, cur->name, head);
                goto fail;
            }
            cur->tname[cur->ntens] = nm;
            cur->tens[cur->ntens++] = t;
        }
    }
    free(buf);
    *out = cases;
    return n;
fail:
    free(buf);
    refs_free(cases, n);
    return -1;
}

void refs_free(ref_case *cases, int n)
{
    for (int c = 0; c < n; c++) {
        for (int i = 0; i < cases[c].nsets; i++) free(cases[c].key[i]), free(cases[c].val[i]);
        for (int i = 0; i < cases[c].ntens; i++)
            free(cases[c].tname[i]), moe_tensor_release(cases[c].tens[i]);
    }
    free(cases);
}

const char *ref_get(const ref_case *c, const char *key)
{
    for (int i = 0; i < c->nsets; i++)
        if (strcmp(c->key[i], key) == 0) return c->val[i];
    return NULL;
}

double ref_getd(const ref_case *c, const char *key, double dflt)
{
    const char *v = ref_get(c, key);
    return v ? strtod(v, NULL) : dflt;
}

moe_tensor *ref_tensor(const ref_case *c, const char *name, int m)
{
    char full[128];
    if (m >= 0)
        snprintf(full, sizeof full, "%s#%d", name, m);
    else
        snprintf(full, sizeof full, "%s", name);
    for (int i = 0; i < c->ntens; i++)
        if (strcmp(c->tname[i], full) == 0) return c->tens[i];
    return NULL;
}

/* "kind:coeff,kind:coeff" */
static bool parse_losses(moe_router_config *cfg, const char *spec)
{
    moe_aux_term terms[MOE_ROUTER_MAX_LOSSES];
    int n = 0;
    bool ok = true;
    char *dup = strdup(spec), *save = NULL;
    for (char *it = strtok_r(dup, ",", &save); it && ok; it = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(it, ':');
        ok = colon && n < MOE_ROUTER_MAX_LOSSES;
        if (!ok) break;
        *colon = 0;
        ok = moe_aux_kind_parse(it, &terms[n].kind);
        terms[n++].coeff = strtod(colon + 1, NULL);
    }
    free(dup);
    return ok && moe_router_config_set_losses(cfg, n, terms) == MOE_OK;
}

bool ref_router_config(moe_router_config *cfg, const ref_case *c)
{
    moe_router_config_default(cfg);
    const char *p = ref_get(c, "preset");
    if (p && moe_router_config_preset(cfg, p) != MOE_OK) return false;
    /* cases without a convention setting were computed with the exact forms */
    cfg->convention = MOE_CONVENTION_EXACT;
    bool ok = true;
    for (int i = 0; i < c->nsets && ok; i++) {
        const char *k = c->key[i], *v = c->val[i];
        double d = strtod(v, NULL);
        if (!strcmp(k, "hidden")) cfg->hidden = (int64_t)d;
        else if (!strcmp(k, "experts")) cfg->experts = (int64_t)d;
        else if (!strcmp(k, "top_k")) cfg->top_k = (int64_t)d;
        else if (!strcmp(k, "dtype")) ok = moe_dtype_parse(v, &cfg->dtype);
        else if (!strcmp(k, "score")) ok = moe_score_fn_parse(v, &cfg->score);
        else if (!strcmp(k, "pre_softmax")) cfg->pre_softmax = d != 0;
        else if (!strcmp(k, "normalize")) ok = moe_norm_mode_parse(v, &cfg->normalize);
        else if (!strcmp(k, "norm_eps")) cfg->norm_eps = d;
        else if (!strcmp(k, "norm_p")) cfg->norm_p = d;
        else if (!strcmp(k, "groups")) cfg->groups = (int64_t)d;
        else if (!strcmp(k, "group_topk")) cfg->group_topk = (int64_t)d;
        else if (!strcmp(k, "group_score_top")) cfg->group_score_top = (int64_t)d;
        else if (!strcmp(k, "scaling")) cfg->scaling_factor = d;
        else if (!strcmp(k, "score_offset")) cfg->score_offset = d;
        else if (!strcmp(k, "sinkhorn")) cfg->sinkhorn = d != 0;
        else if (!strcmp(k, "debug")) ok = moe_debug_routing_parse(v, &cfg->debug_routing);
        else if (!strcmp(k, "capacity")) cfg->capacity_factor = !strcmp(v, "none") ? MOE_CAPACITY_NONE : d;
        else if (!strcmp(k, "capacity_formula")) ok = moe_capacity_formula_parse(v, &cfg->capacity_formula);
        else if (!strcmp(k, "ep")) cfg->ep_size = (int64_t)d;
        else if (!strcmp(k, "drop")) ok = moe_drop_policy_parse(v, &cfg->drop_policy);
        else if (!strcmp(k, "pad")) cfg->pad_to_capacity = d != 0;
        else if (!strcmp(k, "expert_bias")) cfg->expert_bias = d != 0;
        else if (!strcmp(k, "bias_rate")) cfg->bias_rate = d;
        else if (!strcmp(k, "bias_center")) cfg->bias_center = d != 0;
        else if (!strcmp(k, "count_from")) ok = moe_count_from_parse(v, &cfg->count_from);
        else if (!strcmp(k, "loss_eps")) cfg->loss_eps = d;
        else if (!strcmp(k, "loss_div")) cfg->loss_div_factor = d;
        else if (!strcmp(k, "num_layers")) cfg->num_moe_layers = (int64_t)d;
        else if (!strcmp(k, "k_in_f")) cfg->k_in_f = d != 0;
        else if (!strcmp(k, "global_buffer")) cfg->global_buffer = d != 0;
        else if (!strcmp(k, "grad_mode")) ok = moe_grad_mode_parse(v, &cfg->grad_mode);
        else if (!strcmp(k, "losses")) ok = parse_losses(cfg, v);
        else if (!strcmp(k, "convention")) ok = moe_convention_parse(v, &cfg->convention);
        else if (!strcmp(k, "routing")) ok = moe_routing_mode_parse(v, &cfg->routing);
        else if (!strcmp(k, "qb_ema")) cfg->qb_ema = d;
        else if (!strcmp(k, "debug_keep_weights")) cfg->debug_keep_weights = d != 0;
        else if (!strcmp(k, "z_loss_div")) cfg->z_loss_div = d != 0;
    }
    return ok;
}

/* "v0 v1 … v(k-1) …" of the first K of N values. */
static void first_values(char *out, size_t len, const double *v, int64_t n, int64_t k)
{
    size_t at = 0;
    out[0] = 0;
    for (int64_t i = 0; i < n && i < k && at < len; i++)
        at += (size_t)snprintf(out + at, len - at, "%s%.9g", i ? " " : "", v[i]);
    if (n > k && at < len) snprintf(out + at, len - at, " …");
}

bool ref_mismatch(char *msg, size_t len, const char *what, const moe_tensor *got, const moe_tensor *want,
                  double atol, double rtol)
{
    if (!got || !want) {
        snprintf(msg, len, "%s: %s", what, got ? "has no expected value" : "missing");
        return true;
    }
    int64_t n = moe_tensor_numel(want);
    if (moe_tensor_numel(got) != n) {
        snprintf(msg, len, "%s: %lld elements %s, expected %lld %s", what, (long long)moe_tensor_numel(got),
                 moe_shape_str(got), (long long)n, moe_shape_str(want));
        return true;
    }
    double *g = malloc(sizeof(double) * (size_t)(n + 1)), *e = malloc(sizeof(double) * (size_t)(n + 1));
    if (!g || !e || moe_tensor_to_doubles(got, g) != MOE_OK || moe_tensor_to_doubles(want, e) != MOE_OK) {
        snprintf(msg, len, "%s: cannot read the values: %s", what, moe_last_error());
        free(g), free(e);
        return true;
    }
    int64_t off = 0, worst = -1;
    double worst_diff = -1;
    for (int64_t i = 0; i < n; i++) {
        if ((isnan(g[i]) && isnan(e[i])) || g[i] == e[i]) continue;
        double d = fabs(g[i] - e[i]);
        if (isnan(d)) d = INFINITY;
        if (!(d <= atol + rtol * fabs(e[i]))) off++;
        if (d > worst_diff) worst_diff = d, worst = i;
    }
    if (off) {
        char gs[200], es[200];
        first_values(gs, sizeof gs, g, n, 6);
        first_values(es, sizeof es, e, n, 6);
        snprintf(msg, len,
                 "%s: %lld of %lld elements off (atol %.3g, rtol %.3g); max |diff| %.6g at index %lld "
                 "(got %.17g, expected %.17g); got [%s], expected [%s]",
                 what, (long long)off, (long long)n, atol, rtol, worst_diff, (long long)worst, g[worst], e[worst], gs,
                 es);
    }
    free(g), free(e);
    return off > 0;
}
