/*
 * orders.c - the HTTP handlers of order-service (SERVICES §16).
 *
 * POST /api/v1/orders [IK!] validates the body (a 4xx leaves no trace: no row, no event, no
 * call to 22, 18 or 15), prices the lines at 17 (client prices do not exist in the body), reads
 * the tax rate of the shipping country from 21 (cached, decision 15), then in ONE transaction
 * writes the order as PENDING with its lines, its first history row, order.created and its
 * saga_state row leased to this process, and runs the saga inline (saga.c). It answers 201
 * with the order as the saga left it: CONFIRMED or CANCELLED (with cancel_reason), or PENDING
 * when a peer could not be reached — the resumer then finishes it and GET shows the outcome.
 * The Idempotency-Key is also kept on the order (unique per caller), so a retry after a crash,
 * once the library's pending key record was abandoned, finds the same order instead of
 * creating a second one, and drives its saga on.
 */
#include <stdio.h>
#include <string.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/time.h"
#include "order.h"

#define O "/api/v1/orders"

static struct saga_ctx saga_of(struct gr_req *req)
{
    struct saga_ctx s = { .app = req->app,
                          .db = req->db,
                          .a = req->arena,
                          .request_id = req->request_id,
                          .traceparent = gr_req_header(req, "traceparent") };
    return s;
}

static const char *caller_of(struct gr_req *req)
{
    return req->principal != NULL ? req->principal->sub : "anonymous";
}

/* ---- create ------------------------------------------------------------------------------ */

struct new_line {
    const char *variant_id;
    long long qty;
};

struct create {
    struct gr_resp *resp;
    const char *id, *user_id, *currency, *coupon, *pm, *rate_id, *addr_text, *key;
    const char *country, *region;
    size_t n;
    struct new_line *lines;
    struct variant_price *prices;
    struct tax_rate tax;
    bool taxed;
    long long subtotal;
};

static int read_address(struct gr_req *req, struct gr_resp *resp, json_t *addr, struct create *c)
{
    static const char *const keys[] = { "name",   "company",     "line1",   "line2", "city",
                                        "region", "postal_code", "country", "phone", NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    const char *k;
    json_t *v;
    struct gr_str text;

    (void)gr_json_only(&r, addr, "/shipping_address", keys);
    json_object_foreach(addr, k, v)
    {
        if (!json_is_string(v) && !json_is_null(v))
            gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, "/shipping_address", k),
                                "must be a string");
        else if (json_is_string(v) && json_string_length(v) > 200)
            gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, "/shipping_address", k),
                                "must be at most 200 characters");
    }
    (void)gr_json_str(&r, addr, "/shipping_address", "country", GR_JSON_REQUIRED, 2, 2, &c->country,
                      NULL);
    (void)gr_json_str(&r, addr, "/shipping_address", "region", GR_JSON_NULLABLE, 1, 3, &c->region,
                      NULL);
    if (c->country != NULL && !(c->country[0] >= 'A' && c->country[0] <= 'Z' &&
                                c->country[1] >= 'A' && c->country[1] <= 'Z'))
        gr_resp_field_error(req, resp, "/shipping_address/country",
                            "must be an ISO 3166-1 alpha-2 code in upper case");
    if (gr_json_dump(req->arena, addr, &text) < 0)
        return GR_EINTERNAL;
    if (text.len > ORDER_ADDR_MAX)
        gr_resp_field_error(req, resp, "/shipping_address", "is too large");
    c->addr_text = text.ptr;
    return 0;
}

static int read_body(struct gr_req *req, struct gr_resp *resp, struct create *c)
{
    static const char *const keys[] = { "items",
                                        "currency",
                                        "shipping_address",
                                        "shipping_rate_id",
                                        "coupon_code",
                                        "payment_method_id",
                                        NULL };
    static const char *const item_keys[] = { "variant_id", "quantity", NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    json_t *items = NULL, *addr = NULL, *it;
    size_t i;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_arr(&r, req->json, "", "items", GR_JSON_REQUIRED, ORDER_LINES_MAX, &items, NULL);
    (void)gr_json_str(&r, req->json, "", "currency", GR_JSON_REQUIRED, 3, 3, &c->currency, NULL);
    (void)gr_json_obj(&r, req->json, "", "shipping_address", GR_JSON_REQUIRED, &addr, NULL);
    (void)gr_json_str(&r, req->json, "", "shipping_rate_id", GR_JSON_NULLABLE, 1, 64, &c->rate_id,
                      NULL);
    (void)gr_json_str(&r, req->json, "", "coupon_code", GR_JSON_NULLABLE, 1, ORDER_CODE_MAX,
                      &c->coupon, NULL);
    (void)gr_json_str(&r, req->json, "", "payment_method_id", GR_JSON_REQUIRED, 1, 255, &c->pm,
                      NULL);
    if (c->currency != NULL && !gr_money_currency_valid(c->currency))
        gr_resp_field_error(req, resp, "/currency", "must be a lowercase ISO 4217 currency code");
    if (addr != NULL) {
        rc = read_address(req, resp, addr, c);
        if (rc < 0)
            return rc;
    }
    if (items != NULL && json_array_size(items) == 0)
        gr_resp_field_error(req, resp, "/items", "must have at least one line");
    c->n = items != NULL ? json_array_size(items) : 0;
    c->lines = gr_arena_calloc(req->arena, (c->n + 1) * sizeof(*c->lines));
    json_array_foreach(items, i, it)
    {
        const char *ptr = gr_json_ptr_idx(req->arena, "/items", i);

        if (!json_is_object(it)) {
            gr_resp_field_error(req, resp, ptr, "must be an object");
            continue;
        }
        (void)gr_json_only(&r, it, ptr, item_keys);
        (void)gr_json_str(&r, it, ptr, "variant_id", GR_JSON_REQUIRED, 36, 36,
                          &c->lines[i].variant_id, NULL);
        (void)gr_json_int(&r, it, ptr, "quantity", GR_JSON_REQUIRED, 1, ORDER_QTY_MAX,
                          &c->lines[i].qty, NULL);
        if (c->lines[i].variant_id == NULL)
            continue;
        if (!gr_id_valid(c->lines[i].variant_id, strlen(c->lines[i].variant_id)))
            gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "%s/variant_id", ptr),
                                "must be a UUID");
        for (size_t k = 0; k < i; k++)
            if (c->lines[k].variant_id != NULL &&
                strcmp(c->lines[k].variant_id, c->lines[i].variant_id) == 0)
                gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "%s/variant_id", ptr),
                                    "the same variant is already line %zu", k);
    }
    return resp->errs.n > 0 ? GR_EVALID : 0;
}

/* Prices every line at 17 and checks them; the subtotal into @c. */
static int price_lines(struct gr_req *req, struct gr_resp *resp, struct create *c)
{
    struct saga_ctx s = saga_of(req);
    const char **ids = gr_arena_calloc(req->arena, (c->n + 1) * sizeof(*ids));
    int rc;

    c->prices = gr_arena_calloc(req->arena, (c->n + 1) * sizeof(*c->prices));
    for (size_t i = 0; i < c->n; i++)
        ids[i] = c->lines[i].variant_id;
    rc = up_price(&s, ids, c->n, c->prices);
    if (rc < 0)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "product_service_unavailable",
                               "prices cannot be read now; nothing was created");
    c->subtotal = 0;
    for (size_t i = 0; i < c->n; i++) {
        const struct variant_price *p = &c->prices[i];
        const char *f = gr_arena_printf(req->arena, "/items/%zu/variant_id", i);

        if (!p->available)
            gr_resp_field_error(req, resp, f, "variant %s is not for sale", c->lines[i].variant_id);
        else if (strcmp(p->price.currency, c->currency) != 0)
            gr_resp_field_error(req, resp, f, "is priced in %s, not %s", p->price.currency,
                                c->currency);
        else
            c->subtotal += p->price.amount * c->lines[i].qty;
    }
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, "variant_unavailable",
                               "remove the lines that are not for sale in this currency");
    if (c->subtotal > GR_MONEY_MAX_AMOUNT)
        return gr_resp_problem(req, resp, GR_EVALID, "amount_too_large",
                               "the order's total exceeds %lld", GR_MONEY_MAX_AMOUNT);
    return 0;
}

/* round_half_up(a * num / den) for non-negative values. */
static long long mul_div(long long a, long long num, long long den)
{
    return den > 0 ? (a * num + den / 2) / den : 0;
}

static int next_number(struct gr_req *req, long long *out)
{
    struct gr_db_rows *r = NULL;
    int rc = gr_db_query(req->db, req->arena,
                         gr_db_engine(req->ctx->db) == GR_DB_PG
                             ? "SELECT nextval('order_number_seq')"
                             : "SELECT COALESCE(MAX(number_seq), 0) + 1 FROM orders",
                         NULL, 0, &r);

    if (rc == 0)
        *out = gr_db_int(r, 0, 0);
    return rc;
}

static int create_tx(struct gr_req *req, void *arg)
{
    struct create *c = arg;
    struct order_app *app = req->app;
    long long seq = 0, tax = 0, grand, *line_tax;
    char now[32], hid[GR_ID_LEN];
    struct gr_str data;
    json_t *o = NULL;
    int rc;

    order_now(now);
    rc = next_number(req, &seq);
    if (rc < 0)
        return rc;
    /* Provisional totals (no discount yet), as the saga's totals() computes them: it writes
     * the final ones, and only the lines a discount changed. */
    line_tax = gr_arena_calloc(req->arena, (c->n + 1) * sizeof(*line_tax));
    for (size_t i = 0; i < c->n; i++) {
        long long net = c->prices[i].price.amount * c->lines[i].qty;

        line_tax[i] = c->tax.inclusive ? net - mul_div(net, 10000, 10000 + c->tax.rate_bp)
                                       : mul_div(net, c->tax.rate_bp, 10000);
        tax += line_tax[i];
    }
    grand = c->subtotal + (c->tax.inclusive ? 0 : tax);
    if (grand > GR_MONEY_MAX_AMOUNT)
        return gr_resp_problem(req, c->resp, GR_EVALID, "amount_too_large",
                               "the order's total exceeds %lld", GR_MONEY_MAX_AMOUNT);
    rc = gr_db_exec(
        req->db,
        "INSERT INTO orders (id, number_seq, number, user_id, status, currency, subtotal,"
        " tax_total, tax_inclusive, tax_rate_bp, tax_shipping, grand_total, coupon_code,"
        " shipping_address, shipping_rate_id, payment_method_id, idem_caller, idem_key,"
        " created_at, updated_at) VALUES ($1, $2, $3, $4, 'PENDING', $5, $6, $7, $8, $9, $10,"
        " $11, $12, $13, $14, $15, $16, $17, $18, $18)",
        (struct gr_db_val[]){
            GR_DB_TEXT(c->id), GR_DB_INT(seq),
            GR_DB_TEXT(gr_arena_printf(req->arena, "GRV-%06lld", seq)), GR_DB_TEXT(c->user_id),
            GR_DB_TEXT(c->currency), GR_DB_INT(c->subtotal), GR_DB_INT(tax),
            GR_DB_INT(c->tax.inclusive ? 1 : 0), GR_DB_INT(c->taxed ? c->tax.rate_bp : 0),
            GR_DB_INT(c->tax.applies_to_shipping ? 1 : 0), GR_DB_INT(grand), GR_DB_TEXT(c->coupon),
            GR_DB_TEXT(c->addr_text), GR_DB_TEXT(c->rate_id), GR_DB_TEXT(c->pm),
            GR_DB_TEXT(caller_of(req)), GR_DB_TEXT(c->key), GR_DB_TEXT(now) },
        18, NULL);
    for (size_t i = 0; i < c->n && rc == 0; i++)
        rc = gr_db_exec(
            req->db,
            "INSERT INTO order_items (order_id, position, variant_id, product_id, sku,"
            " unit_price, quantity, line_total, tax) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8, $9)",
            (struct gr_db_val[]){
                GR_DB_TEXT(c->id), GR_DB_INT((long long)i), GR_DB_TEXT(c->lines[i].variant_id),
                GR_DB_TEXT(c->prices[i].product_id), GR_DB_TEXT(c->prices[i].sku),
                GR_DB_INT(c->prices[i].price.amount), GR_DB_INT(c->lines[i].qty),
                GR_DB_INT(c->prices[i].price.amount * c->lines[i].qty), GR_DB_INT(line_tax[i]) },
            9, NULL);
    if (rc < 0)
        return rc;
    gr_id_new(hid);
    rc = gr_db_exec(req->db,
                    "INSERT INTO order_status_history (id, order_id, from_status, to_status,"
                    " reason, actor, version, created_at) VALUES ($1, $2, NULL, 'PENDING', NULL,"
                    " $3, 1, $4)",
                    (struct gr_db_val[]){ GR_DB_TEXT(hid), GR_DB_TEXT(c->id),
                                          GR_DB_TEXT(caller_of(req)), GR_DB_TEXT(now) },
                    4, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO saga_state (order_id, step, status, owner, lease_until,"
                        " created_at, updated_at) VALUES ($1, 'coupon', 'running', $2, $3, $4, $4)",
                        (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(app->instance),
                                              GR_DB_INT(gr_time_now_ms() + app->lease_ms),
                                              GR_DB_TEXT(now) },
                        4, NULL);
    if (rc == 0)
        rc = order_render(req->db, req->arena, c->id, &o);
    if (rc == 0)
        rc = gr_json_dump(req->arena, o, &data);
    json_decref(o);
    if (rc < 0)
        return rc;
    return gr_req_emit(req, "order.created", c->id, data.ptr);
}

/* The order already made under this caller's key (a retry), or NULL. */
static int find_by_key(struct gr_req *req, const char *key, const char **id)
{
    struct gr_db_rows *r = NULL;
    int rc = gr_db_query(
        req->db, req->arena, "SELECT id FROM orders WHERE idem_caller = $1 AND idem_key = $2",
        (struct gr_db_val[]){ GR_DB_TEXT(caller_of(req)), GR_DB_TEXT(key) }, 2, &r);

    *id = rc == 0 && gr_db_nrows(r) == 1 ? gr_db_text(r, 0, 0) : NULL;
    return rc;
}

void order_reply(struct gr_req *req, struct gr_resp *resp, int status, const char *id, json_t *o)
{
    const char *loc = gr_arena_printf(req->arena, O "/%s", id);
    size_t i = 0;

    if (resp->json != NULL)
        json_decref(resp->json);
    resp->body = NULL;
    resp->body_len = 0;
    while (i < resp->nheaders && strcmp(resp->headers[i].name, "Location") != 0)
        i++;
    if (i < resp->nheaders)
        resp->headers[i].value = loc; /* made again by a retried transaction */
    else
        gr_resp_header(req, resp, "Location", loc);
    gr_resp_json(resp, status, o);
}

/*
 * Answers with order @id: the answer the saga already made (and stored with its last
 * transaction), else the order as the saga's last committed transition of it left it when @s
 * has that (@s's reference is taken), else as read now.
 */
static int reply(struct gr_req *req, struct gr_resp *resp, int status, const char *id,
                 struct saga_ctx *s)
{
    json_t *o = NULL;
    int rc = 0;

    if (s != NULL && s->replied && s->reply_id != NULL && strcmp(s->reply_id, id) == 0) {
        json_decref(s->rendered);
        s->rendered = NULL;
        return 0;
    }
    if (s != NULL && s->rendered != NULL && s->rendered_id != NULL &&
        strcmp(s->rendered_id, id) == 0) {
        o = s->rendered;
        s->rendered = NULL;
    } else {
        rc = order_render(req->db, req->arena, id, &o);
    }
    if (s != NULL) {
        json_decref(s->rendered);
        s->rendered = NULL;
    }
    if (rc < 0)
        return rc;
    order_reply(req, resp, status, id, o);
    return 0;
}

int orders_create(struct gr_req *req, struct gr_resp *resp)
{
    struct create c;
    struct saga_ctx s = saga_of(req);
    const char *existing = NULL;
    char id[GR_ID_LEN];
    bool found = false;
    int rc;

    memset(&c, 0, sizeof(c));
    c.resp = resp;
    c.key = gr_req_header(req, "Idempotency-Key");
    if (c.key == NULL)
        return GR_EINVAL; /* the core requires it on this route */
    c.user_id = caller_of(req);
    rc = read_body(req, resp, &c);
    if (rc < 0)
        return rc;
    rc = find_by_key(req, c.key, &existing);
    if (rc < 0)
        return rc;
    s.req = req;
    s.resp = resp;
    if (existing != NULL) {
        s.reply_id = existing;
        rc = saga_run(&s, existing, false);
        if (rc < 0)
            gr_log_warn("saga run failed", "order_id", existing, "code", gr_err_name(rc));
        return reply(req, resp, 201, existing, &s);
    }
    rc = price_lines(req, resp, &c);
    if (rc < 0)
        return rc;
    rc = up_tax_rate(&s, c.country, c.region, &c.tax, &found);
    if (rc < 0)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "tax_unavailable",
                               "tax rates cannot be read now and none are cached; nothing was"
                               " created");
    c.taxed = found;
    if (!found)
        memset(&c.tax, 0, sizeof(c.tax));
    gr_id_new(id);
    c.id = id;
    /* READ COMMITTED: it only inserts new rows (the unique key decides a racing retry) and
     * reads them back; SERIALIZABLE would lock index pages its neighbours write too. */
    rc = gr_req_tx_read_committed(req, create_tx, &c);
    if (rc == GR_ECONFLICT) /* the same key raced in another request */
        return gr_resp_problem(req, resp, GR_ECONFLICT, "idempotency_in_flight",
                               "a request with this Idempotency-Key is still in progress");
    if (rc < 0)
        return rc;
    s.reply_id = id;
    rc = saga_run(&s, id, true);
    if (rc < 0)
        gr_log_warn("saga run failed; the resumer goes on", "order_id", id, "code",
                    gr_err_name(rc));
    return reply(req, resp, 201, id, &s);
}

/* ---- reads ------------------------------------------------------------------------------- */

/* Loads order @id's owner; GR_ENOTFOUND unless visible to the caller. */
static int visible(struct gr_req *req, const char *id)
{
    struct gr_db_rows *r = NULL;
    int rc;

    if (id == NULL || !gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena, "SELECT user_id FROM orders WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ENOTFOUND;
    if (strcmp(gr_db_text(r, 0, 0), caller_of(req)) != 0 && !gr_req_can(req, "orders:read"))
        return GR_ENOTFOUND;
    return 0;
}

int orders_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    int rc = visible(req, id);

    return rc < 0 ? rc : reply(req, resp, 200, id, NULL);
}

static const char *time_param(struct gr_req *req, struct gr_resp *resp, const char *name)
{
    const char *v = gr_req_query(req, name);
    int64_t ms;
    char *out;

    if (v == NULL)
        return NULL;
    if (gr_time_parse(v, &ms) < 0) {
        gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "query.%s", name),
                            "must be an RFC 3339 date-time");
        return NULL;
    }
    out = gr_arena_alloc(req->arena, GR_TIME_STR_LEN);
    gr_time_format(ms, out);
    return out;
}

/* One page of orders, newest first; @user NULL = everyone's. */
static int list(struct gr_req *req, struct gr_resp *resp, const char *user)
{
    const char *status = gr_req_query(req, "status"), *cursor = gr_req_query(req, "cursor");
    const char *from = time_param(req, resp, "from"), *to = time_param(req, resp, "to");
    const char *scope, *c_at = NULL, *c_id = NULL, *payload;
    struct gr_db_rows *r = NULL;
    json_t *data;
    size_t n;
    int limit, rc;

    rc = gr_req_limit(req, resp, &limit);
    if (status != NULL && !order_status_valid(status))
        gr_resp_field_error(req, resp, "query.status",
                            "must be one of PENDING, CONFIRMED,"
                            " PROCESSING, SHIPPED, DELIVERED, CANCELLED");
    if (rc < 0 || resp->errs.n > 0)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "orders|%s|%s|%s|%s", user ? user : "",
                            status ? status : "", from ? from : "", to ? to : "");
    if (cursor != NULL) {
        char *bar;

        rc = gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL);
        if (rc < 0)
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is not valid");
        bar = strchr(payload, '|');
        if (bar == NULL)
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is not valid");
        *bar = '\0';
        c_at = payload;
        c_id = bar + 1;
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, created_at FROM orders"
                     " WHERE (CAST($1 AS TEXT) IS NULL OR user_id = $1)"
                     " AND (CAST($2 AS TEXT) IS NULL OR status = $2)"
                     " AND (CAST($3 AS TEXT) IS NULL OR created_at >= $3)"
                     " AND (CAST($4 AS TEXT) IS NULL OR created_at < $4)"
                     " AND (CAST($5 AS TEXT) IS NULL OR created_at < $5"
                     " OR (created_at = $5 AND id < $6))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($7 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(user), GR_DB_TEXT(status), GR_DB_TEXT(from),
                                           GR_DB_TEXT(to), GR_DB_TEXT(c_at), GR_DB_TEXT(c_id),
                                           GR_DB_INT(limit + 1) },
                     7, &r);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(r);
    data = json_array();
    for (size_t i = 0; i < n && i < (size_t)limit; i++) {
        json_t *o = NULL;

        rc = order_render(req->db, req->arena, gr_db_text(r, i, 0), &o);
        if (rc < 0) {
            json_decref(data);
            return rc;
        }
        json_array_append_new(data, o);
    }
    return gr_resp_list(req, resp, data, n > (size_t)limit, scope,
                        n > (size_t)limit
                            ? gr_arena_printf(req->arena, "%s|%s", gr_db_text(r, limit - 1, 1),
                                              gr_db_text(r, limit - 1, 0))
                            : NULL);
}

int orders_list(struct gr_req *req, struct gr_resp *resp)
{
    return list(req, resp, NULL);
}

int orders_list_user(struct gr_req *req, struct gr_resp *resp)
{
    const char *user = gr_req_param(req, "user_id");

    if (strcmp(user, caller_of(req)) != 0 && !gr_req_can(req, "orders:read"))
        return GR_EFORBIDDEN;
    return list(req, resp, user);
}

int orders_history(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *r = NULL;
    json_t *data;
    int rc = visible(req, id);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT from_status, to_status, reason, actor, version, created_at"
                     " FROM order_status_history WHERE order_id = $1 ORDER BY version",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    data = json_array();
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        json_array_append_new(
            data, json_pack("{s:o,s:s,s:o,s:s,s:I,s:s}", "from_status",
                            gr_db_text(r, i, 0) ? json_string(gr_db_text(r, i, 0)) : json_null(),
                            "to_status", gr_db_text(r, i, 1), "reason",
                            gr_db_text(r, i, 2) ? json_string(gr_db_text(r, i, 2)) : json_null(),
                            "actor", gr_db_text(r, i, 3), "version", (json_int_t)gr_db_int(r, i, 4),
                            "created_at", gr_db_text(r, i, 5)));
    gr_resp_json(resp, 200, json_pack("{s:o}", "data", data));
    return 0;
}

int orders_saga(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *r = NULL;
    int rc = visible(req, id);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT step, status, attempts, last_error, refund, next_at, created_at,"
                     " updated_at FROM saga_state WHERE order_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ENOTFOUND;
    gr_resp_json(resp, 200,
                 json_pack("{s:s,s:s,s:s,s:I,s:o,s:b,s:s,s:s}", "order_id", id, "step",
                           gr_db_text(r, 0, 0), "status", gr_db_text(r, 0, 1), "attempts",
                           (json_int_t)gr_db_int(r, 0, 2), "last_error",
                           gr_db_text(r, 0, 3) ? json_string(gr_db_text(r, 0, 3)) : json_null(),
                           "refund", gr_db_int(r, 0, 4) != 0, "created_at", gr_db_text(r, 0, 6),
                           "updated_at", gr_db_text(r, 0, 7)));
    return 0;
}

/* ---- transitions ------------------------------------------------------------------------- */

struct move {
    struct gr_resp *resp;
    const char *id, *to, *reason;
    const char *from;  /* out: the status it was in */
    bool compensate;   /* out: a CONFIRMED order was cancelled: undo now */
    bool requested;    /* out: a PENDING order's cancel was requested */
    long long version; /* expected version, 0 = any */
};

static int move_tx(struct gr_req *req, void *arg)
{
    struct move *m = arg;
    struct order_app *app = req->app;
    struct gr_db_rows *r = NULL;
    char now[32];
    int rc;

    m->compensate = m->requested = false;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT status, version, payment_status FROM orders WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(m->id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ENOTFOUND;
    m->from = gr_db_text(r, 0, 0);
    if (m->version != 0 && gr_db_int(r, 0, 1) != m->version)
        return gr_resp_problem(req, m->resp, GR_ECONFLICT, "version_conflict",
                               "the order is at version %lld", gr_db_int(r, 0, 1));
    if (!order_transition_ok(m->from, m->to))
        return gr_resp_problem(req, m->resp, GR_ECONFLICT, "invalid_transition",
                               "an order cannot go from %s to %s", m->from, m->to);
    order_now(now);
    if (strcmp(m->to, ST_CANCELLED) == 0 && strcmp(m->from, ST_PENDING) == 0) {
        /* The saga holds the order: it sees the request, stops before the payment and ends
         * CANCELLED (reason cancelled) with its compensation. */
        m->requested = true;
        rc = gr_db_exec(req->db,
                        "UPDATE orders SET cancel_requested = 1, updated_at = $2 WHERE id = $1"
                        " AND status = 'PENDING'",
                        (struct gr_db_val[]){ GR_DB_TEXT(m->id), GR_DB_TEXT(now) }, 2, NULL);
        if (rc == 0)
            rc = gr_db_exec(req->db, "UPDATE saga_state SET next_at = 0 WHERE order_id = $1",
                            (struct gr_db_val[]){ GR_DB_TEXT(m->id) }, 1, NULL);
        return rc;
    }
    rc = order_transition(req->db, req->arena, m->id, m->from, m->to, m->reason, caller_of(req),
                          gr_req_header(req, "traceparent"));
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, m->resp, GR_ECONFLICT, "invalid_transition",
                               "the order changed status meanwhile");
    if (rc < 0 || strcmp(m->to, ST_CANCELLED) != 0)
        return rc;
    /* CONFIRMED → CANCELLED: refund at 15 and release at 18 and 22, leased to this request. */
    m->compensate = true;
    return gr_db_exec(
        req->db,
        "UPDATE saga_state SET status = 'compensating', step = 'compensate', refund = $2,"
        " attempts = 0, owner = $3, lease_until = $4, next_at = 0, updated_at = $5"
        " WHERE order_id = $1",
        (struct gr_db_val[]){
            GR_DB_TEXT(m->id),
            GR_DB_INT(gr_db_text(r, 0, 2) != NULL && strcmp(gr_db_text(r, 0, 2), "succeeded") == 0
                          ? 1
                          : 0),
            GR_DB_TEXT(app->instance), GR_DB_INT(gr_time_now_ms() + app->lease_ms),
            GR_DB_TEXT(now) },
        5, NULL);
}

static int do_move(struct gr_req *req, struct gr_resp *resp, struct move *m)
{
    struct saga_ctx s = saga_of(req);
    int rc;

    m->resp = resp;
    rc = visible(req, m->id);
    if (rc < 0)
        return rc;
    rc = gr_req_tx(req, move_tx, m);
    if (rc < 0)
        return rc;
    if (m->compensate) {
        rc = saga_run(&s, m->id, true);
        json_decref(s.rendered);
        if (rc < 0)
            gr_log_warn("compensation failed; the resumer goes on", "order_id", m->id, "code",
                        gr_err_name(rc));
    } else if (m->requested) {
        saga_kick(req->app);
    }
    return reply(req, resp, m->requested ? 202 : 200, m->id, NULL);
}

int orders_set_status(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "status", "reason", "version", NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    struct move m = { .id = gr_req_param(req, "id") };
    bool have_version = false;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "status", GR_JSON_REQUIRED, 1, 20, &m.to, NULL);
    (void)gr_json_str(&r, req->json, "", "reason", GR_JSON_NULLABLE, 1, 200, &m.reason, NULL);
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT,
                      &m.version, &have_version);
    if (m.to != NULL && !order_status_valid(m.to))
        gr_resp_field_error(req, resp, "/status",
                            "must be one of PENDING, CONFIRMED, PROCESSING, SHIPPED, DELIVERED,"
                            " CANCELLED");
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (strcmp(m.to, ST_CANCELLED) == 0)
        m.reason = "cancelled";
    return do_move(req, resp, &m);
}

int orders_cancel(struct gr_req *req, struct gr_resp *resp)
{
    struct move m = { .id = gr_req_param(req, "id"), .to = ST_CANCELLED, .reason = "cancelled" };
    struct gr_db_rows *r = NULL;
    int rc;

    if (req->body.len > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "cancel takes no body");
    rc = visible(req, m.id);
    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena, "SELECT user_id FROM orders WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(m.id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (strcmp(gr_db_text(r, 0, 0), caller_of(req)) != 0 && !gr_req_can(req, "orders:write"))
        return GR_EFORBIDDEN;
    return do_move(req, resp, &m);
}
