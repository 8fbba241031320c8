/* pipeline-func.c — the point-to-point primitives that (moelab pipeline)
 * moves activations and gradients with: moe_send and moe_recv_ of
 * core/dist/comm.h on a <group>.
 *
 * Until (moelab dist) has send!/recv!: these two primitives are private to
 * (moelab pipeline), which switches to the (moelab dist) procedures once
 * they exist, and this file goes. */
#include "bindings.h"

SCM_DEFINE(moelab_pipeline_send_x, "%pipeline-send!", 4, 0, 0, (SCM t, SCM dst, SCM tag, SCM g),
           "Send tensor @var{t} to rank @var{dst} of group @var{g} with tag @var{tag}.")
#define FUNC_NAME "pipeline-step!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int to = moelab_to_int(dst, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = moelab_to_group(g, 4, FUNC_NAME);
    if (moe_send(x, to, k, grp) != MOE_OK) moelab_throw_last_from(FUNC_NAME, "send");
    scm_remember_upto_here_2(t, g);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_pipeline_recv_x, "%pipeline-recv!", 4, 0, 0, (SCM t, SCM src, SCM tag, SCM g),
           "Fill tensor @var{t} with what rank @var{src} of group @var{g} sent with tag @var{tag}; "
           "returns @var{t}.")
#define FUNC_NAME "pipeline-step!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int from = moelab_to_int(src, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = moelab_to_group(g, 4, FUNC_NAME);
    if (moe_recv_(x, from, k, grp) != MOE_OK) moelab_throw_last_from(FUNC_NAME, "recv");
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

/* Called by init.c. */
void moelab_init_pipeline_func(void);
void moelab_init_pipeline_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "pipeline-func.x"
#endif
}
