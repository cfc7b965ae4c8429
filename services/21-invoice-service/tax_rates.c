/*
 * tax_rates.c - the tax-rate table of SERVICES §21: GET|POST /api/v1/tax-rates.
 *
 * A rate applies to a country (ISO 3166-1 alpha-2, upper case) or to one region of it (the
 * ISO 3166-2 subdivision suffix, "CA" for US-CA); rate_bp is in basis points (0..10000),
 * `inclusive` says prices already contain the tax (back-calculated, §21 rules) and
 * `applies_to_shipping` whether shipping is taxed (decision 22). (country, region) is unique,
 * as a UNIQUE constraint, so concurrent creates end with one 201 and 409 tax_rate_exists.
 * The order service reads the list and caches it for up to 24 h (decision 15).
 */
#include <stdio.h>
#include <string.h>

#include "gr/db.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/service.h"
#include "gr/time.h"
#include "invoice.h"

#define RATE_COLS                                                                                  \
    "id, country, region, name, rate_bp, inclusive, applies_to_shipping, version, created_at, "    \
    "updated_at"

/* True when @s is @min..@max characters of [A-Z] (and [0-9] when @digits). */
static bool code_ok(const char *s, size_t min, size_t max, bool digits)
{
    size_t n = strlen(s);

    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (digits && s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/* One row of RATE_COLS as the API's JSON (a new reference). */
static json_t *rate_json(const struct gr_db_rows *r, size_t i)
{
    const char *region = gr_db_text(r, i, 2);

    return json_pack(
        "{s:s,s:s,s:o,s:o,s:I,s:b,s:b,s:I,s:s,s:s}", "id", gr_db_text(r, i, 0), "country",
        gr_db_text(r, i, 1), "region", region && region[0] ? json_string(region) : json_null(),
        "name", gr_db_isnull(r, i, 3) ? json_null() : json_string(gr_db_text(r, i, 3)), "rate_bp",
        (json_int_t)gr_db_int(r, i, 4), "inclusive", gr_db_int(r, i, 5) != 0, "applies_to_shipping",
        gr_db_int(r, i, 6) != 0, "version", (json_int_t)gr_db_int(r, i, 7), "created_at",
        gr_db_text(r, i, 8), "updated_at", gr_db_text(r, i, 9));
}

int tax_rates_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *country = gr_req_query(req, "country");
    const char *region = gr_req_query(req, "region");
    const char *cursor = gr_req_query(req, "cursor");
    const char *payload = NULL, *scope, *sep, *last = NULL;
    struct gr_db_val kat = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    size_t n;
    bool has_more;
    json_t *data;
    int limit = 20, rc;

    rc = gr_req_limit(req, resp, &limit);
    if (country && !code_ok(country, 2, 2, false))
        gr_resp_field_error(req, resp, "query.country",
                            "must be an ISO 3166-1 alpha-2 code in upper case");
    if (region && !code_ok(region, 1, TAX_REGION_MAX, true))
        gr_resp_field_error(req, resp, "query.region", "must be 1..%d upper-case letters or digits",
                            TAX_REGION_MAX);
    if (rc < 0 || resp->errs.n > 0)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "GET /api/v1/tax-rates\ncountry=%s\nregion=%s",
                            country ? country : "", region ? region : "");
    if (cursor) {
        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL) <
                0 ||
            (sep = strchr(payload, '|')) == NULL)
            return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                                   "the cursor is invalid for this list");
        kat = GR_DB_TEXT(gr_arena_strndup(req->arena, payload, (size_t)(sep - payload)));
        kid = GR_DB_TEXT(sep + 1);
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " RATE_COLS " FROM tax_rates"
                     " WHERE (CAST($1 AS TEXT) IS NULL OR country = CAST($1 AS TEXT))"
                     " AND (CAST($2 AS TEXT) IS NULL OR region = CAST($2 AS TEXT))"
                     " AND (CAST($3 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($3 AS TEXT), CAST($4 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($5 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(country), GR_DB_TEXT(region), kat, kid,
                                           GR_DB_INT(limit + 1) },
                     5, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more) {
        n = (size_t)limit;
        last = gr_arena_printf(req->arena, "%s|%s", gr_db_text(rows, n - 1, 8),
                               gr_db_text(rows, n - 1, 0));
    }
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, rate_json(rows, i));
    return gr_resp_list(req, resp, data, has_more, scope, last);
}

int tax_rates_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "country", "region",    "name",
                                        "rate_bp", "inclusive", "applies_to_shipping",
                                        NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    const char *country = NULL, *region = NULL, *name = NULL;
    long long rate = 0;
    bool inclusive = false, ship = false;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct gr_db_rows *rows = NULL;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "country", GR_JSON_REQUIRED, 2, 2, &country, NULL);
    if (country && !code_ok(country, 2, 2, false))
        gr_resp_field_error(req, resp, "/country",
                            "must be an ISO 3166-1 alpha-2 code in upper case");
    (void)gr_json_str(&r, req->json, "", "region", GR_JSON_NULLABLE, 1, TAX_REGION_MAX, &region,
                      NULL);
    if (region && !code_ok(region, 1, TAX_REGION_MAX, true))
        gr_resp_field_error(req, resp, "/region", "must be 1..%d upper-case letters or digits",
                            TAX_REGION_MAX);
    (void)gr_json_str(&r, req->json, "", "name", GR_JSON_NULLABLE, 1, TAX_NAME_MAX, &name, NULL);
    (void)gr_json_int(&r, req->json, "", "rate_bp", GR_JSON_REQUIRED, 0, TAX_RATE_MAX, &rate, NULL);
    (void)gr_json_bool(&r, req->json, "", "inclusive", GR_JSON_OPTIONAL, &inclusive, NULL);
    (void)gr_json_bool(&r, req->json, "", "applies_to_shipping", GR_JSON_OPTIONAL, &ship, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO tax_rates (id, country, region, name, rate_bp, inclusive,"
                    " applies_to_shipping, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(country),
                                          GR_DB_TEXT(region ? region : ""), GR_DB_TEXT(name),
                                          GR_DB_INT(rate), GR_DB_INT(inclusive), GR_DB_INT(ship),
                                          GR_DB_TEXT(now) },
                    8, NULL);
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "tax_rate_exists",
                               "a rate for %s%s%s exists already", country, region ? "-" : "",
                               region ? region : "");
    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena, "SELECT " RATE_COLS " FROM tax_rates WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_EINTERNAL;
    gr_resp_json(resp, 201, rate_json(rows, 0));
    return 0;
}
