/*
 * warehouses.c - GET|POST /api/v1/warehouses (SERVICES §18): code unique (409 code_taken), a
 * display name, and a priority (lower first) that orders where reservations take stock from.
 */
#include <string.h>

#include "gr/service.h"
#include "inventory.h"

#define W       "/api/v1/warehouses"
#define WH_COLS "id, code, name, priority, created_at, updated_at"

static json_t *wh_json(const struct gr_db_rows *r, size_t i)
{
    return json_pack("{s:s,s:s,s:s,s:I,s:s,s:s}", "id", gr_db_text(r, i, 0), "code",
                     gr_db_text(r, i, 1), "name", gr_db_text(r, i, 2), "priority",
                     (json_int_t)gr_db_int(r, i, 3), "created_at", gr_db_text(r, i, 4),
                     "updated_at", gr_db_text(r, i, 5));
}

static bool code_valid(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > INV_CODE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

int wh_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor"), *k1 = NULL, *k2 = NULL;
    const char *scope = "GET " W;
    struct gr_db_rows *rows = NULL;
    bool has_more;
    int limit = 20;
    size_t n;
    json_t *data;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    if (cursor != NULL && inv_cursor_read(req, scope, cursor, &k1, &k2) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " WH_COLS " FROM warehouses WHERE (CAST($1 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($1 AS TEXT), CAST($2 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($3 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(k1), GR_DB_TEXT(k2), GR_DB_INT(limit + 1) },
                     3, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, wh_json(rows, i));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? inv_cursor_key(req->arena, gr_db_text(rows, n - 1, 4),
                                                  gr_db_text(rows, n - 1, 0))
                                 : NULL);
}

int wh_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    int rc = inv_check_read(req, resp);

    if (rc < 0)
        return rc;
    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena, "SELECT " WH_COLS " FROM warehouses WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    gr_resp_json(resp, 200, wh_json(rows, 0));
    return 0;
}

static const char *const wh_fields[] = { "code", "name", "priority", NULL };

int wh_create(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd rd = inv_rd(req, resp);
    const char *code = NULL, *name = NULL;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct gr_db_rows *rows = NULL;
    long long priority = 100;
    bool present = false;
    int rc;

    (void)gr_json_only(&rd, req->json, "", wh_fields);
    if (gr_json_str(&rd, req->json, "", "code", GR_JSON_REQUIRED, 1, INV_CODE_MAX, &code,
                    &present) == 0 &&
        !code_valid(code))
        gr_resp_field_error(req, resp, "/code", "must be 1..%d of A-Z, a-z, 0-9, '_' or '-'",
                            INV_CODE_MAX);
    (void)gr_json_str(&rd, req->json, "", "name", GR_JSON_OPTIONAL, 1, INV_NAME_MAX, &name,
                      &present);
    (void)gr_json_int(&rd, req->json, "", "priority", GR_JSON_OPTIONAL, 0, 10000, &priority,
                      &present);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM warehouses WHERE code = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(code) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        gr_resp_field_error(req, resp, "/code", "is taken");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "code_taken", "warehouse code '%s' exists",
                               code);
    }
    gr_id_new(id);
    inv_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO warehouses (id, code, name, priority, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $5)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(code),
                                          GR_DB_TEXT(name ? name : code), GR_DB_INT(priority),
                                          GR_DB_TEXT(now) },
                    5, NULL);
    if (rc == GR_ECONFLICT) { /* a concurrent create of the same code */
        gr_resp_field_error(req, resp, "/code", "is taken");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "code_taken", "warehouse code '%s' exists",
                               code);
    }
    if (rc < 0)
        return rc;
    inv_created(req, resp, gr_arena_printf(req->arena, W "/%s", id),
                json_pack("{s:s,s:s,s:s,s:I,s:s,s:s}", "id", id, "code", code, "name",
                          name ? name : code, "priority", (json_int_t)priority, "created_at", now,
                          "updated_at", now));
    return 0;
}
