/* check_wire.c — the Jupyter wire format of moelab-kernel (scheme/kernel/wire.c):
 * HMAC-SHA256 signatures against RFC 4231's test vectors, a message sent and
 * received back over a ZeroMQ pair, and what is dropped: a bad signature, a
 * message without the delimiter, a frame that is not a JSON object. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "wire.h"

START_TEST(test_sign_rfc4231)
{
    /* RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?",
     * here split over the four frames that are signed one after another */
    wire_session s;
    wire_session_init(&s, "Jefe");
    char sig[65];
    wire_sign(&s, (const char *const[]){"what do ya", " want", " for ", "nothing?"}, sig);
    ck_assert_str_eq(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    wire_session_free(&s);

    /* test case 3 of the same RFC needs bytes 0xaa: key of 20 of them, data
     * of 50 bytes 0xdd */
    char key[21], data[51];
    memset(key, 0xaa, 20);
    key[20] = 0;
    memset(data, 0xdd, 50);
    data[50] = 0;
    wire_session_init(&s, key);
    wire_sign(&s, (const char *const[]){data, "", "", ""}, sig);
    ck_assert_str_eq(sig, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    wire_session_free(&s);

    /* no key: no signature */
    wire_session_init(&s, "");
    wire_sign(&s, (const char *const[]){"{}", "{}", "{}", "{}"}, sig);
    ck_assert_str_eq(sig, "");
    wire_session_free(&s);
}
END_TEST

static void *ctx, *a, *b;

static void pair_up(void)
{
    ctx = zmq_ctx_new();
    a = zmq_socket(ctx, ZMQ_PAIR);
    b = zmq_socket(ctx, ZMQ_PAIR);
    ck_assert_int_eq(zmq_bind(a, "inproc://wire"), 0);
    ck_assert_int_eq(zmq_connect(b, "inproc://wire"), 0);
}

static void pair_down(void)
{
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
}

START_TEST(test_round_trip)
{
    pair_up();
    wire_session s;
    wire_session_init(&s, "secret");
    ck_assert_int_eq(wire_send(&s, a, NULL, true, "execute_request",
                               json_pack("{s:s, s:i}", "code", "(+ 1 2)", "n", 3)),
                     0);
    wire_msg m;
    ck_assert_int_eq(wire_recv(&s, b, &m), 0);
    /* the iopub topic is the one identity frame */
    ck_assert_uint_eq(m.n_ids, 1);
    ck_assert_uint_eq(m.id_len[0], strlen("execute_request"));
    ck_assert(memcmp(m.ids[0], "execute_request", m.id_len[0]) == 0);
    ck_assert_str_eq(json_string_value(json_object_get(m.header, "msg_type")), "execute_request");
    ck_assert_str_eq(json_string_value(json_object_get(m.header, "version")), "5.3");
    ck_assert_str_eq(json_string_value(json_object_get(m.header, "session")), s.session);
    ck_assert_str_eq(json_string_value(json_object_get(m.content, "code")), "(+ 1 2)");
    ck_assert_int_eq(json_integer_value(json_object_get(m.content, "n")), 3);

    /* a reply goes to the request's identities, with its header as parent */
    ck_assert_int_eq(wire_send(&s, b, &m, false, "execute_reply", NULL), 0);
    wire_msg r;
    ck_assert_int_eq(wire_recv(&s, a, &r), 0);
    ck_assert_uint_eq(r.n_ids, 1);
    ck_assert_str_eq(json_string_value(json_object_get(r.parent, "msg_id")),
                     json_string_value(json_object_get(m.header, "msg_id")));
    ck_assert_int_eq(json_object_size(r.content), 0);
    ck_assert_str_ne(json_string_value(json_object_get(r.header, "msg_id")),
                     json_string_value(json_object_get(m.header, "msg_id")));
    wire_msg_free(&m);
    wire_msg_free(&r);
    wire_session_free(&s);
    pair_down();
}
END_TEST

static void send_frames(void *socket, const char *const *frames, int n)
{
    for (int i = 0; i < n; i++)
        zmq_send(socket, frames[i], strlen(frames[i]), i + 1 < n ? ZMQ_SNDMORE : 0);
}

START_TEST(test_dropped)
{
    pair_up();
    wire_session s, other;
    wire_session_init(&s, "secret");
    wire_session_init(&other, "not-the-secret");
    wire_msg m;

    /* signed with another key: dropped, and the next message still reads */
    ck_assert_int_eq(wire_send(&other, a, NULL, true, "execute_request", NULL), 0);
    ck_assert_int_eq(wire_recv(&s, b, &m), 1);
    ck_assert_ptr_null(m.header);
    ck_assert_int_eq(wire_send(&s, a, NULL, true, "status", NULL), 0);
    ck_assert_int_eq(wire_recv(&s, b, &m), 0);
    wire_msg_free(&m);

    /* an unsigned message to a kernel with a key */
    send_frames(a, (const char *const[]){"<IDS|MSG>", "", "{\"msg_type\":\"x\"}", "{}", "{}", "{}"}, 6);
    ck_assert_int_eq(wire_recv(&s, b, &m), 1);

    /* no delimiter */
    send_frames(a, (const char *const[]){"id", "more"}, 2);
    ck_assert_int_eq(wire_recv(&s, b, &m), 1);

    /* too few frames */
    send_frames(a, (const char *const[]){"<IDS|MSG>", "sig", "{}"}, 3);
    ck_assert_int_eq(wire_recv(&s, b, &m), 1);

    /* well signed, but the header is not JSON */
    const char *frames[4] = {"not json", "{}", "{}", "{}"};
    char sig[65];
    wire_sign(&s, frames, sig);
    send_frames(a, (const char *const[]){"<IDS|MSG>", sig, frames[0], frames[1], frames[2], frames[3]}, 6);
    ck_assert_int_eq(wire_recv(&s, b, &m), 1);

    /* and still a good one reads */
    ck_assert_int_eq(wire_send(&s, a, NULL, true, "status", NULL), 0);
    ck_assert_int_eq(wire_recv(&s, b, &m), 0);
    wire_msg_free(&m);
    wire_session_free(&s);
    wire_session_free(&other);
    pair_down();
}
END_TEST

int main(void)
{
    Suite *suite = suite_create("wire");
    TCase *tc = tcase_create("wire");
    tcase_add_test(tc, test_sign_rfc4231);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_dropped);
    suite_add_tcase(suite, tc);
    SRunner *runner = srunner_create(suite);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
