/*
 * order.h - order-service's own declarations (SERVICES §16): the route table, the handlers
 * (orders.c), the order store (order_db.c), the checkout saga and its resumer (saga.c), the
 * calls to other services and the tax-rate cache (upstream.c) and the consumed events
 * (events.c).
 *
 * Ownership: strings in the structs below are arena memory of the request or of the saga
 * runner's arena; json_t values handed out by the helpers are new references unless a comment
 * says "borrowed".
 */
#ifndef ORDER_H
#define ORDER_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/arena.h"
#include "gr/bus.h"
#include "gr/client.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/money.h"
#include "gr/router.h"

#define ORDER_NROUTES   8
#define ORDER_NSUBS     5
#define ORDER_LINES_MAX 100           /* lines of one order */
#define ORDER_QTY_MAX   999           /* quantity of one line */
#define ORDER_CODE_MAX  64            /* characters of a coupon code */
#define ORDER_RESP_MAX  (1024 * 1024) /* bytes of an upstream answer */
#define ORDER_ADDR_MAX  4096          /* bytes of the shipping address as JSON text */
#define ORDER_TAX_MAX   64            /* countries kept in the tax-rate cache */
#define ORDER_TAX_RATES 100           /* rates kept per country */
#define ORDER_SOURCE    "/gravity/order-service"

/* Order statuses (the seed's UPPER case, SERVICES §0). */
#define ST_PENDING    "PENDING"
#define ST_CONFIRMED  "CONFIRMED"
#define ST_PROCESSING "PROCESSING"
#define ST_SHIPPED    "SHIPPED"
#define ST_DELIVERED  "DELIVERED"
#define ST_CANCELLED  "CANCELLED"

/* One tax rate of 21 (GET /api/v1/tax-rates). */
struct tax_rate {
    char region[8]; /* "" for the country-wide rate */
    int rate_bp;
    bool inclusive;
    bool applies_to_shipping;
};

/* The rates of one country and when they were fetched. */
struct tax_entry {
    char country[3];
    int64_t fetched_ms; /* gr_time_mono_ms() of the fetch; 0 = empty slot */
    size_t n;
    struct tax_rate rates[ORDER_TAX_RATES];
};

/* The service's state (req->app), made by the init hook from the environment. */
struct order_app {
    const char *product_url;   /* PRODUCT_URL, default http://127.0.0.1:8007 */
    const char *inventory_url; /* INVENTORY_URL, default http://127.0.0.1:8008 */
    const char *tax_url;       /* TAX_URL (else INVOICE_URL), default http://127.0.0.1:8011 */
    const char *discount_url;  /* DISCOUNT_URL, default http://127.0.0.1:8012 */
    const char *payment_url;   /* PAYMENT_URL, default http://127.0.0.1:8005 */
    long long timeout_ms;      /* ORDER_CALL_TIMEOUT_MS, default 5000 (the seed's 5 s) */
    long long tax_fresh_s;     /* ORDER_TAX_REFRESH_S: rates younger than this are used as is */
    long long tax_max_age_s;   /* ORDER_TAX_MAX_AGE_S: 24 h (decision 15) */
    long long lease_ms;        /* ORDER_SAGA_LEASE_MS: a saga runner's hold on an order */
    long long resume_ms;       /* ORDER_RESUME_INTERVAL_MS: the resumer's pause */
    long long reserve_ttl_s;   /* ORDER_RESERVATION_TTL_S: ttl_s sent to 18 */
    long long give_up_s;       /* ORDER_SAGA_GIVE_UP_S: unreachable peers → cancel */
    const char *kill_at;       /* ORDER_TEST_KILL_AT: a saga point to SIGKILL at (tests) */
    /* peers of the process client (upstream.c), made by the init hook */
    struct gr_peer *product, *inventory, *tax_peer, *discount, *payment;
    struct gr_client *own_client; /* NULL under gr_main (its client is used) */
    struct gr_db *db;
    char instance[40]; /* this process's id, the owner of its leases */
    /* tax-rate cache, under tax_mu */
    pthread_mutex_t tax_mu;
    struct tax_entry tax[ORDER_TAX_MAX];
    /* the resumer thread */
    pthread_t resumer;
    bool resumer_running;
    bool stop; /* under mu */
    bool kicked;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* What a saga step needs to reach the database and other services outside of a request. */
struct saga_ctx {
    struct order_app *app;
    struct gr_db_conn *db;
    struct gr_arena *a;
    const char *request_id;  /* may be NULL */
    const char *traceparent; /* may be NULL */
    json_t *rendered; /* the order as the saga's last committed transition left it, or NULL */
    const char *rendered_id; /* whose order that is */
    /* POST /orders: the request, whose answer (order_reply) the transaction that ends the saga
     * run of order @reply_id makes and stores as its Idempotency-Key's answer
     * (gr_req_idem_store); NULL elsewhere. @replied: that answer is in req's response. */
    struct gr_req *req;
    struct gr_resp *resp;
    const char *reply_id;
    bool replied;
};

/* An answer of another service. */
struct upstream {
    long status;         /* HTTP status; 0 when none came */
    json_t *json;        /* parsed body or NULL; owned by the arena */
    const char *problem; /* status >= 400 with a problem type: its slug; else NULL */
};

/* What 17 says about a variant. */
struct variant_price {
    bool found;
    bool available; /* not archived, product active */
    const char *product_id;
    const char *sku;
    struct gr_money price;
};

extern const struct gr_route order_routes[ORDER_NROUTES];
extern const struct gr_sub order_subs[ORDER_NSUBS];

/* ---- handlers (orders.c) ---- */
int orders_create(struct gr_req *req, struct gr_resp *resp);
int orders_get(struct gr_req *req, struct gr_resp *resp);
int orders_list(struct gr_req *req, struct gr_resp *resp);
int orders_list_user(struct gr_req *req, struct gr_resp *resp);
int orders_history(struct gr_req *req, struct gr_resp *resp);
int orders_saga(struct gr_req *req, struct gr_resp *resp);
int orders_set_status(struct gr_req *req, struct gr_resp *resp);
int orders_cancel(struct gr_req *req, struct gr_resp *resp);

/* ---- store (order_db.c) ---- */
void order_now(char out[32]);
/** The order as its API JSON (new reference) into *@out; GR_ENOTFOUND when absent. */
GR_MUST_CHECK int order_render(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                               json_t **out);
/** True for one of the six status names. */
bool order_status_valid(const char *s);
/** True when the state machine allows @from → @to (CANCELLED included). */
bool order_transition_ok(const char *from, const char *to);
/**
 * Moves order @id from status @from to @to inside the open transaction on @db: the row
 * (version + 1, cancel reason), one history row and one event order.<to lowercase>.
 * GR_ECONFLICT when the order is no longer in @from (a racing transition won).
 */
GR_MUST_CHECK int order_transition(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                   const char *from, const char *to, const char *reason,
                                   const char *actor, const char *traceparent);
/** order_transition that also hands back (*@rendered, the caller's reference) the order as its
 *  event carries it, i.e. as the transaction left it. */
GR_MUST_CHECK int order_transition_r(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                     const char *from, const char *to, const char *reason,
                                     const char *actor, const char *traceparent, json_t **rendered);
/**
 * Sets @resp to the answer of POST /orders (and its retries): @status, Location, the order
 * @o (its reference is taken). Replaces what @resp held.
 */
void order_reply(struct gr_req *req, struct gr_resp *resp, int status, const char *id, json_t *o);
/**
 * Runs @fn in its own transaction on @db, again while the engine answers GR_EBUSY. READ
 * COMMITTED on PostgreSQL: the saga's transactions change an order only by conditional
 * writes on its row (`… WHERE status = 'PENDING'`, the lease's `lease_until < now`), which
 * PostgreSQL re-checks on the locked row, and read back only what they wrote.
 */
GR_MUST_CHECK int order_tx(struct gr_db_conn *db, int (*fn)(struct gr_db_conn *db, void *arg),
                           void *arg);

/* ---- saga (saga.c) ---- */
/**
 * Runs the saga of order @id as far as it goes now: forward to CONFIRMED, or compensation to
 * CANCELLED, or it stops at a peer that cannot be reached (the resumer goes on later). Unless
 * @claimed (the caller's transaction gave this process the lease), takes the order's lease
 * first; 0 also when another runner holds it. No transaction may be open on s->db.
 */
GR_MUST_CHECK int saga_run(struct saga_ctx *s, const char *id, bool claimed);
/** Wakes the resumer now (a cancelled CONFIRMED order to compensate). */
void saga_kick(struct order_app *app);
int saga_resumer_start(struct order_app *app);
void saga_resumer_stop(struct order_app *app);

/* ---- other services (upstream.c) ---- */
/**
 * Makes the peers of @app (its *_url fields are the defaults; @tax_env is "TAX_URL" or
 * "INVOICE_URL") on gr_client_default(). GR_ECONFIG (one line on stderr) when one cannot be.
 */
GR_MUST_CHECK int up_peers_make(struct order_app *app, const char *tax_env);
/** Frees what up_peers_make made of its own (after the last call). */
void up_peers_free(struct order_app *app);
/**
 * One call to peer @p (@path with its query) with the process's service token. @idem_key and
 * @body may be NULL. Errors: GR_ETIMEOUT, GR_EUNAVAIL (no answer); otherwise 0 with @u filled.
 */
GR_MUST_CHECK int up_call(struct saga_ctx *s, const char *what, const char *method,
                          struct gr_peer *p, const char *path, const char *idem_key, json_t *body,
                          struct upstream *u);
/** Prices @n variants at 17 into @out (zeroed first). GR_EUNAVAIL when 17 fails. */
GR_MUST_CHECK int up_price(struct saga_ctx *s, const char *const *ids, size_t n,
                           struct variant_price *out);
/**
 * The tax rate for @country / @region (NULL or ""), from the cache or 21: *@found false when
 * 21 has none for the country (no tax). GR_EUNAVAIL when 21 cannot be reached and no rates of
 * the last tax_max_age_s are cached (decision 15).
 */
GR_MUST_CHECK int up_tax_rate(struct saga_ctx *s, const char *country, const char *region,
                              struct tax_rate *out, bool *found);

#endif
