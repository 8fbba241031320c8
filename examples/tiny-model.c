/* tiny-model.c — the main job: a tiny mixture-of-experts language model
 * built from libmoelab's core ops alone, trained for a few SGD steps on a
 * fixed token sequence. Prints the loss and every parameter's gradient norm.
 *
 *   tokens [T] → embedding [T D] → rms_norm → router: logits [T E], top-K
 *   → softmax over the K picked logits → each expert a SiLU MLP D→F→D
 *   (computed densely, weighted by the routing) → residual → unembedding [T V]
 *   → cross-entropy against the next token.
 *
 * Dimension letters: T tokens, D model, F expert ffn, E experts, K top-k, V vocab. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "moelab.h"

enum { T = 32, D = 16, F = 32, E = 4, K = 2, V = 11, STEPS = 8 };

typedef struct {
    const char *name;
    moe_tensor *t;
} param;

#define CHECK(expr)                                                                \
    do {                                                                           \
        if ((expr) != MOE_OK) {                                                    \
            fprintf(stderr, "tiny-model: %s\n", moe_last_error());                 \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

static moe_tensor *init_param(moe_rng *rng, int ndim, const int64_t *shape, double scale)
{
    moe_tensor *r, *t;
    CHECK(moe_tensor_randn(&r, rng, MOE_F32, MOE_CPU, ndim, shape));
    CHECK(moe_mul_scalar(&t, r, scale));
    moe_tensor_release(r);
    CHECK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* Forward pass → scalar loss. */
static moe_tensor *forward(param *p, moe_tensor *inputs, moe_tensor *targets)
{
    moe_tensor *x, *h, *logits, *top_v, *top_i, *gate_k, *gates, *zeros, *mix = NULL;
    CHECK(moe_embedding(&x, p[0].t, inputs));                 /* [T D] */
    CHECK(moe_rms_norm(&h, x, p[1].t, 1e-6));                 /* [T D] */
    CHECK(moe_linear(&logits, h, p[2].t, NULL));              /* [T E] */
    CHECK(moe_topk(&top_v, &top_i, logits, K, -1, true));     /* [T K] */
    CHECK(moe_softmax(&gate_k, top_v, -1));                   /* [T K] */
    CHECK(moe_tensor_zeros(&zeros, MOE_F32, MOE_CPU, 2, (int64_t[]){T, E}));
    CHECK(moe_scatter_add(&gates, zeros, 1, top_i, gate_k));  /* [T E], zero off the top-K */
    for (int e = 0; e < E; e++) {
        moe_tensor *w1, *w2, *a, *s, *y, *g, *wy, *acc;
        CHECK(moe_select(&w1, p[3].t, 0, e));                 /* [F D] */
        CHECK(moe_select(&w2, p[4].t, 0, e));                 /* [D F] */
        CHECK(moe_linear(&a, h, w1, NULL));                   /* [T F] */
        CHECK(moe_silu(&s, a));
        CHECK(moe_linear(&y, s, w2, NULL));                   /* [T D] */
        CHECK(moe_narrow(&g, gates, 1, e, 1));                /* [T 1] */
        CHECK(moe_mul(&wy, y, g));                            /* [T D] */
        if (mix) {
            CHECK(moe_add(&acc, mix, wy));
            moe_tensor_release(mix);
            moe_tensor_release(wy);
        } else {
            acc = wy;
        }
        mix = acc;
        moe_tensor *tmp[] = {w1, w2, a, s, y, g};
        for (int i = 0; i < 6; i++) moe_tensor_release(tmp[i]);
    }
    moe_tensor *res, *out, *loss;
    CHECK(moe_add(&res, x, mix));                             /* [T D] */
    CHECK(moe_linear(&out, res, p[5].t, NULL));               /* [T V] */
    CHECK(moe_cross_entropy(&loss, out, targets, -100));
    moe_tensor *tmp[] = {x, h, logits, top_v, top_i, gate_k, zeros, gates, mix, res, out};
    for (int i = 0; i < 11; i++) moe_tensor_release(tmp[i]);
    return loss;
}

static double norm(moe_tensor *g)
{
    if (!g) return 0;
    moe_tensor *sq, *s;
    double v;
    CHECK(moe_mul(&sq, g, g));
    CHECK(moe_sum(&s, sq, 0, NULL, false));
    CHECK(moe_tensor_item(s, &v));
    moe_tensor_release(sq);
    moe_tensor_release(s);
    return sqrt(v);
}

int main(void)
{
    moe_rng rng;
    moe_rng_init(&rng, 2024);
    param p[] = {
        {"embedding", init_param(&rng, 2, (int64_t[]){V, D}, 1.0)},
        {"norm.weight", NULL},
        {"router.weight", init_param(&rng, 2, (int64_t[]){E, D}, 0.5)},
        {"experts.w1", init_param(&rng, 3, (int64_t[]){E, F, D}, 0.25)},
        {"experts.w2", init_param(&rng, 3, (int64_t[]){E, D, F}, 0.18)},
        {"unembedding", init_param(&rng, 2, (int64_t[]){V, D}, 0.25)},
    };
    enum { NP = sizeof p / sizeof *p };
    CHECK(moe_tensor_ones(&p[1].t, MOE_F32, MOE_CPU, 1, (int64_t[]){D}));
    CHECK(moe_tensor_requires_grad_(p[1].t, true));

    /* A repeating sequence 0 1 2 … V-1 0 1 …: predict the next token. */
    int64_t in_ids[T], next_ids[T];
    for (int t = 0; t < T; t++) {
        in_ids[t] = t % V;
        next_ids[t] = (t + 1) % V;
    }
    moe_tensor *inputs, *targets;
    CHECK(moe_tensor_from_data(&inputs, MOE_I64, MOE_CPU, 1, (int64_t[]){T}, in_ids));
    CHECK(moe_tensor_from_data(&targets, MOE_I64, MOE_CPU, 1, (int64_t[]){T}, next_ids));

    printf("tiny MoE LM: T=%d D=%d F=%d E=%d K=%d V=%d, SGD lr 0.5\n", T, D, F, E, K, V);
    double first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        moe_tensor *loss = forward(p, inputs, targets);
        double l;
        CHECK(moe_tensor_item(loss, &l));
        CHECK(moe_backward(loss, NULL, false));
        if (step == 0) first = l;
        last = l;
        printf("step %d  loss %.6f  grad-norms", step, l);
        for (int i = 0; i < NP; i++) printf("  %s %.4f", p[i].name, norm(p[i].t->grad));
        printf("\n");
        bool prev = moe_grad_set_enabled(false);
        for (int i = 0; i < NP; i++) { /* w ← w − lr·g */
            moe_tensor *upd;
            CHECK(moe_mul_scalar(&upd, p[i].t->grad, -0.5));
            moe_tensor *neww;
            CHECK(moe_add(&neww, p[i].t, upd));
            CHECK(moe_tensor_copy_(p[i].t, neww));
            moe_tensor_release(upd);
            moe_tensor_release(neww);
            moe_tensor_zero_grad(p[i].t);
        }
        moe_grad_set_enabled(prev);
        moe_tensor_release(loss);
    }
    printf("loss %.6f -> %.6f (ln V = %.6f)\n", first, last, log((double)V));
    for (int i = 0; i < NP; i++) moe_tensor_release(p[i].t);
    moe_tensor_release(inputs);
    moe_tensor_release(targets);
    if (!(last < first)) {
        fprintf(stderr, "tiny-model: loss did not go down\n");
        return 1;
    }
    return 0;
}
