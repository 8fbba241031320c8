/* wire.c — Jupyter messages on ZeroMQ sockets: the multipart wire format
 * and its HMAC-SHA256 signatures. See wire.h. */
#include <config.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <zmq.h>

#include "wire.h"

static const char DELIM[] = "<IDS|MSG>";

static void random_hex(char *out, size_t n_bytes)
{
    unsigned char buf[32];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(buf, 1, n_bytes, f) : 0;
    if (f) fclose(f);
    for (size_t i = got; i < n_bytes; i++) buf[i] = (unsigned char)(rand() ^ (int)time(NULL));
    for (size_t i = 0; i < n_bytes; i++) sprintf(out + 2 * i, "%02x", buf[i]);
}

void wire_session_init(wire_session *s, const char *key)
{
    s->key = strdup(key ? key : "");
    random_hex(s->session, 16);
}

void wire_session_free(wire_session *s)
{
    free(s->key);
    s->key = NULL;
}

void wire_sign(const wire_session *s, const char *const frames[4], char out[65])
{
    out[0] = 0;
    if (!s->key[0]) return;
    size_t total = 0, off = 0;
    for (int i = 0; i < 4; i++) total += strlen(frames[i]);
    unsigned char *data = malloc(total + 1);
    for (int i = 0; i < 4; i++) {
        size_t n = strlen(frames[i]);
        memcpy(data + off, frames[i], n);
        off += n;
    }
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), s->key, (int)strlen(s->key), data, total, mac, &len);
    free(data);
    for (unsigned int i = 0; i < len && i < 32; i++) sprintf(out + 2 * i, "%02x", mac[i]);
}

static int recv_frame(void *socket, zmq_msg_t *frame)
{
    zmq_msg_init(frame);
    if (zmq_msg_recv(frame, socket, 0) < 0) {
        zmq_msg_close(frame);
        return -1;
    }
    return 0;
}

static char *frame_string(zmq_msg_t *frame)
{
    size_t n = zmq_msg_size(frame);
    char *s = malloc(n + 1);
    memcpy(s, zmq_msg_data(frame), n);
    s[n] = 0;
    return s;
}

/* Drop the rest of a multipart message. */
static void drain(void *socket)
{
    int more = 0;
    size_t len = sizeof more;
    while (zmq_getsockopt(socket, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t f;
        if (recv_frame(socket, &f) < 0) return;
        zmq_msg_close(&f);
        len = sizeof more;
    }
}

static bool has_more(void *socket)
{
    int more = 0;
    size_t len = sizeof more;
    return zmq_getsockopt(socket, ZMQ_RCVMORE, &more, &len) == 0 && more;
}

void wire_msg_free(wire_msg *msg)
{
    for (size_t i = 0; i < msg->n_ids; i++) free(msg->ids[i]);
    json_decref(msg->header);
    json_decref(msg->parent);
    json_decref(msg->metadata);
    json_decref(msg->content);
    memset(msg, 0, sizeof *msg);
}

int wire_recv(const wire_session *s, void *socket, wire_msg *msg)
{
    memset(msg, 0, sizeof *msg);
    /* identities up to the delimiter */
    for (;;) {
        zmq_msg_t f;
        if (recv_frame(socket, &f) < 0) {
            int e = errno;
            wire_msg_free(msg);
            errno = e;
            return -1;
        }
        size_t n = zmq_msg_size(&f);
        if (n == sizeof DELIM - 1 && memcmp(zmq_msg_data(&f), DELIM, n) == 0) {
            zmq_msg_close(&f);
            break;
        }
        if (msg->n_ids < WIRE_MAX_IDS) {
            msg->ids[msg->n_ids] = malloc(n ? n : 1);
            memcpy(msg->ids[msg->n_ids], zmq_msg_data(&f), n);
            msg->id_len[msg->n_ids++] = n;
        }
        zmq_msg_close(&f);
        if (!has_more(socket)) {
            fprintf(stderr, "moelab-kernel: dropped a message without the <IDS|MSG> delimiter\n");
            wire_msg_free(msg);
            return 1;
        }
    }
    char *parts[5] = {0};
    int got = 0;
    for (; got < 5 && has_more(socket); got++) {
        zmq_msg_t f;
        if (recv_frame(socket, &f) < 0) break;
        parts[got] = frame_string(&f);
        zmq_msg_close(&f);
    }
    drain(socket); /* buffers: not used by this kernel */
    int status = 1;
    if (got < 5) {
        fprintf(stderr, "moelab-kernel: dropped a message with %d of its 5 frames\n", got);
        goto done;
    }
    char expected[65];
    wire_sign(s, (const char *const[]){parts[1], parts[2], parts[3], parts[4]}, expected);
    if (strlen(parts[0]) != strlen(expected) ||
        CRYPTO_memcmp(parts[0], expected, strlen(expected)) != 0) {
        fprintf(stderr, "moelab-kernel: rejected a message with a bad signature\n");
        goto done;
    }
    json_error_t err;
    json_t **slots[4] = {&msg->header, &msg->parent, &msg->metadata, &msg->content};
    for (int i = 0; i < 4; i++) {
        *slots[i] = json_loads(parts[i + 1], 0, &err);
        if (!json_is_object(*slots[i])) {
            fprintf(stderr, "moelab-kernel: dropped a message whose frame %d is not a JSON object: %s\n",
                    i + 1, err.text);
            goto done;
        }
    }
    if (!json_is_string(json_object_get(msg->header, "msg_type"))) {
        fprintf(stderr, "moelab-kernel: dropped a message without a msg_type\n");
        goto done;
    }
    status = 0;
done:
    for (int i = 0; i < 5; i++) free(parts[i]);
    if (status) wire_msg_free(msg);
    return status;
}

static void iso_now(char out[40])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ldZ", (long)tv.tv_usec);
}

int wire_send(const wire_session *s, void *socket, const wire_msg *parent, bool to_iopub,
              const char *msg_type, json_t *content)
{
    static atomic_ulong counter;
    if (!content) content = json_object();
    char msg_id[64], date[40];
    snprintf(msg_id, sizeof msg_id, "%s_%lu", s->session, (unsigned long)atomic_fetch_add(&counter, 1));
    iso_now(date);
    const char *username = "moelab";
    if (parent && json_is_string(json_object_get(parent->header, "username")))
        username = json_string_value(json_object_get(parent->header, "username"));
    json_t *header = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "msg_id", msg_id, "session",
                               s->session, "username", username, "date", date, "msg_type",
                               msg_type, "version", "5.3");
    char *frames[4];
    frames[0] = json_dumps(header, JSON_COMPACT);
    frames[1] = parent ? json_dumps(parent->header, JSON_COMPACT) : strdup("{}");
    frames[2] = strdup("{}");
    frames[3] = json_dumps(content, JSON_COMPACT);
    json_decref(header);
    json_decref(content);
    char signature[65];
    wire_sign(s, (const char *const *)frames, signature);

    int rc = 0;
    if (to_iopub || !parent) {
        rc |= zmq_send(socket, msg_type, strlen(msg_type), ZMQ_SNDMORE) < 0;
    } else {
        for (size_t i = 0; i < parent->n_ids; i++)
            rc |= zmq_send(socket, parent->ids[i], parent->id_len[i], ZMQ_SNDMORE) < 0;
    }
    rc |= zmq_send(socket, DELIM, sizeof DELIM - 1, ZMQ_SNDMORE) < 0;
    rc |= zmq_send(socket, signature, strlen(signature), ZMQ_SNDMORE) < 0;
    for (int i = 0; i < 4; i++) {
        rc |= zmq_send(socket, frames[i], strlen(frames[i]), i < 3 ? ZMQ_SNDMORE : 0) < 0;
        free(frames[i]);
    }
    return rc ? -1 : 0;
}
