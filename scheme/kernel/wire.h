/* wire.h — Jupyter messages on ZeroMQ sockets (messaging protocol 5.3):
 * reading and writing the multipart wire format, signing with HMAC-SHA256.
 *
 * A message on the wire is
 *   [identities…] "<IDS|MSG>" signature header parent_header metadata content [buffers…]
 * where the signature is the hex HMAC-SHA256, keyed by the connection
 * file's key, of the four JSON frames that follow it (empty when the key
 * is empty). */
#ifndef MOELAB_KERNEL_WIRE_H
#define MOELAB_KERNEL_WIRE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define WIRE_MAX_IDS 16

typedef struct {
    char *key;          /* the signing key, "" for none */
    char session[40];   /* this kernel's session id */
} wire_session;

typedef struct {
    size_t n_ids;
    void *ids[WIRE_MAX_IDS];     /* routing identities of the sender */
    size_t id_len[WIRE_MAX_IDS];
    json_t *header, *parent, *metadata, *content;
} wire_msg;

/* A session signing with KEY (copied; NULL for none) under a fresh random
 * session id. */
void wire_session_init(wire_session *s, const char *key);
void wire_session_free(wire_session *s);

/* The hex HMAC-SHA256 of the four JSON frames FRAMES under S's key, into OUT
 * (65 bytes; "" when the key is empty). */
void wire_sign(const wire_session *s, const char *const frames[4], char out[65]);

/* Receive one message from SOCKET (blocking). Returns 0 and fills MSG, -1 on
 * a socket error (errno set, e.g. EINTR), or 1 for a malformed or badly
 * signed message, which is logged on stderr and dropped. */
int wire_recv(const wire_session *s, void *socket, wire_msg *msg);

void wire_msg_free(wire_msg *msg);

/* Send a message of MSG_TYPE with CONTENT (stolen) on SOCKET, in reply to
 * PARENT (may be NULL): to PARENT's identities, or on the iopub topic
 * MSG_TYPE when PARENT is NULL or TO_IOPUB. Returns 0 or -1. */
int wire_send(const wire_session *s, void *socket, const wire_msg *parent, bool to_iopub,
              const char *msg_type, json_t *content);

#endif
