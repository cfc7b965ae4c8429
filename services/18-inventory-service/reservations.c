/*
 * reservations.c - reservations (SERVICES §18): all-or-nothing multi-line holds on stock for
 * one order, and their state machine
 *
 *     active --confirm--> confirmed --commit--> committed
 *       |  \--commit-------------------------^
 *       |--release--> released   (from active or confirmed)
 *       \--expire---> expired    (active and past expires_at: the sweeper)
 *
 * Each transition is one conditional UPDATE of the reservation's status; only the transaction
 * whose UPDATE changed the row applies the stock effect and publishes the event, so a repeat,
 * a redelivered event or a second sweeper replica changes nothing. Repeats answer 200 with the
 * reservation; release after commit is a 409 reservation_committed; confirm or commit after
 * release/expiry is a 409 reservation_released / reservation_expired.
 */
#include <stdlib.h>
#include <string.h>

#include "gr/log.h"
#include "gr/service.h"
#include "inventory.h"

#define R "/api/v1/inventory/reservations"

int inv_res_json(struct gr_db_conn *db, struct gr_arena *a, const char *id, json_t **out)
{
    struct gr_db_rows *rows = NULL;
    json_t *arr, *o;
    int rc;

    /* The reservation and its items in one statement (one snapshot): a row per item. */
    rc = gr_db_query(db, a,
                     "SELECT r.id, r.order_id, r.status, r.expires_at, r.version, r.created_at,"
                     " r.updated_at, i.sku, i.warehouse_id, i.quantity FROM reservations r"
                     " LEFT JOIN reservation_items i ON i.reservation_id = r.id"
                     " WHERE r.id = $1 ORDER BY i.sku, i.warehouse_id",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return GR_ENOTFOUND;
    arr = json_array();
    for (size_t i = 0; i < gr_db_nrows(rows); i++)
        if (!gr_db_isnull(rows, i, 7))
            json_array_append_new(arr, json_pack("{s:s,s:s,s:I}", "sku", gr_db_text(rows, i, 7),
                                                 "warehouse_id", gr_db_text(rows, i, 8), "quantity",
                                                 (json_int_t)gr_db_int(rows, i, 9)));
    o = json_pack("{s:s,s:s,s:s,s:s?,s:I,s:s,s:s,s:o}", "id", gr_db_text(rows, 0, 0), "order_id",
                  gr_db_text(rows, 0, 1), "status", gr_db_text(rows, 0, 2), "expires_at",
                  gr_db_text(rows, 0, 3), "version", (json_int_t)gr_db_int(rows, 0, 4),
                  "created_at", gr_db_text(rows, 0, 5), "updated_at", gr_db_text(rows, 0, 6),
                  "items", arr);
    *out = inv_own(a, o);
    return 0;
}

int inv_res_by_order(struct gr_db_conn *db, struct gr_arena *a, const char *order_id,
                     const char **id)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(db, a, "SELECT id FROM reservations WHERE order_id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(order_id) }, 1, &rows);

    if (rc < 0)
        return rc;
    *id = gr_db_nrows(rows) == 1 ? gr_db_text(rows, 0, 0) : NULL;
    return 0;
}

/* The transition's conditional UPDATE: $1 id, $2 now. */
static const char *const transition_sql[] = {
    [INV_CONFIRM] = "UPDATE reservations SET status = 'confirmed', expires_at = NULL,"
                    " version = version + 1, updated_at = $2"
                    " WHERE id = $1 AND status = 'active' AND expires_at > $2",
    [INV_COMMIT] = "UPDATE reservations SET status = 'committed', expires_at = NULL,"
                   " version = version + 1, updated_at = $2"
                   " WHERE id = $1 AND (status = 'confirmed'"
                   " OR (status = 'active' AND expires_at > $2))",
    [INV_RELEASE] = "UPDATE reservations SET status = 'released', expires_at = NULL,"
                    " version = version + 1, updated_at = $2"
                    " WHERE id = $1 AND status IN ('active', 'confirmed')",
    [INV_EXPIRE] = "UPDATE reservations SET status = 'expired',"
                   " version = version + 1, updated_at = $2"
                   " WHERE id = $1 AND status = 'active' AND expires_at <= $2",
};

/* The stock effect of a transition that happened, and its event. */
static int apply_effect(struct gr_db_conn *db, struct gr_arena *a, const char *id, enum inv_op op,
                        const char *now, const char *tp)
{
    struct gr_db_rows *items = NULL;
    json_t *snap = NULL;
    int rc;

    if (op == INV_CONFIRM)
        return 0; /* drops the TTL only */
    rc = gr_db_query(db, a,
                     "SELECT sku, warehouse_id, quantity FROM reservation_items"
                     " WHERE reservation_id = $1 ORDER BY sku, warehouse_id",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &items);
    for (size_t i = 0; rc == 0 && i < gr_db_nrows(items); i++) {
        const char *sku = gr_db_text(items, i, 0), *wh = gr_db_text(items, i, 1);
        long long q = gr_db_int(items, i, 2), changes = 0;

        if (op == INV_COMMIT) {
            char mid[GR_ID_LEN];

            rc = gr_db_exec(db,
                            "UPDATE stock_levels SET on_hand = on_hand - $3,"
                            " reserved = reserved - $3, version = version + 1, updated_at = $4"
                            " WHERE sku = $1 AND warehouse_id = $2 AND reserved >= $3",
                            (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh), GR_DB_INT(q),
                                                  GR_DB_TEXT(now) },
                            4, &changes);
            gr_id_new(mid);
            if (rc == 0 && changes == 1)
                rc = gr_db_exec(db,
                                "INSERT INTO movements (id, sku, warehouse_id, delta, reason,"
                                " ref_id, note, created_at)"
                                " VALUES ($1, $2, $3, $4, 'commit', $5, NULL, $6)",
                                (struct gr_db_val[]){ GR_DB_TEXT(mid), GR_DB_TEXT(sku),
                                                      GR_DB_TEXT(wh), GR_DB_INT(-q), GR_DB_TEXT(id),
                                                      GR_DB_TEXT(now) },
                                6, NULL);
            if (rc == 0 && changes == 1)
                rc = inv_emit_level(db, a, sku, wh, tp);
        } else {
            rc = gr_db_exec(db,
                            "UPDATE stock_levels SET reserved = reserved - $3,"
                            " version = version + 1, updated_at = $4"
                            " WHERE sku = $1 AND warehouse_id = $2 AND reserved >= $3",
                            (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh), GR_DB_INT(q),
                                                  GR_DB_TEXT(now) },
                            4, &changes);
        }
        if (rc == 0 && changes != 1) {
            gr_log_error("reservation item without its reserved stock", "reservation_id", id, "sku",
                         sku);
            rc = GR_EINTERNAL;
        }
    }
    if (rc == 0)
        rc = inv_res_json(db, a, id, &snap);
    if (rc < 0)
        return rc;
    if (op == INV_COMMIT)
        return inv_emit(db, a, "inventory.committed", id, json_incref(snap), tp);
    json_object_set_new(snap, "reason", json_string(op == INV_EXPIRE ? "expired" : "released"));
    return inv_emit(db, a, "inventory.released", id, json_incref(snap), tp);
}

int inv_res_apply(struct gr_db_conn *db, struct gr_arena *a, struct inv_app *app, const char *id,
                  enum inv_op op, const char *traceparent, const char **slug, bool *changed)
{
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    long long changes = 0;
    const char *st;
    int rc;

    (void)app;
    *slug = NULL;
    *changed = false;
    inv_now(now);
    rc = gr_db_exec(db, transition_sql[op], (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) },
                    2, &changes);
    if (rc < 0)
        return rc;
    if (changes == 1) {
        *changed = true;
        return apply_effect(db, a, id, op, now, traceparent);
    }
    rc = gr_db_query(db, a, "SELECT status FROM reservations WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    st = gr_db_text(rows, 0, 0);
    switch (op) {
    case INV_CONFIRM:
    case INV_COMMIT:
        if (strcmp(st, "committed") == 0 || (op == INV_CONFIRM && strcmp(st, "confirmed") == 0))
            return 0;
        /* released, or expired (an active one past its expires_at is as good as expired: the
         * sweeper releases it shortly) */
        *slug = strcmp(st, "released") == 0 ? "reservation_released" : "reservation_expired";
        return GR_ECONFLICT;
    case INV_RELEASE:
        if (strcmp(st, "committed") == 0) {
            *slug = "reservation_committed";
            return GR_ECONFLICT;
        }
        return 0;
    case INV_EXPIRE:
        return 0;
    }
    return 0;
}

int inv_sweep_once(struct inv_app *app, struct gr_arena *a)
{
    struct gr_db_conn *db = NULL;
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    int rc, n = 0;

    rc = gr_db_conn(app->db, &db);
    if (rc < 0)
        return rc;
    inv_now(now);
    rc = gr_db_query(db, a,
                     "SELECT id FROM reservations WHERE status = 'active' AND expires_at <= $1"
                     " ORDER BY expires_at, id LIMIT 100",
                     (struct gr_db_val[]){ GR_DB_TEXT(now) }, 1, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *id = gr_db_text(rows, i, 0), *slug = NULL;
        bool changed = false;

        rc = gr_db_begin_read_committed(db);
        if (rc == 0)
            rc = inv_res_apply(db, a, app, id, INV_EXPIRE, NULL, &slug, &changed);
        if (rc == 0)
            rc = gr_db_commit(db);
        else
            (void)gr_db_rollback(db);
        if (rc < 0) {
            if (rc != GR_EBUSY)
                gr_log_warn("reservation expiry failed", "reservation_id", id, "error",
                            gr_strerror(rc));
            continue;
        }
        if (changed) {
            gr_log_info("reservation expired", "reservation_id", id);
            n++;
        }
    }
    return n;
}

/* ---- POST …/reservations ------------------------------------------------------------------ */

struct line {
    const char *sku;
    const char *wh; /* NULL: any warehouse, by priority */
    long long qty;
    size_t idx;                /* position in the request */
    struct gr_db_rows *levels; /* warehouse_id, available; locked */
};

static int line_cmp(const void *x, const void *y)
{
    const struct line *a = x, *b = y;

    return strcmp(a->sku, b->sku);
}

static const char *const res_fields[] = { "order_id", "items", "ttl_s", NULL };
static const char *const item_fields[] = { "sku", "quantity", "warehouse_id", NULL };

/* Reads the body into @lines (@n); field errors go to the response. */
static void read_body(struct gr_req *req, struct gr_resp *resp, const char **order_id,
                      long long *ttl, struct line *lines, size_t *n)
{
    struct gr_json_rd rd = inv_rd(req, resp);
    json_t *items = NULL;
    bool present = false;

    *n = 0;
    *ttl = INV_TTL_DEFAULT;
    if (gr_json_only(&rd, req->json, "", res_fields) < 0 && !json_is_object(req->json))
        return;
    (void)gr_json_str(&rd, req->json, "", "order_id", GR_JSON_REQUIRED, 1, INV_ORDER_MAX, order_id,
                      NULL);
    (void)gr_json_int(&rd, req->json, "", "ttl_s", GR_JSON_OPTIONAL, 1, INV_TTL_MAX, ttl, &present);
    if (gr_json_arr(&rd, req->json, "", "items", GR_JSON_REQUIRED, INV_ITEMS_MAX, &items,
                    &present) < 0)
        return;
    if (json_array_size(items) == 0) {
        gr_resp_field_error(req, resp, "/items", "must not be empty");
        return;
    }
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        const char *ptr = gr_json_ptr_idx(req->arena, "/items", i);
        struct line *l = &lines[*n];

        memset(l, 0, sizeof(*l));
        l->idx = i;
        if (gr_json_only(&rd, it, ptr, item_fields) < 0 && !json_is_object(it))
            continue;
        inv_read_sku(&rd, it, ptr, "sku", &l->sku);
        (void)gr_json_int(&rd, it, ptr, "quantity", GR_JSON_REQUIRED, 1, INV_QTY_MAX, &l->qty,
                          NULL);
        inv_read_uuid(&rd, it, ptr, "warehouse_id", GR_JSON_OPTIONAL, &l->wh);
        for (size_t j = 0; l->sku && j < *n; j++) {
            if (lines[j].sku && strcmp(lines[j].sku, l->sku) == 0) {
                gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, ptr, "sku"),
                                    "duplicate sku '%s' (also at /items/%zu)", l->sku,
                                    lines[j].idx);
                break;
            }
        }
        (*n)++;
    }
}

/* A repeat for the same order: the reservation it already has, 200. */
static int answer_existing(struct gr_req *req, struct gr_resp *resp, const char *id)
{
    json_t *o = NULL;
    int rc = inv_res_json(req->db, req->arena, id, &o);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(o));
    return 0;
}

int res_create(struct gr_req *req, struct gr_resp *resp)
{
    struct inv_app *app = req->app;
    struct line lines[INV_ITEMS_MAX];
    const char *order_id = NULL, *existing = NULL, *unknown = NULL, *tp;
    const char *lock_sql;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN], exp[GR_TIME_STR_LEN];
    long long ttl = INV_TTL_DEFAULT, changes = 0;
    bool insufficient = false;
    json_t *snap = NULL;
    size_t n = 0;
    int rc;

    read_body(req, resp, &order_id, &ttl, lines, &n);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = inv_res_by_order(req->db, req->arena, order_id, &existing);
    if (rc < 0)
        return rc;
    if (existing)
        return answer_existing(req, resp, existing);
    for (size_t i = 0; i < n; i++) {
        bool ok = false;
        const char *ptr = gr_json_ptr_idx(req->arena, "/items", lines[i].idx);

        rc = inv_sku_known(req->db, req->arena, lines[i].sku, &ok);
        if (rc < 0)
            return rc;
        if (!ok) {
            gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, ptr, "sku"),
                                "unknown sku '%s'", lines[i].sku);
            unknown = unknown ? unknown : "unknown_sku";
        }
        if (lines[i].wh) {
            rc = inv_wh_exists(req->db, req->arena, lines[i].wh, &ok);
            if (rc < 0)
                return rc;
            if (!ok) {
                gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, ptr, "warehouse_id"),
                                    "unknown warehouse");
                unknown = unknown ? unknown : "unknown_warehouse";
            }
        }
    }
    if (unknown)
        return gr_resp_problem(req, resp, GR_EVALID, unknown, "the request names unknown %s",
                               strcmp(unknown, "unknown_sku") == 0 ? "skus" : "warehouses");
    qsort(lines, n, sizeof(lines[0]), line_cmp); /* one lock order for every writer */

    gr_id_new(id);
    inv_now(now);
    gr_time_format(gr_time_now_ms() + ttl * 1000, exp);
    rc = gr_db_exec(req->db,
                    "INSERT INTO reservations (id, order_id, status, expires_at, version,"
                    " created_at, updated_at) VALUES ($1, $2, 'active', $3, 1, $4, $4)"
                    " ON CONFLICT (order_id) DO NOTHING",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(order_id), GR_DB_TEXT(exp),
                                          GR_DB_TEXT(now) },
                    4, &changes);
    if (rc < 0)
        return rc;
    if (changes == 0) { /* a concurrent request for this order won */
        rc = inv_res_by_order(req->db, req->arena, order_id, &existing);
        if (rc < 0)
            return rc;
        return existing ? answer_existing(req, resp, existing) : GR_EBUSY;
    }

    /*
     * Pass 1: lock every level a line may take from, in (sku, warehouse_id) order like every
     * other writer (so PostgreSQL never has to break a deadlock), then read them by priority
     * and check that all lines fit.
     */
    if (gr_db_engine(req->ctx->db) == GR_DB_PG) {
        for (size_t i = 0; i < n; i++) {
            struct gr_db_rows *locked = NULL;

            rc = gr_db_query(
                req->db, req->arena,
                "SELECT 1 FROM stock_levels WHERE sku = $1"
                " AND (CAST($2 AS TEXT) IS NULL OR warehouse_id = CAST($2 AS TEXT))"
                " ORDER BY warehouse_id FOR UPDATE",
                (struct gr_db_val[]){ GR_DB_TEXT(lines[i].sku), GR_DB_TEXT(lines[i].wh) }, 2,
                &locked);
            if (rc < 0)
                return rc;
        }
    }
    lock_sql = "SELECT l.warehouse_id, l.on_hand - l.reserved FROM stock_levels l"
               " JOIN warehouses w ON w.id = l.warehouse_id WHERE l.sku = $1"
               " AND (CAST($2 AS TEXT) IS NULL OR l.warehouse_id = CAST($2 AS TEXT))"
               " ORDER BY w.priority, w.code, w.id";
    for (size_t i = 0; i < n; i++) {
        struct line *l = &lines[i];
        long long avail = 0;

        rc = gr_db_query(req->db, req->arena, lock_sql,
                         (struct gr_db_val[]){ GR_DB_TEXT(l->sku), GR_DB_TEXT(l->wh) }, 2,
                         &l->levels);
        if (rc < 0)
            return rc;
        for (size_t k = 0; k < gr_db_nrows(l->levels); k++)
            avail += gr_db_int(l->levels, k, 1);
        if (avail < l->qty) {
            gr_resp_field_error(req, resp,
                                gr_arena_printf(req->arena, "/items/%zu/quantity", l->idx),
                                "only %lld of sku '%s' available", avail, l->sku);
            insufficient = true;
        }
    }
    if (insufficient)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "insufficient_stock",
                               "not enough stock for every line; nothing was reserved");

    /* Pass 2: take the stock, warehouse by warehouse in priority order. */
    tp = gr_req_header(req, "traceparent");
    for (size_t i = 0; i < n; i++) {
        struct line *l = &lines[i];
        long long left = l->qty;

        for (size_t k = 0; left > 0 && k < gr_db_nrows(l->levels); k++) {
            const char *wh = gr_db_text(l->levels, k, 0);
            long long take = gr_db_int(l->levels, k, 1);

            take = take < left ? take : left;
            if (take <= 0)
                continue;
            rc = gr_db_exec(req->db,
                            "UPDATE stock_levels SET reserved = reserved + $3,"
                            " version = version + 1, updated_at = $4"
                            " WHERE sku = $1 AND warehouse_id = $2 AND on_hand - reserved >= $3",
                            (struct gr_db_val[]){ GR_DB_TEXT(l->sku), GR_DB_TEXT(wh),
                                                  GR_DB_INT(take), GR_DB_TEXT(now) },
                            4, &changes);
            if (rc < 0)
                return rc;
            if (changes != 1)
                return gr_resp_problem(req, resp, GR_ECONFLICT, "insufficient_stock",
                                       "stock of sku '%s' changed; nothing was reserved", l->sku);
            rc = gr_db_exec(req->db,
                            "INSERT INTO reservation_items (reservation_id, sku, warehouse_id,"
                            " quantity) VALUES ($1, $2, $3, $4)",
                            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(l->sku),
                                                  GR_DB_TEXT(wh), GR_DB_INT(take) },
                            4, NULL);
            if (rc < 0)
                return rc;
            left -= take;
        }
        rc = inv_emit_thresholds(req->db, req->arena, l->sku, -l->qty, app->low_stock, tp);
        if (rc < 0)
            return rc;
    }
    rc = inv_res_json(req->db, req->arena, id, &snap);
    if (rc == 0)
        rc = inv_emit(req->db, req->arena, "inventory.reserved", id, json_incref(snap), tp);
    if (rc < 0)
        return rc;
    inv_created(req, resp, gr_arena_printf(req->arena, R "/%s", id), json_incref(snap));
    return 0;
}

/* ---- GET …/reservations/{id} and the transitions ---------------------------------------- */

int res_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    json_t *o = NULL;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = inv_res_json(req->db, req->arena, id, &o);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(o));
    return 0;
}

static int transition(struct gr_req *req, struct gr_resp *resp, enum inv_op op)
{
    const char *id = gr_req_param(req, "id"), *slug = NULL;
    bool changed = false;
    json_t *o = NULL;
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = inv_res_apply(req->db, req->arena, req->app, id, op, gr_req_header(req, "traceparent"),
                       &slug, &changed);
    if (rc == GR_ECONFLICT && slug == NULL)
        rc = GR_EINTERNAL; /* a constraint of the effect, not a state conflict: a bug */
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, resp, rc, slug, "the reservation is %s",
                               strcmp(slug, "reservation_committed") == 0  ? "committed"
                               : strcmp(slug, "reservation_released") == 0 ? "released"
                                                                           : "expired");
    if (rc == 0)
        rc = inv_res_json(req->db, req->arena, id, &o);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(o));
    return 0;
}

int res_confirm(struct gr_req *req, struct gr_resp *resp)
{
    return transition(req, resp, INV_CONFIRM);
}

int res_commit(struct gr_req *req, struct gr_resp *resp)
{
    return transition(req, resp, INV_COMMIT);
}

int res_release(struct gr_req *req, struct gr_resp *resp)
{
    return transition(req, resp, INV_RELEASE);
}
