/*
 * methods.c - /api/v1/payment-methods: a caller's saved cards. A card arrives as a provider
 * token (tok_…, made by the provider's client-side library; card numbers never reach us: a
 * body naming card_number is refused) and is stored as what the provider resolves it to:
 * the reference later charges use, brand, last four digits and the card's fingerprint, which
 * the fraud rule counts failures by.
 */
#include <string.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/service.h"
#include "pay.h"

#define METHOD_COLS "id, user_id, provider, brand, last4, fingerprint, created_at"

static json_t *method_json(struct gr_db_rows *r, size_t i)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "id", gr_db_text(r, i, 0),
                     "object", "payment_method", "user_id", gr_db_text(r, i, 1), "provider",
                     gr_db_text(r, i, 2), "brand", gr_db_text(r, i, 3), "last4",
                     gr_db_text(r, i, 4), "fingerprint", gr_db_text(r, i, 5), "created_at",
                     gr_db_text(r, i, 6));
}

int methods_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *user = req->principal->sub, *cursor = gr_req_query(req, "cursor"), *scope;
    const char *payload, *ck = NULL, *cid = NULL;
    struct gr_db_rows *r;
    json_t *data;
    int limit = 20, rc;
    size_t n;
    bool more;

    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "GET /api/v1/payment-methods\n%s", user);
    if (cursor) {
        const char *sp;

        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL) <
                0 ||
            !(sp = strchr(payload, ' ')))
            return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                                   "the cursor is invalid for this list");
        ck = gr_arena_strndup(req->arena, payload, (size_t)(sp - payload));
        cid = sp + 1;
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " METHOD_COLS " FROM payment_methods WHERE user_id = $1"
                     " AND (CAST($2 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($2 AS TEXT), CAST($3 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($4 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(user), GR_DB_TEXT(ck), GR_DB_TEXT(cid),
                                           GR_DB_INT(limit + 1) },
                     4, &r);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(r);
    more = n > (size_t)limit;
    if (more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, method_json(r, i));
    return gr_resp_list(req, resp, data, more, scope,
                        more ? gr_arena_printf(req->arena, "%s %s", gr_db_text(r, n - 1, 6),
                                               gr_db_text(r, n - 1, 0))
                             : "");
}

int methods_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const fields[] = { "token", NULL };
    struct gr_json_rd rd = { req->arena, &resp->errs };
    struct pay_app *app = req->app;
    const char *token = NULL;
    struct pay_card card;
    struct gr_db_rows *r;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    int rc;

    if (pay_has_card_number(req->json)) {
        gr_resp_field_error(req, resp, "/card_number",
                            "card numbers are never accepted: use a token");
        return gr_resp_problem(req, resp, GR_EVALID, "card_data_forbidden",
                               "raw card data must not be sent; tokenize the card at the"
                               " provider");
    }
    (void)gr_json_only(&rd, req->json, "", fields);
    (void)gr_json_str(&rd, req->json, "", "token", GR_JSON_REQUIRED, 5, 100, &token, NULL);
    if (token && strncmp(token, "tok_", 4) != 0)
        gr_resp_field_error(req, resp, "/token", "must be a provider card token (tok_…)");
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = app->provider.tokenize(&app->provider, token, &card);
    if (rc == GR_EUNAVAIL)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "provider_unavailable",
                               "the payment provider cannot be reached");
    if (rc < 0) {
        gr_resp_field_error(req, resp, "/token", "the provider does not know this token");
        return GR_EVALID;
    }
    gr_id_new(id);
    pay_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO payment_methods (id, user_id, provider, provider_token, brand,"
                    " last4, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(req->principal->sub),
                                          GR_DB_TEXT(app->provider.name), GR_DB_TEXT(card.ref),
                                          GR_DB_TEXT(card.brand), GR_DB_TEXT(card.last4),
                                          GR_DB_TEXT(card.fingerprint), GR_DB_TEXT(now) },
                    8, NULL);
    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " METHOD_COLS " FROM payment_methods WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 201, method_json(r, 0));
    return 0;
}

int methods_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    long long n = 0;
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_exec(req->db,
                    "DELETE FROM payment_methods WHERE id = $1 AND (user_id = $2 OR $3 = 1)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(req->principal->sub),
                                          GR_DB_INT(gr_req_can(req, "payments:write") ? 1 : 0) },
                    3, &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_ENOTFOUND;
    resp->status = 204;
    return 0;
}
