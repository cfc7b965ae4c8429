/*
 * inv.c - helpers shared by the inventory handlers, consumers and sweeper: permissions,
 * validation, known skus and warehouses, events through the outbox, cursors.
 */
#include <string.h>

#include "gr/cursor.h"
#include "gr/log.h"
#include "gr/service.h"
#include "inventory.h"

static void decref(void *v)
{
    json_decref(v);
}

json_t *inv_own(struct gr_arena *a, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(a, decref, v);
    return v;
}

void inv_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

int inv_check_read(struct gr_req *req, struct gr_resp *resp)
{
    if (gr_req_can(req, "inventory:read") || gr_req_can(req, "inventory:write"))
        return 0;
    return gr_resp_problem(req, resp, GR_EFORBIDDEN, NULL, "needs inventory:read");
}

struct gr_json_rd inv_rd(struct gr_req *req, struct gr_resp *resp)
{
    return (struct gr_json_rd){ .a = req->arena, .errs = &resp->errs };
}

bool inv_sku_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > INV_SKU_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

void inv_read_sku(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                  const char **out)
{
    const char *s = NULL;
    bool present = false;

    *out = NULL;
    if (gr_json_str(r, obj, ptr, key, GR_JSON_REQUIRED, 1, INV_SKU_MAX, &s, &present) < 0)
        return;
    if (!inv_sku_valid(s)) {
        gr_errs_add(r->errs, r->a, gr_json_ptr_key(r->a, ptr, key),
                    "must be 1..%d characters of A-Z, a-z, 0-9, '.', '_' or '-'", INV_SKU_MAX);
        return;
    }
    *out = s;
}

void inv_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                   unsigned flags, const char **out)
{
    const char *s = NULL;
    bool present = false;

    *out = NULL;
    if (gr_json_str(r, obj, ptr, key, flags, 1, 64, &s, &present) < 0 || !present || !s)
        return;
    if (!gr_id_valid(s, strlen(s))) {
        gr_errs_add(r->errs, r->a, gr_json_ptr_key(r->a, ptr, key), "must be a UUID");
        return;
    }
    *out = s;
}

int inv_sku_known(struct gr_db_conn *db, struct gr_arena *a, const char *sku, bool *known)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(db, a, "SELECT 1 FROM skus WHERE sku = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(sku) }, 1, &rows);

    if (rc < 0)
        return rc;
    *known = gr_db_nrows(rows) == 1;
    return 0;
}

int inv_wh_exists(struct gr_db_conn *db, struct gr_arena *a, const char *id, bool *exists)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(db, a, "SELECT 1 FROM warehouses WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);

    if (rc < 0)
        return rc;
    *exists = gr_db_nrows(rows) == 1;
    return 0;
}

int inv_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type, const char *subject,
             json_t *data, const char *traceparent)
{
    struct gr_str text;
    int rc;

    if (data == NULL)
        GR_BUG("jansson allocation failed");
    rc = gr_json_dump(a, data, &text);
    json_decref(data);
    if (rc < 0)
        return rc;
    return gr_bus_emit(db, INV_SOURCE, type, subject, text.ptr, traceparent, NULL);
}

int inv_emit_level(struct gr_db_conn *db, struct gr_arena *a, const char *sku, const char *wh,
                   const char *traceparent)
{
    struct gr_db_rows *rows = NULL;
    long long on_hand, reserved;
    int rc;

    rc = gr_db_query(db, a,
                     "SELECT on_hand, reserved, version, updated_at FROM stock_levels"
                     " WHERE sku = $1 AND warehouse_id = $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(wh) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_EINTERNAL;
    on_hand = gr_db_int(rows, 0, 0);
    reserved = gr_db_int(rows, 0, 1);
    return inv_emit(db, a, "inventory.stock_changed", sku,
                    json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:s}", "sku", sku, "warehouse_id", wh,
                              "on_hand", (json_int_t)on_hand, "reserved", (json_int_t)reserved,
                              "available", (json_int_t)(on_hand - reserved), "version",
                              (json_int_t)gr_db_int(rows, 0, 2), "updated_at",
                              gr_db_text(rows, 0, 3)),
                    traceparent);
}

int inv_emit_thresholds(struct gr_db_conn *db, struct gr_arena *a, const char *sku,
                        long long d_avail, long long low, const char *traceparent)
{
    struct gr_db_rows *rows = NULL;
    long long after, before;
    const char *type = NULL;
    int rc;

    if (d_avail >= 0)
        return 0; /* only a fall crosses a threshold */
    rc = gr_db_query(db, a,
                     "SELECT COALESCE(SUM(on_hand - reserved), 0) FROM stock_levels"
                     " WHERE sku = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(sku) }, 1, &rows);
    if (rc < 0)
        return rc;
    after = gr_db_int(rows, 0, 0);
    before = after - d_avail;
    if (after <= 0 && before > 0)
        type = "inventory.out_of_stock";
    else if (after <= low && before > low)
        type = "inventory.low_stock";
    if (type == NULL)
        return 0;
    return inv_emit(db, a, type, sku,
                    json_pack("{s:s,s:I,s:I}", "sku", sku, "available", (json_int_t)after,
                              "threshold", (json_int_t)low),
                    traceparent);
}

void inv_created(struct gr_req *req, struct gr_resp *resp, const char *path, json_t *body)
{
    gr_resp_header(req, resp, "Location", path);
    gr_resp_json(resp, 201, body);
}

const char *inv_cursor_key(struct gr_arena *a, const char *k1, const char *k2)
{
    return gr_arena_printf(a, "%s\n%s", k1 ? k1 : "", k2 ? k2 : "");
}

int inv_cursor_read(struct gr_req *req, const char *scope, const char *cursor, const char **k1,
                    const char **k2)
{
    const char *payload = NULL, *nl;
    size_t len = 0;

    if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, &len) < 0)
        return GR_EINVAL;
    nl = memchr(payload, '\n', len);
    if (nl == NULL)
        return GR_EINVAL;
    *k1 = gr_arena_strndup(req->arena, payload, (size_t)(nl - payload));
    *k2 = gr_arena_strndup(req->arena, nl + 1, len - (size_t)(nl - payload) - 1);
    return 0;
}
