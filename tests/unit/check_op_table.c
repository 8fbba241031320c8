/* check_op_table.c — walks the op table (tests/ops_table.c): an f64
 * central-difference gradient check of every case of every row, and a check
 * that every op declared in core/ops.h has a row or is listed as not
 * differentiable (MOE_OPS_H, the header's path, comes from the Makefile). */
#include "testutil.h"

#include <ctype.h>
#include <string.h>

#include "../ops_table.h"

#ifndef MOE_OPS_H
#error "MOE_OPS_H (the path of core/ops.h) must be defined"
#endif

/* One row: each case's float inputs in GRAD_MASK against finite differences. */
START_TEST(test_row_gradients)
{
    const ot_row *row = &ot_rows[_i];
    ot_case cases[OT_MAX_CASES];
    int n = 0;
    moe_status st = row->build(cases, &n, MOE_F64);
    if (st != MOE_OK) ot_cases_release(cases, n);
    ck_assert_msg(st == MOE_OK, "%s: building the cases failed: %s", row->name, moe_last_error());
    ck_assert_msg(n > 0, "%s: no cases", row->name);
    for (int k = 0; k < n; k++) {
        ot_case *c = &cases[k];
        ck_assert_msg(row->arity < 0 || c->n_in <= row->arity, "%s: case '%s' has %d inputs, arity %d", row->name,
                      c->what, c->n_in, row->arity);
        ck_assert_msg(c->grad_mask != 0, "%s: case '%s' differentiates nothing", row->name, c->what);
        for (int i = 0; i < c->n_in; i++)
            if ((c->grad_mask >> i) & 1) OK(moe_tensor_requires_grad_(c->in[i], true));
        char what[160];
        snprintf(what, sizeof what, "%s: %s", row->name, c->what);
        tu_gradcheck(ot_run, c->n_in, c->in, c, 1e-6, 1e-6, what);
    }
    ot_cases_release(cases, n);
}
END_TEST

/* The names N of ops.h's `moe_status moe_N(` declarations, in NAMES (the
 * caller frees each); returns how many. */
static int declared_ops(const char *path, char **names, int max)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[512];
    int n = 0;
    const char *key = "moe_status moe_";
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, key);
        if (p != line) continue; /* declarations start a line */
        p += strlen(key);
        size_t len = 0;
        while (isalnum((unsigned char)p[len]) || p[len] == '_') len++;
        if (p[len] != '(') continue;
        ck_assert_msg(n < max, "more than %d ops in %s", max, path);
        names[n] = malloc(len + 1);
        memcpy(names[n], p, len);
        names[n++][len] = '\0';
    }
    fclose(f);
    return n;
}

static bool in_table(const char *name)
{
    for (int i = 0; i < ot_n_rows; i++)
        if (strcmp(ot_rows[i].c_name, name) == 0) return true;
    return false;
}

static bool not_differentiable(const char *name)
{
    for (int i = 0; i < ot_n_not_differentiable; i++)
        if (strcmp(ot_not_differentiable[i], name) == 0) return true;
    return false;
}

/* Every declared op is covered, exactly once; every row names a declared op. */
START_TEST(test_every_op_has_a_row)
{
    char *names[256];
    int n = declared_ops(MOE_OPS_H, names, 256);
    ck_assert_msg(n > 50, "only %d ops found in %s: has its layout changed?", n, MOE_OPS_H);
    char missing[2048] = "", twice[512] = "", stale[512] = "";
    for (int i = 0; i < n; i++) {
        bool row = in_table(names[i]), nd = not_differentiable(names[i]);
        char *list = !row && !nd ? missing : row && nd ? twice : NULL;
        if (list) snprintf(list + strlen(list), (list == missing ? sizeof missing : sizeof twice) - strlen(list),
                           " moe_%s", names[i]);
    }
    const char *listed[256];
    int m = 0;
    for (int i = 0; i < ot_n_rows; i++) listed[m++] = ot_rows[i].c_name;
    for (int i = 0; i < ot_n_not_differentiable; i++) listed[m++] = ot_not_differentiable[i];
    for (int j = 0; j < m; j++) {
        bool found = false;
        for (int i = 0; i < n && !found; i++) found = strcmp(names[i], listed[j]) == 0;
        if (!found) snprintf(stale + strlen(stale), sizeof stale - strlen(stale), " moe_%s", listed[j]);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    ck_assert_msg(!*missing, "ops declared in %s with no row in tests/ops_table.c (add one, or list them as not "
                  "differentiable):%s", MOE_OPS_H, missing);
    ck_assert_msg(!*twice, "ops both in the table and in its not-differentiable list:%s", twice);
    ck_assert_msg(!*stale, "the op table names ops that %s does not declare:%s", MOE_OPS_H, stale);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("op-table");
    TCase *c = tcase_create("ops");
    tcase_add_test(c, test_every_op_has_a_row);
    tcase_add_loop_test(c, test_row_gradients, 0, ot_n_rows);
    suite_add_tcase(s, c);
    return tu_run(s);
}
