/* group-type.c — the <group> foreign object (a rank's process group as
 * Scheme sees it: size, rank, name, members, printed form), the
 * <rank-context> that (moelab dist) keeps for the current rank, and the
 * scopes both point at. Who owns what: group-type.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "group-type.h"

/* ---- scopes ------------------------------------------------------------------ */

dist_scope *moelab_scope_new(scope_kind kind, moe_group *world)
{
    dist_scope *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    atomic_init(&s->refs, 1);
    atomic_init(&s->alive, 1);
    s->kind = kind;
    s->thread = pthread_self();
    s->world = world;
    s->rank = moe_group_rank(world);
    s->size = moe_group_size(world);
    return s;
}

static void scope_ref(dist_scope *s)
{
    if (s) atomic_fetch_add(&s->refs, 1);
}

static void scope_unref(dist_scope *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
    free(s->held);
    free(s);
}

void moelab_scope_end(dist_scope *s)
{
    if (!s || atomic_exchange(&s->alive, 0) == 0) return;
    for (int i = 0; i < s->nheld; i++) moe_group_release(s->held[i]);
    s->nheld = 0;
    if (s->kind == SCOPE_THREADS) {
        moe_mesh_free(s->mesh);
    } else {
        moe_group_release(s->world);
    }
    s->mesh = NULL;
    s->world = NULL;
    scope_unref(s);
}

moe_status moelab_scope_hold(dist_scope *s, moe_group *g)
{
    if (!g) return MOE_OK;
    for (int i = 0; i < s->nheld; i++)
        if (s->held[i] == g) {
            moe_group_release(g); /* already held: the extra reference goes */
            return MOE_OK;
        }
    if (s->nheld == s->capheld) {
        int cap = s->capheld ? 2 * s->capheld : 8;
        moe_group **grown = realloc(s->held, sizeof *grown * (size_t)cap);
        if (!grown) {
            moe_group_release(g);
            return moe_fail(MOE_ERR_NOMEM, "mesh-group", "out of memory");
        }
        s->held = grown;
        s->capheld = cap;
    }
    s->held[s->nheld++] = g;
    return MOE_OK;
}

/* ---- the <group> foreign object ---------------------------------------------------- */

static SCM group_class = SCM_BOOL_F;
static SCM context_class = SCM_BOOL_F;

typedef struct group_ref {
    moe_group *g;       /* borrowed from SCOPE; NULL: the trivial group */
    dist_scope *scope;  /* NULL for the trivial group */
    int size, rank;
    char name[32];
    char backend[16];
    int *world_ranks;   /* [size] */
} group_ref;

static void finalize_group(SCM obj)
{
    group_ref *r = scm_foreign_object_ref(obj, 0);
    if (!r) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    scope_unref(r->scope);
    free(r->world_ranks);
    free(r);
}

SCM moelab_make_group(dist_scope *s, moe_group *g, const char *subr)
{
    group_ref *r = calloc(1, sizeof *r);
    int size = moe_group_size(g);
    int *wr = r ? malloc(sizeof *wr * (size_t)size) : NULL;
    if (!r || !wr) {
        free(r);
        moelab_throw(subr, MOE_ERR_NOMEM, "out of memory for a group");
    }
    for (int i = 0; i < size; i++) wr[i] = moe_group_world_rank(g, i);
    r->g = g;
    r->scope = s;
    r->size = size;
    r->rank = moe_group_rank(g);
    r->world_ranks = wr;
    snprintf(r->name, sizeof r->name, "%s", moe_group_name(g));
    snprintf(r->backend, sizeof r->backend, "%s", moe_group_backend(g));
    scope_ref(s);
    return scm_make_foreign_object_1(group_class, r);
}

static group_ref *group_of(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, group_class)) scm_wrong_type_arg_msg(subr, pos, obj, "group");
    return scm_foreign_object_ref(obj, 0);
}

int moelab_group_size_of(SCM obj, int pos, const char *subr) { return group_of(obj, pos, subr)->size; }

moe_group *moelab_use_group(SCM obj, int pos, const char *subr)
{
    group_ref *r = group_of(obj, pos, subr);
    dist_scope *s = r->scope;
    if (!s) return NULL;
    if (!atomic_load(&s->alive))
        moelab_throw(subr, MOE_ERR_STATE, "group '%s' (rank %d of %d) can no longer be used: the "
                     "with-ranks that made it has returned", r->name, r->rank, r->size);
    if (s->kind == SCOPE_THREADS && !pthread_equal(s->thread, pthread_self()))
        moelab_throw(subr, MOE_ERR_STATE, "group '%s' belongs to rank %d of a with-ranks: use it "
                     "only inside that rank's procedure", r->name, s->rank);
    return r->g;
}

/* Exported to the other binding files (bindings.h): #f and the trivial
 * one-rank group give NULL. */
moe_group *moelab_to_group(SCM obj, int pos, const char *subr)
{
    if (scm_is_false(obj)) return NULL;
    return moelab_use_group(obj, pos, subr);
}

/* ---- rank contexts (internal: (moelab dist) keeps the current one) ------------------ */

static void finalize_context(SCM obj)
{
    dist_scope *s = scm_foreign_object_ref(obj, 0);
    if (!s) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    scope_unref(s);
}

SCM moelab_wrap_context(dist_scope *s)
{
    scope_ref(s);
    return scm_make_foreign_object_1(context_class, s);
}

dist_scope *moelab_context_of(SCM obj, int pos, const char *subr)
{
    if (scm_is_false(obj)) return NULL;
    if (!SCM_IS_A_P(obj, context_class)) scm_wrong_type_arg_msg(subr, pos, obj, "rank context");
    return scm_foreign_object_ref(obj, 0);
}

/* ---- groups ------------------------------------------------------------------------------------ */

SCM_DEFINE(moelab_self_group, "%self-group", 0, 0, 0, (void), "The trivial group of just this rank.")
#define FUNC_NAME "world-group"
{
    return moelab_make_group(NULL, NULL, FUNC_NAME);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_p, "%group?", 1, 0, 0, (SCM obj), "True when @var{obj} is a group.")
#define FUNC_NAME "group?"
{
    return scm_from_bool(SCM_IS_A_P(obj, group_class));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_size, "%group-size", 1, 0, 0, (SCM g), "The number of ranks in group @var{g}.")
#define FUNC_NAME "group-size"
{
    return scm_from_int(group_of(g, 1, FUNC_NAME)->size);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_rank, "%group-rank", 1, 0, 0, (SCM g), "This rank's rank in group @var{g}.")
#define FUNC_NAME "group-rank"
{
    return scm_from_int(group_of(g, 1, FUNC_NAME)->rank);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_name, "%group-name", 1, 0, 0, (SCM g), "The label of group @var{g}.")
#define FUNC_NAME "group-name"
{
    return scm_from_utf8_string(group_of(g, 1, FUNC_NAME)->name);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_ranks, "%group-ranks", 1, 0, 0, (SCM g),
           "The world ranks of the members of group @var{g}, in group order.")
#define FUNC_NAME "group-ranks"
{
    group_ref *r = group_of(g, 1, FUNC_NAME);
    SCM l = SCM_EOL;
    for (int i = r->size - 1; i >= 0; i--) l = scm_cons(scm_from_int(r->world_ranks[i]), l);
    scm_remember_upto_here_1(g);
    return l;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_repr, "%group-repr", 1, 0, 0, (SCM g), "The printed form of group @var{g}.")
#define FUNC_NAME "group-repr"
{
    group_ref *r = group_of(g, 1, FUNC_NAME);
    char buf[128];
    bool ended = r->scope && !atomic_load(&r->scope->alive);
    snprintf(buf, sizeof buf, "#<group %s: rank %d of %d%s%s%s>", r->name, r->rank, r->size,
             r->scope ? " (" : "", r->scope ? r->backend : "", r->scope ? (ended ? ", ended)" : ")") : "");
    scm_remember_upto_here_1(g);
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME


void moelab_init_group_type(void)
{
    group_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<group>"),
                                               scm_list_1(scm_from_utf8_symbol("ref")), finalize_group);
    scm_gc_protect_object(group_class);
    scm_c_define("<group>", group_class);
    context_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<rank-context>"),
                                                 scm_list_1(scm_from_utf8_symbol("scope")), finalize_context);
    scm_gc_protect_object(context_class);
#ifndef SCM_MAGIC_SNARFER
#include "group-type.x"
#endif
}
