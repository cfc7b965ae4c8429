/*
 * idem_int.h - Idempotency-Key support (SERVICES §0 Idempotency), shared by http.c (the request
 * pipeline) and service.c (the migration). Never included from services.
 *
 * A route with GR_R_IK honours the header; GR_R_IK_REQUIRED also requires it (400
 * `idempotency_key_required` without it). A key is 1..255 printable ASCII characters (0x20..0x7e),
 * anything else is a 400. Records live in the library's table `idempotency_keys`, scoped by
 * (caller, method, path, key): caller is the token's `sub` ("anonymous" without a token), path the
 * request path as received (without the query string).
 *
 * Flow: gr_idem__begin, with one insert (a short transaction when the key exists), reserves
 * the key with a 'pending' row, or
 * answers from the existing row: same body (SHA-256 of the raw bytes) and done → the stored
 * response, with `Idempotent-Replayed: true`, and the handler is not run; a different body → 422
 * `idempotency_key_reuse`; still pending → 409 `idempotency_in_flight`. Rows past expires_at
 * (created + 24 h on the library clock) and pending rows whose lease ran out (the process died)
 * are replaced. Leases: while gr_idem__lease_start's thread runs (gr_main starts it with a
 * database), a reservation's row is given lease_until = now + GR_IDEM_LEASE_MS (env
 * GR_IDEM_LEASE_MS overrides it, read at start) and the thread renews, every lease/3, the leases
 * of the keys this process still holds, so a live holder's key is never taken over however long
 * its handler runs, while a dead one's is free a lease after its last renewal. Rows without a
 * lease (older rows, or no thread) are abandoned GR_IDEM_ABANDON_MS after created_at. On a
 * GR_R_TX route the whole record lives in the handler's own transaction: gr_idem__begin_tx
 * reserves the key as its first statement (a twin request waits there for it, then replays),
 * gr_idem__store writes the 2xx response before the commit: one commit, the effect never
 * without its stored response, and no pending row ever visible; gr_idem__end stores it
 * afterwards on other routes, and deletes the pending row for every other outcome (4xx, 5xx:
 * nothing is kept, a retry runs the handler again). Responses above GR_IDEM_MAX_BODY bytes, or
 * whose body is not UTF-8 text, are not stored (the key is released, a warning logged). The key's
 * value is never logged.
 */
#ifndef GR_IDEM_INT_H
#define GR_IDEM_INT_H

#include <stdbool.h>

#include "gr/db.h"
#include "gr/http.h"

#define GR_IDEM_KEY_MAX    255
#define GR_IDEM_TTL_MS     (24LL * 3600 * 1000)
#define GR_IDEM_ABANDON_MS (60LL * 1000) /* rows without a lease */
#define GR_IDEM_LEASE_MS   (10LL * 1000)
#define GR_IDEM_MAX_BODY   (1024 * 1024)

/* The migrations of the table, applied as service "gr.idem" by gr_main. */
extern const struct gr_migration gr_idem_migrations[];

/* A stored response, as read back. Strings are arena memory. */
struct gr_idem_resp {
    int status;
    const char *content_type; /* may be NULL */
    const char *headers;      /* JSON array of [name, value] pairs; may be NULL */
    const char *body;         /* may be NULL */
};

/* One request's hold on a key; zero-initialise. Strings are arena memory. */
struct gr_idem {
    bool active;       /* a key is reserved by this request */
    bool stored;       /* its response was written into the row */
    bool in_tx;        /* a GR_R_TX route: reserved inside the handler's transaction */
    bool tx_stored;    /* written by gr_idem__store_in_tx into a transaction that may commit */
    bool tx_committed; /* ... and that transaction was seen to commit: no read-back needed */
    bool lazy;         /* GR_R_IK_LAZY: the key is new; reserve it in the first gr_req_tx */
    int lost;          /* the lazy reservation found the key taken: its enum gr_idem_outcome */
    struct gr_idem_resp lost_resp; /* with lost == GR_IDEM_REPLAY: the stored answer */
    const char *caller;
    const char *key;
    const char *hash;  /* SHA-256 of the body, lowercase hex */
    const char *owner; /* random token naming this reservation */
};

enum gr_idem_outcome {
    GR_IDEM_OWNED = 0, /* reserved: run the handler */
    GR_IDEM_REPLAY,    /* done, same body: *stored holds the response */
    GR_IDEM_IN_FLIGHT, /* pending, same body */
    GR_IDEM_REUSE,     /* different body */
};

/**
 * The store's reservation step, exposed for unit tests: in one transaction on @c (none may be
 * open), with retries on GR_EBUSY/GR_ECONFLICT, reserves (caller, method, path, key) for @owner
 * with body hash @hash at library time @now_ms, or reports the existing row. *@outcome is an
 * enum gr_idem_outcome; with GR_IDEM_REPLAY, *@stored (arena @a) holds the response.
 * Errors: the gr_db codes.
 */
GR_MUST_CHECK int gr_idem__reserve(struct gr_db_conn *c, struct gr_arena *a, const char *caller,
                                   const char *method, const char *path, const char *key,
                                   const char *hash, const char *owner, long long now_ms,
                                   int *outcome, struct gr_idem_resp *stored);

/**
 * Writes @r into the row reserved by @owner and marks it done, on @c: inside the caller's open
 * transaction when there is one, else in its own. GR_ECONFLICT when the row is no longer
 * @owner's (another request replaced it as abandoned).
 */
GR_MUST_CHECK int gr_idem__complete(struct gr_db_conn *c, const char *caller, const char *method,
                                    const char *path, const char *key, const char *owner,
                                    const struct gr_idem_resp *r);

/** Deletes the row reserved by @owner (its own transaction, retried); errors are logged only. */
void gr_idem__release(struct gr_db_conn *c, const char *caller, const char *method,
                      const char *path, const char *key, const char *owner);

/** Deletes at most @max rows expired at @now_ms; *@deleted may be NULL. */
GR_MUST_CHECK int gr_idem__purge(struct gr_db_conn *c, long long now_ms, int max,
                                 long long *deleted);

/**
 * Starts the process's lease renewal thread on @db (one per process; GR_EINTERNAL if already
 * running). From then on reservations carry leases. GR_ECONFIG for a bad GR_IDEM_LEASE_MS.
 */
GR_MUST_CHECK int gr_idem__lease_start(struct gr_db *db);

/** Stops the thread (no-op when not running) and forgets held owners; before gr_db_close. */
void gr_idem__lease_stop(void);

/** The lease given to new reservations, ms; 0 when no renewal thread runs. */
long long gr_idem__lease_ms(void);

/** Adds @owner to / removes it from the set of reservations whose leases the thread renews. */
void gr_idem__hold(const char *owner);
void gr_idem__unhold(const char *owner);

/** Sets lease_until = @now_ms + @lease_ms on the pending rows of @owners (batched). */
GR_MUST_CHECK int gr_idem__renew(struct gr_db_conn *c, const char *const *owners, size_t n,
                                 long long now_ms, long long lease_ms);

/**
 * Before the handler (req->db set, body read and parsed). Returns 0 to run the handler (with
 * ik->active telling whether a key is held), 1 when @resp holds a replayed response (do not run
 * the handler), or a negative code with the problem set on @resp (400, 409, 422, DB errors).
 */
GR_MUST_CHECK int gr_idem__begin(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik);

/**
 * GR_R_TX routes (ik->in_tx): the reservation, as the first statement of the handler's open
 * transaction; answers as gr_idem__begin (0: run the handler; 1: a replay in @resp; a negative
 * code: a problem in @resp, or GR_EBUSY to run the attempt again). The caller rolls back
 * unless 0. No-op (0) for other routes.
 */
GR_MUST_CHECK int gr_idem__begin_tx(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik);

/**
 * Inside the handler's open transaction, just before its commit, when the handler succeeded:
 * stores a 2xx response in the row (the JSON body is rendered into resp->body here, so the
 * replay is byte-identical). Returns 0 (also when nothing is to be stored) or a code that must
 * make the caller roll back.
 */
GR_MUST_CHECK int gr_idem__store(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik);

/**
 * gr_req_idem_store: on a route that is not GR_R_TX, with a key held, writes @resp as the key's
 * answer inside the transaction open on req->db. Whether that transaction committed is read
 * back by gr_idem__end (one read instead of a commit of its own). 0 when there is nothing to do.
 */
GR_MUST_CHECK int gr_idem__store_in_tx(struct gr_req *req, struct gr_resp *resp,
                                       struct gr_idem *ik);

/**
 * GR_R_IK_LAZY: inside the transaction gr_req_tx has just begun, reserves the key that
 * gr_idem__begin left for later (no-op otherwise). 0, with *@now set when it was reserved by
 * this call (the caller calls gr_idem__unreserve if that transaction does not commit); or
 * GR_ECONFLICT when the key is taken (ik->lost: the handler's answer is replaced by the key's,
 * gr_idem__lost_answer); or a DB error.
 */
GR_MUST_CHECK int gr_idem__begin_lazy(struct gr_req *req, struct gr_idem *ik, bool *now);
/** The reservation gr_idem__begin_lazy made was rolled back: the key is to reserve again. */
void gr_idem__unreserve(struct gr_idem *ik);
/**
 * When a lazy reservation found the key taken: puts the key's answer in @resp (emptied by
 * the caller) and returns the request's code (0: a replay; < 0: a problem). Else @rc.
 */
int gr_idem__lost_answer(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int rc);

/** After the handler's last attempt, with its result @rc: stores or releases the key. */
void gr_idem__end(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int rc);

#endif
