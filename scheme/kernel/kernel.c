/* kernel.c — moelab-kernel, the Jupyter kernel of moelab.
 *
 * Embeds Guile with (moelab) loaded and speaks the Jupyter messaging
 * protocol (5.3) over ZeroMQ: heartbeat (an echo thread), control (a thread:
 * interrupt, shutdown, kernel_info), shell (the main thread, which owns
 * Guile: execute, complete, inspect, is_complete, kernel_info, comm_info,
 * history, shutdown), iopub (status, execute_input, stream, display_data,
 * execute_result, error) and stdin (bound; input requests are not made).
 *
 * The requests that need Scheme go to (moelab kernel), which returns the
 * reply's content as Scheme data; to_json turns it into JSON. A cell's
 * output reaches iopub while it runs through %kernel-publish.
 *
 * An interrupt is SIGINT, from Jupyter or raised by the control thread:
 * (moelab kernel)'s handler stops the running cell at the next safe point. */
#include <config.h>

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <libguile.h>
#include <zmq.h>

#include "kernel.h"
#include "moelab-guile.h"
#include "own-dirs.h"
#include "wire.h"

#ifndef MOELAB_SCHEME_DIR
#define MOELAB_SCHEME_DIR ""
#endif
#ifndef MOELAB_CCACHE_DIR
#define MOELAB_CCACHE_DIR ""
#endif

static wire_session session;
static void *zctx, *shell_sock, *control_sock, *iopub_sock, *stdin_sock, *hb_sock;
static const wire_msg *current_request; /* the shell request being handled */
static json_t *kernel_info;             /* the content of kernel_info_reply */
static int execution_count;

/* ---- Scheme data to JSON ------------------------------------------------- */

static bool is_alist(SCM v)
{
    for (; scm_is_pair(v); v = scm_cdr(v)) {
        SCM e = scm_car(v);
        if (!scm_is_pair(e) || !(scm_is_string(scm_car(e)) || scm_is_symbol(scm_car(e))))
            return false;
    }
    return scm_is_null(v);
}

static char *scm_text(SCM v)
{
    if (scm_is_symbol(v)) v = scm_symbol_to_string(v);
    if (!scm_is_string(v)) v = scm_object_to_string(v, SCM_UNDEFINED);
    return scm_to_utf8_string(v);
}

/* An alist is an object ('() the empty one), a vector an array, 'null null. */
json_t *kernel_to_json(SCM v)
{
    if (scm_is_string(v)) {
        char *s = scm_to_utf8_string(v);
        json_t *j = json_string(s);
        free(s);
        return j ? j : json_string("");
    }
    if (scm_is_bool(v)) return json_boolean(scm_is_true(v));
    if (scm_is_exact_integer(v) && scm_is_signed_integer(v, INT64_MIN, INT64_MAX))
        return json_integer(scm_to_int64(v));
    if (scm_is_real(v)) {
        double x = scm_to_double(v);
        return isfinite(x) ? json_real(x) : json_null();
    }
    if (scm_is_eq(v, scm_from_utf8_symbol("null"))) return json_null();
    if (scm_is_vector(v)) {
        json_t *a = json_array();
        for (size_t i = 0; i < scm_c_vector_length(v); i++)
            json_array_append_new(a, kernel_to_json(scm_c_vector_ref(v, i)));
        return a;
    }
    if (scm_is_null(v) || (scm_is_pair(v) && is_alist(v))) {
        json_t *o = json_object();
        for (; scm_is_pair(v); v = scm_cdr(v)) {
            char *key = scm_text(scm_caar(v));
            json_object_set_new(o, key, kernel_to_json(scm_cdar(v)));
            free(key);
        }
        return o;
    }
    char *s = scm_text(v);
    json_t *j = json_string(s);
    free(s);
    return j ? j : json_string("");
}

/* ---- iopub ----------------------------------------------------------------- */

static void publish(const char *type, json_t *content)
{
    if (wire_send(&session, iopub_sock, current_request, true, type, content) < 0)
        fprintf(stderr, "moelab-kernel: cannot publish %s: %s\n", type, zmq_strerror(errno));
}

static void publish_status(const char *state)
{
    publish("status", json_pack("{s:s}", "execution_state", state));
}

/* (%kernel-publish MSG-TYPE CONTENT): a message on iopub in reply to the
 * request being handled. */
static SCM scm_kernel_publish(SCM type, SCM content)
{
    char *t = scm_text(type);
    publish(t, kernel_to_json(content));
    free(t);
    return SCM_UNSPECIFIED;
}

/* ---- calling (moelab kernel) ----------------------------------------------- */

struct call {
    const char *proc;
    SCM args;
};

static SCM call_body(void *data)
{
    struct call *c = data;
    return scm_apply_0(scm_c_public_ref("moelab kernel", c->proc), c->args);
}

static SCM call_failed(void *data, SCM key, SCM args)
{
    struct call *c = data;
    SCM port = scm_current_error_port();
    scm_puts("moelab-kernel: ", port);
    scm_puts(c->proc, port);
    scm_puts(" failed: ", port);
    scm_print_exception(port, SCM_BOOL_F, key, args);
    return SCM_BOOL_F;
}

/* The reply content PROC returns, or an error reply when it fails. */
static json_t *call_scheme(const char *proc, SCM args)
{
    struct call c = {proc, args};
    SCM r = scm_internal_catch(SCM_BOOL_T, call_body, &c, call_failed, &c);
    if (scm_is_false(r))
        return json_pack("{s:s, s:s, s:s, s:[]}", "status", "error", "ename", "internal-error",
                         "evalue", proc, "traceback");
    return kernel_to_json(r);
}

static SCM content_string(const wire_msg *m, const char *key)
{
    const char *s = json_string_value(json_object_get(m->content, key));
    return scm_from_utf8_string(s ? s : "");
}

static SCM content_int(const wire_msg *m, const char *key)
{
    return scm_from_int64(json_integer_value(json_object_get(m->content, key)));
}

/* ---- requests -------------------------------------------------------------- */

static void reply(void *socket, const wire_msg *req, const char *type, json_t *content)
{
    if (wire_send(&session, socket, req, false, type, content) < 0)
        fprintf(stderr, "moelab-kernel: cannot send %s: %s\n", type, zmq_strerror(errno));
}

static void shutdown_now(void *socket, const wire_msg *req)
{
    json_t *restart = json_object_get(req->content, "restart");
    reply(socket, req, "shutdown_reply",
          json_pack("{s:s, s:b}", "status", "ok", "restart", json_is_true(restart)));
    /* let ZeroMQ's I/O thread send the reply, then go */
    usleep(200 * 1000);
    _exit(0);
}

static void execute(const wire_msg *req)
{
    bool silent = json_is_true(json_object_get(req->content, "silent"));
    if (!silent) execution_count++;
    SCM code = content_string(req, "code");
    if (!silent) {
        char *c = scm_to_utf8_string(code);
        publish("execute_input", json_pack("{s:s, s:i}", "code", c, "execution_count",
                                           execution_count));
        free(c);
    }
    json_t *r = call_scheme("kernel-execute",
                            scm_list_3(code, scm_from_int(execution_count), scm_from_bool(silent)));
    scm_flush_all_ports();
    reply(shell_sock, req, "execute_reply", r);
}

static void handle_shell(const wire_msg *req)
{
    const char *type = json_string_value(json_object_get(req->header, "msg_type"));
    current_request = req;
    publish_status("busy");
    if (!strcmp(type, "kernel_info_request"))
        reply(shell_sock, req, "kernel_info_reply", json_deep_copy(kernel_info));
    else if (!strcmp(type, "execute_request"))
        execute(req);
    else if (!strcmp(type, "complete_request"))
        reply(shell_sock, req, "complete_reply",
              call_scheme("kernel-complete",
                          scm_list_2(content_string(req, "code"), content_int(req, "cursor_pos"))));
    else if (!strcmp(type, "inspect_request"))
        reply(shell_sock, req, "inspect_reply",
              call_scheme("kernel-inspect",
                          scm_list_2(content_string(req, "code"), content_int(req, "cursor_pos"))));
    else if (!strcmp(type, "is_complete_request"))
        reply(shell_sock, req, "is_complete_reply",
              call_scheme("kernel-is-complete", scm_list_1(content_string(req, "code"))));
    else if (!strcmp(type, "comm_info_request"))
        reply(shell_sock, req, "comm_info_reply", json_pack("{s:s, s:{}}", "status", "ok", "comms"));
    else if (!strcmp(type, "history_request"))
        reply(shell_sock, req, "history_reply", json_pack("{s:s, s:[]}", "status", "ok", "history"));
    else if (!strcmp(type, "shutdown_request")) {
        publish_status("idle");
        shutdown_now(shell_sock, req);
    } else
        fprintf(stderr, "moelab-kernel: ignored a %s on the shell socket\n", type);
    publish_status("idle");
    current_request = NULL;
}

/* The control thread: interrupts reach a running cell through SIGINT. */
static void *control_loop(void *unused)
{
    (void)unused;
    for (;;) {
        wire_msg req;
        int rc = wire_recv(&session, control_sock, &req);
        if (rc < 0) {
            if (errno == EINTR) continue;
            if (errno == ETERM) return NULL;
            fprintf(stderr, "moelab-kernel: control socket: %s\n", zmq_strerror(errno));
            continue;
        }
        if (rc > 0) continue;
        const char *type = json_string_value(json_object_get(req.header, "msg_type"));
        if (!strcmp(type, "interrupt_request")) {
            kill(getpid(), SIGINT);
            reply(control_sock, &req, "interrupt_reply", json_pack("{s:s}", "status", "ok"));
        } else if (!strcmp(type, "shutdown_request"))
            shutdown_now(control_sock, &req);
        else if (!strcmp(type, "kernel_info_request"))
            reply(control_sock, &req, "kernel_info_reply", json_deep_copy(kernel_info));
        else
            fprintf(stderr, "moelab-kernel: ignored a %s on the control socket\n", type);
        wire_msg_free(&req);
    }
}

static void *heartbeat_loop(void *unused)
{
    (void)unused;
    zmq_proxy(hb_sock, hb_sock, NULL); /* echoes until the context ends */
    return NULL;
}

/* ---- start-up ---------------------------------------------------------------- */

static void *bind_socket(json_t *conn, int type, const char *port_key)
{
    const char *transport = json_string_value(json_object_get(conn, "transport"));
    const char *ip = json_string_value(json_object_get(conn, "ip"));
    json_int_t port = json_integer_value(json_object_get(conn, port_key));
    char endpoint[512];
    if (transport && !strcmp(transport, "ipc"))
        snprintf(endpoint, sizeof endpoint, "ipc://%s-%lld", ip ? ip : "kernel", (long long)port);
    else
        snprintf(endpoint, sizeof endpoint, "tcp://%s:%lld", ip ? ip : "127.0.0.1", (long long)port);
    void *s = zmq_socket(zctx, type);
    int linger = 1000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s, endpoint) != 0) {
        fprintf(stderr, "moelab-kernel: cannot bind the %s to %s: %s\n", port_key, endpoint,
                zmq_strerror(errno));
        exit(1);
    }
    return s;
}

static SCM banner(void)
{
    return scm_call_0(scm_c_public_ref("moelab repl", "moelab-banner"));
}

static void make_kernel_info(void)
{
    char *version = scm_to_utf8_string(scm_variable_ref(scm_c_public_lookup("moelab config",
                                                                            "%moelab-version")));
    char *guile = scm_to_utf8_string(scm_version());
    char *text = scm_text(banner());
    kernel_info = json_pack(
        "{s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s, s:s}, s:s, s:[], s:b}", "status", "ok",
        "protocol_version", "5.3", "implementation", "moelab", "implementation_version", version,
        "language_info", "name", "scheme", "version", guile, "mimetype", "text/x-scheme",
        "file_extension", ".scm", "pygments_lexer", "scheme", "codemirror_mode", "scheme",
        "banner", text, "help_links", "debugger", 0);
    free(version);
    free(guile);
    free(text);
}

static void init_bindings(void *unused)
{
    (void)unused;
    scm_init_moelab();
}

static const char *connection_file;

static void inner_main(void *closure, int argc, char **argv)
{
    (void)closure;
    (void)argc;
    (void)argv;
    json_error_t err;
    json_t *conn = json_load_file(connection_file, 0, &err);
    if (!json_is_object(conn)) {
        fprintf(stderr, "moelab-kernel: cannot read the connection file %s: %s (line %d)\n",
                connection_file, err.text, err.line);
        exit(1);
    }
    const char *scheme = json_string_value(json_object_get(conn, "signature_scheme"));
    if (scheme && *scheme && strcmp(scheme, "hmac-sha256")) {
        fprintf(stderr, "moelab-kernel: %s: unsupported signature_scheme %s (expected hmac-sha256)\n",
                connection_file, scheme);
        exit(1);
    }
    wire_session_init(&session, json_string_value(json_object_get(conn, "key")));

    scm_c_register_extension("libguile-moelab", "scm_init_moelab", init_bindings, NULL);
    prepend_own_dirs("%load-path", "MOELAB_LOAD_PATH", MOELAB_SCHEME_DIR);
    prepend_own_dirs("%load-compiled-path", "MOELAB_LOAD_COMPILED_PATH", MOELAB_CCACHE_DIR);
    scm_c_define_gsubr("%kernel-publish", 2, 0, 0, scm_kernel_publish);
    scm_c_use_module("moelab kernel");
    scm_call_0(scm_c_public_ref("moelab kernel", "kernel-init!"));
    make_kernel_info();

    zctx = zmq_ctx_new();
    shell_sock = bind_socket(conn, ZMQ_ROUTER, "shell_port");
    control_sock = bind_socket(conn, ZMQ_ROUTER, "control_port");
    stdin_sock = bind_socket(conn, ZMQ_ROUTER, "stdin_port");
    iopub_sock = bind_socket(conn, ZMQ_PUB, "iopub_port");
    hb_sock = bind_socket(conn, ZMQ_REP, "hb_port");
    json_decref(conn);

    pthread_t hb, control;
    pthread_create(&hb, NULL, heartbeat_loop, NULL);
    pthread_create(&control, NULL, control_loop, NULL);
    publish_status("starting");

    for (;;) {
        wire_msg req;
        int rc = wire_recv(&session, shell_sock, &req);
        if (rc < 0) {
            if (errno == EINTR) continue; /* a signal between cells */
            fprintf(stderr, "moelab-kernel: shell socket: %s\n", zmq_strerror(errno));
            exit(1);
        }
        if (rc > 0) continue;
        handle_shell(&req);
        wire_msg_free(&req);
    }
}

static void usage(FILE *out)
{
    fputs("Usage: moelab-kernel -f CONNECTION-FILE\n"
          "       moelab-kernel --install [--user | --prefix DIR]\n"
          "The Jupyter kernel of moelab: Guile with (moelab) loaded.\n"
          "  -f FILE        run as a kernel on the sockets of the connection file FILE\n"
          "                 (Jupyter starts it so, through the kernelspec)\n"
          "  --install      install the kernelspec \"moelab\" under the prefix moelab was\n"
          "                 configured with (DIR/share/jupyter/kernels/moelab)\n"
          "  --user         ... in the user's Jupyter data directory instead\n"
          "  --prefix DIR   ... under DIR instead\n"
          "  --help         this text\n",
          out);
}

int main(int argc, char **argv)
{
    bool install = false, user = false;
    const char *prefix = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-f") || !strcmp(argv[i], "--connection-file")) && i + 1 < argc)
            connection_file = argv[++i];
        else if (!strncmp(argv[i], "--connection-file=", 18))
            connection_file = argv[i] + 18;
        else if (!strcmp(argv[i], "--install"))
            install = true;
        else if (!strcmp(argv[i], "--user"))
            user = true;
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc)
            prefix = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "moelab-kernel: unknown argument %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (install) return kernel_install(user, prefix) == 0 ? 0 : 1;
    if (!connection_file) {
        usage(stderr);
        return 2;
    }
    setlocale(LC_ALL, "");
    scm_boot_guile(argc, argv, inner_main, NULL);
    return 0;
}
