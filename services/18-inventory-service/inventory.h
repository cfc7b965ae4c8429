/*
 * inventory.h - the inventory service's own declarations: the route table and handlers
 * (stock.c, reservations.c, warehouses.c), the helpers they share (inv.c), the reservation
 * state machine that HTTP handlers, consumed events and the expiry sweeper all run
 * (reservations.c), and the sweeper thread (service.c).
 *
 * Concurrency (SERVICES §18 "available never goes negative"): every stock change is a
 * conditional UPDATE (`... WHERE on_hand - reserved >= $n`), backed by the CHECK constraints of
 * stock_levels. Write transactions of the HTTP handlers and the sweeper run READ COMMITTED on
 * PostgreSQL (routes flagged GR_R_READ_COMMITTED, gr_db_begin_read_committed) and lock the stock
 * levels they change (SELECT ... FOR UPDATE, skus in order), so 50 clients racing for one level
 * wait for each other instead of failing serialization; on SQLite writers are serialised anyway.
 */
#ifndef INVENTORY_H
#define INVENTORY_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/router.h"
#include "gr/time.h"

#define INV_SOURCE      "/gravity/inventory-service"
#define INV_SKU_MAX     64
#define INV_ORDER_MAX   64
#define INV_ITEMS_MAX   100     /* lines of one reservation */
#define INV_QTY_MAX     1000000 /* units of one line, transfer or adjustment */
#define INV_TTL_DEFAULT 900
#define INV_TTL_MAX     604800 /* 7 days */
#define INV_NOTE_MAX    500
#define INV_CODE_MAX    32
#define INV_NAME_MAX    200
#define INV_SKUS_MAX    100 /* skus of GET /inventory?skus= */

/* Service state (service.c), reached through req->app and the consumers' app. */
struct inv_app {
    struct gr_db *db;
    long long low_stock; /* INVENTORY_LOW_STOCK: low_stock fires when available falls to it */
    long long sweep_ms;  /* INVENTORY_SWEEP_MS: how often expired reservations are released */
    pthread_mutex_t mu;
    pthread_cond_t tick;
    pthread_t sweeper;
    bool running, stop;
};

/* ---- routes and handlers ------------------------------------------------------------------ */

#define INV_NROUTES 13
extern const struct gr_route inv_routes[INV_NROUTES];

int stock_get(struct gr_req *req, struct gr_resp *resp);
int stock_list(struct gr_req *req, struct gr_resp *resp);
int stock_movements(struct gr_req *req, struct gr_resp *resp);
int stock_adjust(struct gr_req *req, struct gr_resp *resp);
int stock_transfer(struct gr_req *req, struct gr_resp *resp);

int res_create(struct gr_req *req, struct gr_resp *resp);
int res_get(struct gr_req *req, struct gr_resp *resp);
int res_confirm(struct gr_req *req, struct gr_resp *resp);
int res_commit(struct gr_req *req, struct gr_resp *resp);
int res_release(struct gr_req *req, struct gr_resp *resp);

int wh_list(struct gr_req *req, struct gr_resp *resp);
int wh_create(struct gr_req *req, struct gr_resp *resp);
int wh_get(struct gr_req *req, struct gr_resp *resp);

/* ---- helpers (inv.c) ---------------------------------------------------------------------- */

/** Makes @v owned by @a (json_decref deferred) and returns it; NULL aborts. */
json_t *inv_own(struct gr_arena *a, json_t *v);
/** The library time as RFC 3339 with milliseconds. */
void inv_now(char out[GR_TIME_STR_LEN]);
/** 403 unless the caller holds inventory:read or inventory:write (writers may read). */
GR_MUST_CHECK int inv_check_read(struct gr_req *req, struct gr_resp *resp);
/** A reader context accumulating field errors into the response. */
struct gr_json_rd inv_rd(struct gr_req *req, struct gr_resp *resp);
/** True for a sku: 1..INV_SKU_MAX of [A-Za-z0-9._-]. */
bool inv_sku_valid(const char *s);
/** Reads the sku member @key (required) of @obj at @ptr, with the format check. */
void inv_read_sku(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                  const char **out);
/** Reads an optional/required uuid member: "must be a UUID" otherwise. */
void inv_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                   unsigned flags, const char **out);
/** *known = the sku is known (announced by product.created or stocked before). */
GR_MUST_CHECK int inv_sku_known(struct gr_db_conn *db, struct gr_arena *a, const char *sku,
                                bool *known);
/** *exists = the warehouse @id exists. */
GR_MUST_CHECK int inv_wh_exists(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                bool *exists);
/** Publishes @type about @subject with @data (owned here: decref'd) through the outbox. */
GR_MUST_CHECK int inv_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type,
                           const char *subject, json_t *data, const char *traceparent);
/** inventory.stock_changed with the level (sku, warehouse) as it is now. */
GR_MUST_CHECK int inv_emit_level(struct gr_db_conn *db, struct gr_arena *a, const char *sku,
                                 const char *wh, const char *traceparent);
/**
 * After the sku's total available changed by @d_avail (already applied): low_stock when it
 * fell to @low or below from above it, out_of_stock when it fell to 0 from above.
 */
GR_MUST_CHECK int inv_emit_thresholds(struct gr_db_conn *db, struct gr_arena *a, const char *sku,
                                      long long d_avail, long long low, const char *traceparent);
/** "Location" + 201 with @body. */
void inv_created(struct gr_req *req, struct gr_resp *resp, const char *path, json_t *body);
/** Cursor key text "<a>\n<b>" and its reverse (GR_EINVAL for a malformed one). */
const char *inv_cursor_key(struct gr_arena *a, const char *k1, const char *k2);
GR_MUST_CHECK int inv_cursor_read(struct gr_req *req, const char *scope, const char *cursor,
                                  const char **k1, const char **k2);

/* ---- the reservation state machine (reservations.c) ------------------------------------- */

enum inv_op { INV_CONFIRM, INV_COMMIT, INV_RELEASE, INV_EXPIRE };

/**
 * Runs @op on reservation @id in the open transaction on @db (HTTP handler, event consumer or
 * sweeper): every change is a conditional UPDATE of the reservation's status, so each effect
 * (stock, movements, events) happens once whatever races it. Repeats are no-ops (0).
 * Returns 0, GR_ENOTFOUND, or GR_ECONFLICT with *@slug set ("reservation_released",
 * "reservation_expired", "reservation_committed"); *@changed tells whether @op did anything.
 */
GR_MUST_CHECK int inv_res_apply(struct gr_db_conn *db, struct gr_arena *a, struct inv_app *app,
                                const char *id, enum inv_op op, const char *traceparent,
                                const char **slug, bool *changed);
/** The reservation @id as JSON (arena-owned) into *@out; GR_ENOTFOUND when absent. */
GR_MUST_CHECK int inv_res_json(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                               json_t **out);
/** The id of the reservation of @order_id, or NULL (arena). */
GR_MUST_CHECK int inv_res_by_order(struct gr_db_conn *db, struct gr_arena *a, const char *order_id,
                                   const char **id);
/**
 * Expires every active reservation whose expires_at has passed, one transaction each; returns
 * how many this call expired (another replica may take some), or a GR_E* code.
 */
GR_MUST_CHECK int inv_sweep_once(struct inv_app *app, struct gr_arena *a);

/* ---- consumed events (events.c) ----------------------------------------------------------- */

#define INV_NSUBS 4
extern const struct gr_sub inv_subs[INV_NSUBS];

#endif
