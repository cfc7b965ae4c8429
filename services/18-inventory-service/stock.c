/*
 * stock.c - stock levels per (sku, warehouse), their movement ledger, adjustments and transfers
 * (SERVICES §18). Every change of on_hand writes one movement in the same transaction, so the
 * sum of a level's movements is its on_hand. An adjustment is the only way a new sku becomes
 * known besides product.created; one that would take on_hand below reserved is a 409
 * below_reserved, a transfer of more than is available a 409 insufficient_stock.
 */
#include <stdio.h>
#include <string.h>

#include "gr/service.h"
#include "inventory.h"

#define I "/api/v1/inventory"

/* A level row as JSON: warehouse_id, code, on_hand, reserved, version, updated_at. */
static json_t *level_json(const struct gr_db_rows *r, size_t i)
{
    long long on_hand = gr_db_int(r, i, 2), reserved = gr_db_int(r, i, 3);

    return json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:s}", "warehouse_id", gr_db_text(r, i, 0), "code",
                     gr_db_text(r, i, 1), "on_hand", (json_int_t)on_hand, "reserved",
                     (json_int_t)reserved, "available", (json_int_t)(on_hand - reserved), "version",
                     (json_int_t)gr_db_int(r, i, 4), "updated_at", gr_db_text(r, i, 5));
}

int stock_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *sku = gr_req_param(req, "sku");
    struct gr_db_rows *rows = NULL;
    long long on_hand = 0, reserved = 0;
    bool known = false;
    json_t *whs;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (!inv_sku_valid(sku))
        return GR_ENOTFOUND;
    rc = inv_sku_known(req->db, req->arena, sku, &known);
    if (rc < 0)
        return rc;
    if (!known)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "unknown sku");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT l.warehouse_id, w.code, l.on_hand, l.reserved, l.version,"
                     " l.updated_at FROM stock_levels l JOIN warehouses w ON w.id ="
                     " l.warehouse_id WHERE l.sku = $1 ORDER BY w.priority, w.code, w.id",
                     (struct gr_db_val[]){ GR_DB_TEXT(sku) }, 1, &rows);
    if (rc < 0)
        return rc;
    whs = json_array();
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        on_hand += gr_db_int(rows, i, 2);
        reserved += gr_db_int(rows, i, 3);
        json_array_append_new(whs, level_json(rows, i));
    }
    gr_resp_json(resp, 200,
                 json_pack("{s:s,s:I,s:I,s:I,s:o}", "sku", sku, "on_hand", (json_int_t)on_hand,
                           "reserved", (json_int_t)reserved, "available",
                           (json_int_t)(on_hand - reserved), "warehouses", whs));
    return 0;
}

/*
 * GET /inventory?skus=a,b&below=N: known skus with their totals, by sku ascending (a catalogue
 * order: skus have no creation order worth paging by); below=N keeps those with available < N.
 */
int stock_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *skus = gr_req_query(req, "skus"), *cursor = gr_req_query(req, "cursor");
    const char *after = NULL, *dummy = NULL, *scope;
    char sql[4096];
    struct gr_db_val p[INV_SKUS_MAX + 4];
    struct gr_db_rows *rows = NULL;
    long long below = 0;
    bool has_below = false, has_more;
    int limit = 20, len;
    size_t np = 0, n;
    json_t *data;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (gr_req_query_int(req, resp, "below", 0, 1000000000LL, &below, &has_below) < 0)
        has_below = false;
    len = snprintf(sql, sizeof(sql),
                   "SELECT s.sku, COALESCE(SUM(l.on_hand), 0), COALESCE(SUM(l.reserved), 0)"
                   " FROM skus s LEFT JOIN stock_levels l ON l.sku = s.sku"
                   " WHERE (CAST($1 AS TEXT) IS NULL OR s.sku > CAST($1 AS TEXT))");
    np = 1;
    if (skus != NULL) {
        const char *s = skus;
        size_t k = 0;

        len += snprintf(sql + len, sizeof(sql) - (size_t)len, " AND s.sku IN (");
        while (*s && resp->errs.n == 0) {
            const char *comma = strchr(s, ',');
            size_t m = comma ? (size_t)(comma - s) : strlen(s);
            char *one = gr_arena_strndup(req->arena, s, m);

            if (!inv_sku_valid(one) || k >= INV_SKUS_MAX) {
                gr_resp_field_error(req, resp, "query.skus", "must be 1..%d comma-separated skus",
                                    INV_SKUS_MAX);
                break;
            }
            p[np++] = GR_DB_TEXT(one);
            len += snprintf(sql + len, sizeof(sql) - (size_t)len, "%s$%zu", k ? ", " : "", np);
            k++;
            s = comma ? comma + 1 : s + m;
        }
        if (k == 0 && resp->errs.n == 0)
            gr_resp_field_error(req, resp, "query.skus", "must name at least one sku");
        len += snprintf(sql + len, sizeof(sql) - (size_t)len, ")");
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    len += snprintf(sql + len, sizeof(sql) - (size_t)len, " GROUP BY s.sku");
    if (has_below) {
        p[np++] = GR_DB_INT(below);
        len +=
            snprintf(sql + len, sizeof(sql) - (size_t)len,
                     " HAVING COALESCE(SUM(l.on_hand - l.reserved), 0) < CAST($%zu AS BIGINT)", np);
    }
    p[np++] = GR_DB_INT(limit + 1);
    len += snprintf(sql + len, sizeof(sql) - (size_t)len,
                    " ORDER BY s.sku LIMIT CAST($%zu AS INTEGER)", np);
    if (len <= 0 || (size_t)len >= sizeof(sql))
        return GR_EINTERNAL;
    scope = gr_arena_printf(req->arena, "GET " I "\nskus=%s\nbelow=%s", skus ? skus : "",
                            has_below ? gr_arena_printf(req->arena, "%lld", below) : "");
    if (cursor != NULL && inv_cursor_read(req, scope, cursor, &after, &dummy) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    p[0] = GR_DB_TEXT(after);
    rc = gr_db_query(req->db, req->arena, sql, p, np, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++) {
        long long on_hand = gr_db_int(rows, i, 1), reserved = gr_db_int(rows, i, 2);

        json_array_append_new(data, json_pack("{s:s,s:I,s:I,s:I}", "sku", gr_db_text(rows, i, 0),
                                              "on_hand", (json_int_t)on_hand, "reserved",
                                              (json_int_t)reserved, "available",
                                              (json_int_t)(on_hand - reserved)));
    }
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? inv_cursor_key(req->arena, gr_db_text(rows, n - 1, 0), "")
                                 : NULL);
}

static json_t *movement_json(const struct gr_db_rows *r, size_t i)
{
    return json_pack("{s:s,s:s,s:s,s:I,s:s,s:s?,s:s?,s:s}", "id", gr_db_text(r, i, 0), "sku",
                     gr_db_text(r, i, 1), "warehouse_id", gr_db_text(r, i, 2), "delta",
                     (json_int_t)gr_db_int(r, i, 3), "reason", gr_db_text(r, i, 4), "ref_id",
                     gr_db_text(r, i, 5), "note", gr_db_text(r, i, 6), "created_at",
                     gr_db_text(r, i, 7));
}

int stock_movements(struct gr_req *req, struct gr_resp *resp)
{
    const char *sku = gr_req_param(req, "sku"), *cursor = gr_req_query(req, "cursor");
    const char *wh = gr_req_query(req, "warehouse_id");
    const char *k1 = NULL, *k2 = NULL, *scope;
    struct gr_db_rows *rows = NULL;
    bool known = false, has_more;
    int limit = 20;
    size_t n;
    json_t *data;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (wh != NULL && !gr_id_valid(wh, strlen(wh)))
        gr_resp_field_error(req, resp, "query.warehouse_id", "must be a UUID");
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (!inv_sku_valid(sku))
        return GR_ENOTFOUND;
    rc = inv_sku_known(req->db, req->arena, sku, &known);
    if (rc < 0)
        return rc;
    if (!known)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "unknown sku");
    scope = gr_arena_printf(req->arena, "GET " I "/%s/movements\n%s", sku, wh ? wh : "");
    if (cursor != NULL && inv_cursor_read(req, scope, cursor, &k1, &k2) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, sku, warehouse_id, delta, reason, ref_id, note, created_at"
                     " FROM movements WHERE sku = $1"
                     " AND (CAST($2 AS TEXT) IS NULL OR warehouse_id = CAST($2 AS TEXT))"
                     " AND (CAST($3 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($3 AS TEXT), CAST($4 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($5 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh), GR_DB_TEXT(k1),
                                           GR_DB_TEXT(k2), GR_DB_INT(limit + 1) },
                     5, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, movement_json(rows, i));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? inv_cursor_key(req->arena, gr_db_text(rows, n - 1, 7),
                                                  gr_db_text(rows, n - 1, 0))
                                 : NULL);
}

/* Inserts one movement with a new id into @mid. */
static int movement_add(struct gr_req *req, char mid[GR_ID_LEN], const char *sku, const char *wh,
                        long long delta, const char *reason, const char *ref, const char *note,
                        const char *now)
{
    gr_id_new(mid);
    return gr_db_exec(req->db,
                      "INSERT INTO movements (id, sku, warehouse_id, delta, reason, ref_id, note,"
                      " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                      (struct gr_db_val[]){ GR_DB_TEXT(mid), GR_DB_TEXT(sku), GR_DB_TEXT(wh),
                                            GR_DB_INT(delta), GR_DB_TEXT(reason), GR_DB_TEXT(ref),
                                            GR_DB_TEXT(note), GR_DB_TEXT(now) },
                      8, NULL);
}

/* Makes sure the level (sku, wh) exists (0/0), inside the transaction. */
static int level_ensure(struct gr_req *req, const char *sku, const char *wh, const char *now)
{
    return gr_db_exec(req->db,
                      "INSERT INTO stock_levels (sku, warehouse_id, on_hand, reserved, version,"
                      " updated_at) VALUES ($1, $2, 0, 0, 1, $3)"
                      " ON CONFLICT (sku, warehouse_id) DO NOTHING",
                      (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh), GR_DB_TEXT(now) }, 3,
                      NULL);
}

static int check_wh(struct gr_req *req, struct gr_resp *resp, const char *wh, const char *field,
                    bool *ok)
{
    int rc = inv_wh_exists(req->db, req->arena, wh, ok);

    if (rc == 0 && !*ok)
        gr_resp_field_error(req, resp, field, "unknown warehouse");
    return rc;
}

static const char *const adj_fields[] = { "sku", "warehouse_id", "delta", "note", NULL };

int stock_adjust(struct gr_req *req, struct gr_resp *resp)
{
    struct inv_app *app = req->app;
    struct gr_json_rd rd = inv_rd(req, resp);
    const char *sku = NULL, *wh = NULL, *note = NULL, *tp = gr_req_header(req, "traceparent");
    char now[GR_TIME_STR_LEN], mid[GR_ID_LEN];
    struct gr_db_rows *rows = NULL;
    long long delta = 0, changes = 0;
    bool ok = false;
    int rc;

    (void)gr_json_only(&rd, req->json, "", adj_fields);
    inv_read_sku(&rd, req->json, "", "sku", &sku);
    inv_read_uuid(&rd, req->json, "", "warehouse_id", GR_JSON_REQUIRED, &wh);
    if (gr_json_int(&rd, req->json, "", "delta", GR_JSON_REQUIRED, -INV_QTY_MAX, INV_QTY_MAX,
                    &delta, NULL) == 0 &&
        delta == 0 && json_object_get(req->json, "delta") != NULL)
        gr_resp_field_error(req, resp, "/delta", "must not be 0");
    (void)gr_json_str(&rd, req->json, "", "note", GR_JSON_NULLABLE, 1, INV_NOTE_MAX, &note, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = check_wh(req, resp, wh, "/warehouse_id", &ok);
    if (rc < 0)
        return rc;
    if (!ok)
        return gr_resp_problem(req, resp, GR_EVALID, "unknown_warehouse", "unknown warehouse");
    rc = inv_sku_known(req->db, req->arena, sku, &ok);
    if (rc < 0)
        return rc;
    inv_now(now);
    if (!ok) {
        if (delta < 0) {
            gr_resp_field_error(req, resp, "/sku", "unknown sku '%s'", sku);
            return gr_resp_problem(req, resp, GR_EVALID, "unknown_sku",
                                   "a sku is stocked first by a positive adjustment");
        }
        rc = gr_db_exec(req->db,
                        "INSERT INTO skus (sku, product_id, created_at) VALUES ($1, NULL, $2)"
                        " ON CONFLICT (sku) DO NOTHING",
                        (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(now) }, 2, NULL);
        if (rc < 0)
            return rc;
    }
    rc = level_ensure(req, sku, wh, now);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE stock_levels SET on_hand = on_hand + $3, version = version + 1,"
                        " updated_at = $4 WHERE sku = $1 AND warehouse_id = $2"
                        " AND on_hand + $3 >= reserved",
                        (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh), GR_DB_INT(delta),
                                              GR_DB_TEXT(now) },
                        4, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1) {
        gr_resp_field_error(req, resp, "/delta", "would take on_hand below what is reserved");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "below_reserved",
                               "the adjustment would leave on_hand below reserved");
    }
    rc = movement_add(req, mid, sku, wh, delta, "adjustment", NULL, note, now);
    if (rc == 0)
        rc = inv_emit_level(req->db, req->arena, sku, wh, tp);
    if (rc == 0)
        rc = inv_emit_thresholds(req->db, req->arena, sku, delta, app->low_stock, tp);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT on_hand, reserved, version FROM stock_levels"
                         " WHERE sku = $1 AND warehouse_id = $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh) }, 2, &rows);
    if (rc < 0)
        return rc;
    inv_created(req, resp, gr_arena_printf(req->arena, I "/%s/movements", sku),
                json_pack("{s:s,s:s,s:s,s:I,s:s,s:s?,s:s,s:I,s:I,s:I,s:I}", "id", mid, "sku", sku,
                          "warehouse_id", wh, "delta", (json_int_t)delta, "reason", "adjustment",
                          "note", note, "created_at", now, "on_hand",
                          (json_int_t)gr_db_int(rows, 0, 0), "reserved",
                          (json_int_t)gr_db_int(rows, 0, 1), "available",
                          (json_int_t)(gr_db_int(rows, 0, 0) - gr_db_int(rows, 0, 1)), "version",
                          (json_int_t)gr_db_int(rows, 0, 2)));
    return 0;
}

static const char *const tr_fields[] = {
    "sku", "from_warehouse_id", "to_warehouse_id", "quantity", "note", NULL
};

int stock_transfer(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd rd = inv_rd(req, resp);
    const char *sku = NULL, *from = NULL, *to = NULL, *note = NULL;
    const char *tp = gr_req_header(req, "traceparent"), *slug = NULL;
    char now[GR_TIME_STR_LEN], tid[GR_ID_LEN], m1[GR_ID_LEN], m2[GR_ID_LEN];
    long long qty = 0, changes = 0;
    bool ok = false;
    int rc;

    (void)gr_json_only(&rd, req->json, "", tr_fields);
    inv_read_sku(&rd, req->json, "", "sku", &sku);
    inv_read_uuid(&rd, req->json, "", "from_warehouse_id", GR_JSON_REQUIRED, &from);
    inv_read_uuid(&rd, req->json, "", "to_warehouse_id", GR_JSON_REQUIRED, &to);
    (void)gr_json_int(&rd, req->json, "", "quantity", GR_JSON_REQUIRED, 1, INV_QTY_MAX, &qty, NULL);
    (void)gr_json_str(&rd, req->json, "", "note", GR_JSON_NULLABLE, 1, INV_NOTE_MAX, &note, NULL);
    if (from && to && strcmp(from, to) == 0)
        gr_resp_field_error(req, resp, "/to_warehouse_id", "must differ from from_warehouse_id");
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = inv_sku_known(req->db, req->arena, sku, &ok);
    if (rc < 0)
        return rc;
    if (!ok) {
        gr_resp_field_error(req, resp, "/sku", "unknown sku '%s'", sku);
        slug = "unknown_sku";
    }
    rc = check_wh(req, resp, from, "/from_warehouse_id", &ok);
    if (rc == 0 && !ok && !slug)
        slug = "unknown_warehouse";
    if (rc == 0)
        rc = check_wh(req, resp, to, "/to_warehouse_id", &ok);
    if (rc == 0 && !ok && !slug)
        slug = "unknown_warehouse";
    if (rc < 0)
        return rc;
    if (slug)
        return gr_resp_problem(req, resp, GR_EVALID, slug, "the transfer names unknown %s",
                               strcmp(slug, "unknown_sku") == 0 ? "skus" : "warehouses");
    inv_now(now);
    gr_id_new(tid);
    rc = level_ensure(req, sku, to, now);
    if (rc == 0 && gr_db_engine(req->ctx->db) == GR_DB_PG) {
        struct gr_db_rows *locked = NULL;

        /* both levels, in (sku, warehouse_id) order like every other writer */
        rc = gr_db_query(req->db, req->arena,
                         "SELECT 1 FROM stock_levels WHERE sku = $1"
                         " AND warehouse_id IN ($2, $3) ORDER BY warehouse_id FOR UPDATE",
                         (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(from), GR_DB_TEXT(to) },
                         3, &locked);
    }
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE stock_levels SET on_hand = on_hand - $3, version = version + 1,"
                        " updated_at = $4 WHERE sku = $1 AND warehouse_id = $2"
                        " AND on_hand - reserved >= $3",
                        (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(from), GR_DB_INT(qty),
                                              GR_DB_TEXT(now) },
                        4, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1) {
        gr_resp_field_error(req, resp, "/quantity", "more than is available at the source");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "insufficient_stock",
                               "not enough available stock to transfer");
    }
    rc = gr_db_exec(
        req->db,
        "UPDATE stock_levels SET on_hand = on_hand + $3, version = version + 1,"
        " updated_at = $4 WHERE sku = $1 AND warehouse_id = $2",
        (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(to), GR_DB_INT(qty), GR_DB_TEXT(now) }, 4,
        NULL);
    if (rc == 0)
        rc = movement_add(req, m1, sku, from, -qty, "transfer_out", tid, note, now);
    if (rc == 0)
        rc = movement_add(req, m2, sku, to, qty, "transfer_in", tid, note, now);
    if (rc == 0)
        rc = inv_emit_level(req->db, req->arena, sku, from, tp);
    if (rc == 0)
        rc = inv_emit_level(req->db, req->arena, sku, to, tp);
    if (rc < 0)
        return rc;
    inv_created(req, resp, gr_arena_printf(req->arena, I "/%s/movements", sku),
                json_pack("{s:s,s:s,s:s,s:s,s:I,s:s?,s:s}", "id", tid, "sku", sku,
                          "from_warehouse_id", from, "to_warehouse_id", to, "quantity",
                          (json_int_t)qty, "note", note, "created_at", now));
    return 0;
}
