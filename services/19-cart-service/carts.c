/*
 * carts.c - the cart endpoints of SERVICES §19 except checkout (checkout.c): create, read,
 * lines, coupon, totals and merge.
 *
 * Writes run in one transaction each (GR_R_TX, or gr_req_tx after a call to 17), re-read the
 * cart inside it and bump its version, so two requests on one cart never lose a line on
 * SQLite or PostgreSQL. A line is one variant: adding it again adds to its quantity, which
 * stays within 1..99, and a cart holds at most 100 lines. Prices are not trusted from the
 * client: adding a line prices it at 17 and keeps that price as the line's snapshot; totals
 * reprice every line and report the lines whose price moved since.
 */
#include <stdio.h>
#include <string.h>

#include "cart.h"
#include "gr/auth.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/service.h"

#define PROBLEM_PREFIX "urn:gravity:problem:"

static struct gr_json_rd rd(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = { req->arena, &resp->errs };
    return r;
}

/* Answers @status with the cart @id's JSON (and @token as cart_token when non-NULL). */
static int reply_cart(struct gr_req *req, struct gr_resp *resp, int status, const char *id,
                      const char *token)
{
    json_t *body = NULL;
    int rc = cart_render(req, id, token, &body);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, status, body);
    return 0;
}

/* The id of the caller's open (active or abandoned) cart into *@id, or NULL. */
static int open_cart_of(struct gr_req *req, const char *user, const char **id)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    *id = NULL;
    rc =
        gr_db_query(req->db, req->arena,
                    "SELECT id FROM carts WHERE user_id = $1 AND status IN ('active', 'abandoned')",
                    (struct gr_db_val[]){ GR_DB_TEXT(user) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0)
        *id = gr_db_text(rows, 0, 0);
    return 0;
}

/* Inserts a new cart for @user (or anonymous with @token_hash) and returns its id in @id. */
static int insert_cart(struct gr_req *req, const char *user, const char *token_hash,
                       const char *currency, char id[GR_ID_LEN])
{
    char now[32];

    gr_id_new(id);
    cart_now(now);
    return gr_db_exec(
        req->db,
        "INSERT INTO carts (id, user_id, token_hash, currency, status, created_at,"
        " updated_at, last_activity_at) VALUES ($1, $2, $3, $4, 'active', $5, $5, $5)",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(user), GR_DB_TEXT(token_hash),
                              GR_DB_TEXT(currency), GR_DB_TEXT(now) },
        5, NULL);
}

int carts_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "currency", NULL };
    struct gr_json_rd r = rd(req, resp);
    const char *currency = NULL, *existing = NULL, *token = NULL;
    char id[GR_ID_LEN];
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "currency", GR_JSON_NULLABLE, 3, 3, &currency, NULL);
    if (currency != NULL && !gr_money_currency_valid(currency))
        gr_resp_field_error(req, resp, "/currency", "must be a lowercase ISO 4217 currency code");
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (req->principal != NULL) {
        rc = open_cart_of(req, req->principal->sub, &existing);
        if (rc < 0)
            return rc;
        if (existing != NULL)
            return reply_cart(req, resp, 200, existing, NULL);
        rc = insert_cart(req, req->principal->sub, NULL, currency, id);
    } else {
        token = cart_token_new(req->arena);
        rc = insert_cart(req, NULL, cart_token_hash(req->arena, token), currency, id);
    }
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location", gr_arena_printf(req->arena, "/api/v1/carts/%s", id));
    return reply_cart(req, resp, 201, id, token);
}

int carts_me(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = NULL;
    int rc = open_cart_of(req, req->principal->sub, &id);

    if (rc < 0)
        return rc;
    if (id == NULL)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "cart_not_found",
                               "the caller has no open cart");
    return reply_cart(req, resp, 200, id, NULL);
}

int carts_get(struct gr_req *req, struct gr_resp *resp)
{
    struct cart c;
    int rc = cart_load(req, resp, gr_req_param(req, "id"), CART_READ, &c);

    if (rc < 0)
        return rc;
    return reply_cart(req, resp, 200, c.id, NULL);
}

/* ---- lines ------------------------------------------------------------------------------- */

struct add_arg {
    struct gr_resp *resp;
    const char *cart_id;
    const char *variant_id;
    long long quantity;
    struct cart_price price;
};

/* A variant version for price_version: NULL when 17 did not give one. */
static struct gr_db_val version_val(long long v)
{
    return v > 0 ? GR_DB_INT(v) : GR_DB_NULL;
}

/* The line write of carts_item_add, inside its own transaction. */
static int add_tx(struct gr_req *req, void *p)
{
    struct add_arg *a = p;
    struct gr_resp *resp = a->resp;
    struct gr_db_rows *rows = NULL;
    struct cart c;
    long long line_qty = a->quantity;
    char now[32], iid[GR_ID_LEN];
    struct gr_str data;
    json_t *ev;
    int rc;

    rc = cart_load(req, resp, a->cart_id, CART_WRITE, &c);
    if (rc < 0)
        return rc;
    if (c.currency != NULL && strcmp(c.currency, a->price.price.currency) != 0) {
        gr_resp_field_error(req, resp, "/variant_id", "is priced in %s, the cart in %s",
                            a->price.price.currency, c.currency);
        return gr_resp_problem(req, resp, GR_EVALID, "currency_mismatch",
                               "a cart holds one currency");
    }
    cart_now(now);
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, quantity FROM cart_items WHERE cart_id = $1 AND variant_id = $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.id), GR_DB_TEXT(a->variant_id) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1) {
        line_qty += gr_db_int(rows, 0, 1);
        if (line_qty > CART_QTY_MAX) {
            gr_resp_field_error(req, resp, "/quantity", "the line would hold %lld, at most %d",
                                line_qty, CART_QTY_MAX);
            return gr_resp_problem(req, resp, GR_EVALID, "quantity_exceeded",
                                   "a line holds at most %d", CART_QTY_MAX);
        }
        /* The line is priced afresh: the snapshot is 17's price now, so a price change or a
         * deletion recorded by an event no longer applies (a stock flag is 18's: it stays). */
        rc = gr_db_exec(req->db,
                        "UPDATE cart_items SET quantity = $2, unit_price_amount = $3,"
                        " unit_price_currency = $4, updated_at = $5, product_id = $6, sku = $7,"
                        " price_version = $8, new_price_amount = NULL, new_price_currency = NULL,"
                        " unavailable_reason = NULL WHERE id = $1",
                        (struct gr_db_val[]){
                            GR_DB_TEXT(gr_db_text(rows, 0, 0)), GR_DB_INT(line_qty),
                            GR_DB_INT(a->price.price.amount), GR_DB_TEXT(a->price.price.currency),
                            GR_DB_TEXT(now), GR_DB_TEXT(a->price.product_id),
                            GR_DB_TEXT(a->price.sku), version_val(a->price.version) },
                        8, NULL);
    } else {
        rc = gr_db_query(req->db, req->arena, "SELECT COUNT(*) FROM cart_items WHERE cart_id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(c.id) }, 1, &rows);
        if (rc < 0)
            return rc;
        if (gr_db_int(rows, 0, 0) >= CART_LINES_MAX)
            return gr_resp_problem(req, resp, GR_EVALID, "too_many_lines",
                                   "a cart holds at most %d lines", CART_LINES_MAX);
        gr_id_new(iid);
        rc = gr_db_exec(
            req->db,
            "INSERT INTO cart_items (id, cart_id, variant_id, quantity,"
            " unit_price_amount, unit_price_currency, created_at, updated_at, product_id, sku,"
            " price_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)",
            (struct gr_db_val[]){ GR_DB_TEXT(iid), GR_DB_TEXT(c.id), GR_DB_TEXT(a->variant_id),
                                  GR_DB_INT(line_qty), GR_DB_INT(a->price.price.amount),
                                  GR_DB_TEXT(a->price.price.currency), GR_DB_TEXT(now),
                                  GR_DB_TEXT(a->price.product_id), GR_DB_TEXT(a->price.sku),
                                  version_val(a->price.version) },
            10, NULL);
        /* A concurrent add of the same variant inserted the line first (UNIQUE (cart_id,
         * variant_id) on PostgreSQL): gr_req_tx runs the transaction again, which grows it. */
        if (rc == GR_ECONFLICT)
            return GR_EBUSY;
    }
    if (rc == 0 && c.currency == NULL)
        rc = gr_db_exec(
            req->db, "UPDATE carts SET currency = $2 WHERE id = $1",
            (struct gr_db_val[]){ GR_DB_TEXT(c.id), GR_DB_TEXT(a->price.price.currency) }, 2, NULL);
    if (rc == 0)
        rc = cart_touch(req, &c);
    if (rc < 0)
        return rc;
    ev = json_pack("{s:s,s:o,s:s,s:I,s:I,s:o,s:I}", "cart_id", c.id, "user_id",
                   c.user_id ? json_string(c.user_id) : json_null(), "variant_id", a->variant_id,
                   "quantity", (json_int_t)a->quantity, "line_quantity", (json_int_t)line_qty,
                   "unit_price", gr_money_to_json(&a->price.price), "version",
                   (json_int_t)c.version);
    rc = ev != NULL ? gr_json_dump(req->arena, ev, &data) : GR_EINTERNAL;
    json_decref(ev);
    if (rc < 0)
        return rc;
    return gr_req_emit(req, "cart.item_added", c.id, data.ptr);
}

int carts_item_add(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "variant_id", "quantity", NULL };
    struct gr_json_rd r = rd(req, resp);
    struct add_arg a = { .resp = resp };
    struct cart c;
    const char *vid = NULL;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "variant_id", GR_JSON_REQUIRED, 36, 36, &vid, NULL);
    if (vid != NULL && !gr_id_valid(vid, strlen(vid)))
        gr_resp_field_error(req, resp, "/variant_id", "must be a UUID");
    (void)gr_json_int(&r, req->json, "", "quantity", GR_JSON_REQUIRED, 1, CART_QTY_MAX, &a.quantity,
                      NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &c);
    if (rc < 0)
        return rc;
    rc = cart_price_variants(req, &vid, 1, &a.price);
    if (rc < 0)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "product_service_unavailable",
                               "prices cannot be read now");
    if (!a.price.found || !a.price.available) {
        gr_resp_field_error(req, resp, "/variant_id", "is not for sale");
        return gr_resp_problem(req, resp, GR_EVALID, "variant_unavailable",
                               "variant %s is not for sale", vid);
    }
    a.cart_id = c.id;
    a.variant_id = vid;
    rc = gr_req_tx(req, add_tx, &a);
    if (rc < 0)
        return rc;
    return reply_cart(req, resp, 201, c.id, NULL);
}

/* The line @item_id of cart @cart_id into *@qty; 404 item_not_found when it is not there. */
static int find_item(struct gr_req *req, struct gr_resp *resp, const char *cart_id,
                     const char *item_id)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if (item_id == NULL || !gr_id_valid(item_id, strlen(item_id)))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "item_not_found", "no such line");
    rc =
        gr_db_query(req->db, req->arena, "SELECT id FROM cart_items WHERE id = $1 AND cart_id = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(item_id), GR_DB_TEXT(cart_id) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "item_not_found", "no such line");
    return 0;
}

int carts_item_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "quantity", NULL };
    struct gr_json_rd r = rd(req, resp);
    const char *item_id = gr_req_param(req, "item_id");
    long long qty = 0;
    struct cart c;
    char now[32];
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "quantity", GR_JSON_REQUIRED, 0, CART_QTY_MAX, &qty, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &c);
    if (rc == 0)
        rc = find_item(req, resp, c.id, item_id);
    if (rc < 0)
        return rc;
    cart_now(now);
    if (qty == 0)
        rc = gr_db_exec(req->db, "DELETE FROM cart_items WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(item_id) }, 1, NULL);
    else
        rc = gr_db_exec(
            req->db, "UPDATE cart_items SET quantity = $2, updated_at = $3 WHERE id = $1",
            (struct gr_db_val[]){ GR_DB_TEXT(item_id), GR_DB_INT(qty), GR_DB_TEXT(now) }, 3, NULL);
    if (rc == 0)
        rc = cart_touch(req, &c);
    if (rc < 0)
        return rc;
    return reply_cart(req, resp, 200, c.id, NULL);
}

int carts_item_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *item_id = gr_req_param(req, "item_id");
    struct cart c;
    int rc;

    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &c);
    if (rc == 0)
        rc = find_item(req, resp, c.id, item_id);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM cart_items WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(item_id) }, 1, NULL);
    if (rc == 0)
        rc = cart_touch(req, &c);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

/* ---- coupon ------------------------------------------------------------------------------ */

static int set_coupon(struct gr_req *req, struct gr_resp *resp, const char *code)
{
    struct cart c;
    int rc;

    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &c);
    if (rc == 0)
        rc = gr_db_exec(req->db, "UPDATE carts SET coupon_code = $2 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(c.id), GR_DB_TEXT(code) }, 2, NULL);
    if (rc == 0)
        rc = cart_touch(req, &c);
    if (rc < 0)
        return rc;
    return reply_cart(req, resp, 200, c.id, NULL);
}

int carts_coupon_put(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "code", NULL };
    struct gr_json_rd r = rd(req, resp);
    const char *code = NULL;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "code", GR_JSON_REQUIRED, 1, CART_CODE_MAX, &code, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    return set_coupon(req, resp, code);
}

int carts_coupon_delete(struct gr_req *req, struct gr_resp *resp)
{
    return set_coupon(req, resp, NULL);
}

/* ---- totals ------------------------------------------------------------------------------ */

static json_t *money_json(long long amount, const char *currency)
{
    struct gr_money m = { .amount = amount };

    snprintf(m.currency, sizeof(m.currency), "%s", currency);
    return gr_money_to_json(&m);
}

/* The problem slug of an upstream problem body ("coupon_not_active"), or "rejected". */
static const char *slug_of(json_t *problem)
{
    const char *t = json_string_value(json_object_get(problem, "type"));

    if (t != NULL && strncmp(t, PROBLEM_PREFIX, strlen(PROBLEM_PREFIX)) == 0)
        return t + strlen(PROBLEM_PREFIX);
    return "rejected";
}

/*
 * The coupon part of the totals: previewed at 22 when it answers, else shown as not previewed
 * (22 down must not break the cart). *@discount receives the discount of a valid coupon.
 */
static json_t *coupon_preview(struct gr_req *req, const struct cart *c,
                              const struct cart_item *items, const struct cart_price *prices,
                              size_t n, long long *discount)
{
    struct cart_upstream u;
    json_t *lines = json_array(), *body, *d;
    size_t k = 0;
    int rc;

    *discount = 0;
    for (size_t i = 0; i < n; i++) {
        if (!prices[i].available || prices[i].product_id == NULL)
            continue;
        json_array_append_new(lines, json_pack("{s:s,s:I,s:o}", "product_id", prices[i].product_id,
                                               "quantity", (json_int_t)items[i].quantity,
                                               "unit_price", gr_money_to_json(&prices[i].price)));
        k++;
    }
    body =
        json_pack("{s:s,s:s,s:o}", "code", c->coupon_code, "currency", c->currency, "lines", lines);
    if (c->user_id != NULL)
        json_object_set_new(body, "user_id", json_string(c->user_id));
    rc = k > 0 ? cart_discount_preview(req, body, &u) : GR_EVALID;
    json_decref(body);
    if (k == 0)
        return json_pack("{s:s,s:b,s:s}", "code", c->coupon_code, "previewed", 0, "reason",
                         "no_lines");
    if (rc < 0 || u.status >= 500 || u.status == 401 || u.status == 403 || u.status == 404 ||
        u.status < 200)
        return json_pack("{s:s,s:b,s:s}", "code", c->coupon_code, "previewed", 0, "reason",
                         "discount_service_unavailable");
    d = json_object_get(json_object_get(u.json, "discount"), "amount");
    if (u.status == 200 && json_is_integer(d)) {
        *discount = json_integer_value(d);
        return json_pack("{s:s,s:b,s:b,s:o}", "code", c->coupon_code, "previewed", 1, "valid", 1,
                         "discount", money_json(*discount, c->currency));
    }
    if (u.status != 200)
        return json_pack("{s:s,s:b,s:b,s:s,s:s?}", "code", c->coupon_code, "previewed", 1, "valid",
                         0, "reason", slug_of(u.json), "detail",
                         json_string_value(json_object_get(u.json, "detail")));
    return json_pack("{s:s,s:b,s:s}", "code", c->coupon_code, "previewed", 0, "reason",
                     "discount_service_unavailable");
}

int carts_totals(struct gr_req *req, struct gr_resp *resp)
{
    struct cart_item *items = NULL;
    struct cart_price *prices;
    const char **ids;
    struct cart c;
    size_t n = 0;
    long long subtotal = 0, discount = 0;
    bool any_changed = false, any_unavailable = false, any_oos = false;
    json_t *lines, *coupon = json_null(), *body;
    int rc;

    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_READ, &c);
    if (rc == 0)
        rc = cart_items(req, c.id, &items, &n);
    if (rc < 0)
        return rc;
    ids = gr_arena_calloc(req->arena, (n + 1) * sizeof(*ids));
    prices = gr_arena_calloc(req->arena, (n + 1) * sizeof(*prices));
    for (size_t i = 0; i < n; i++)
        ids[i] = items[i].variant_id;
    rc = cart_price_variants(req, ids, n, prices);
    if (rc < 0) {
        json_decref(coupon);
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "product_service_unavailable",
                               "prices cannot be read now");
    }
    lines = json_array();
    for (size_t i = 0; i < n; i++) {
        const struct cart_item *it = &items[i];
        const struct cart_price *p = &prices[i];
        bool ok = p->available && it->unavailable == NULL && c.currency != NULL &&
                  strcmp(p->price.currency, c.currency) == 0;
        bool changed = ok && p->price.amount != it->snapshot.amount;
        json_t *l = json_pack("{s:s,s:s,s:I,s:b}", "item_id", it->id, "variant_id", it->variant_id,
                              "quantity", (json_int_t)it->quantity, "available", ok);

        if (ok) {
            subtotal += p->price.amount * it->quantity;
            json_object_set_new(l, "unit_price", gr_money_to_json(&p->price));
            json_object_set_new(l, "line_total",
                                money_json(p->price.amount * it->quantity, c.currency));
        } else {
            any_unavailable = true;
            json_object_set_new(l, "reason",
                                json_string(it->unavailable != NULL ? it->unavailable
                                            : p->found              ? "variant_unavailable"
                                                                    : "variant_not_found"));
        }
        json_object_set_new(l, "out_of_stock", json_boolean(it->out_of_stock));
        any_oos = any_oos || it->out_of_stock;
        json_object_set_new(l, "price_changed", json_boolean(changed));
        if (changed) {
            any_changed = true;
            json_object_set_new(l, "old_unit_price", gr_money_to_json(&it->snapshot));
            json_object_set_new(l, "new_unit_price", gr_money_to_json(&p->price));
        }
        json_array_append_new(lines, l);
    }
    if (c.coupon_code != NULL && c.currency != NULL) {
        json_decref(coupon);
        coupon = coupon_preview(req, &c, items, prices, n, &discount);
        if (discount > subtotal)
            discount = subtotal;
    }
    body = json_pack("{s:s,s:o,s:o,s:b,s:b,s:o}", "cart_id", c.id, "currency",
                     c.currency ? json_string(c.currency) : json_null(), "lines", lines,
                     "price_changed", any_changed, "has_unavailable", any_unavailable, "coupon",
                     coupon);
    json_object_set_new(body, "has_out_of_stock", json_boolean(any_oos));
    if (c.currency != NULL) {
        json_object_set_new(body, "subtotal", money_json(subtotal, c.currency));
        json_object_set_new(body, "discount", money_json(discount, c.currency));
        json_object_set_new(body, "total", money_json(subtotal - discount, c.currency));
    } else {
        json_object_set_new(body, "subtotal", json_null());
        json_object_set_new(body, "discount", json_null());
        json_object_set_new(body, "total", json_null());
    }
    gr_resp_json(resp, 200, body);
    return 0;
}

/* ---- merge ------------------------------------------------------------------------------- */

int carts_merge(struct gr_req *req, struct gr_resp *resp)
{
    struct cart src;
    struct cart_item *items = NULL;
    struct gr_db_rows *rows = NULL;
    const char *target_id = NULL, *tcur = NULL, *tcoupon = NULL;
    char tid[GR_ID_LEN], now[32];
    size_t n = 0;
    long long nlines;
    struct cart tgt;
    int rc;

    rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &src);
    if (rc < 0)
        return rc;
    if (src.user_id != NULL)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "cart_not_anonymous",
                               "only an anonymous cart is merged into a signed-in one");
    rc = open_cart_of(req, req->principal->sub, &target_id);
    if (rc == 0 && target_id == NULL) {
        rc = insert_cart(req, req->principal->sub, NULL, src.currency, tid);
        target_id = tid;
    }
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT " CART_COLS " FROM carts WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(target_id) }, 1, &rows);
    if (rc < 0)
        return rc;
    cart_from_row(rows, 0, &tgt);
    tcur = tgt.currency;
    tcoupon = tgt.coupon_code;
    if (tcur != NULL && src.currency != NULL && strcmp(tcur, src.currency) != 0)
        return gr_resp_problem(req, resp, GR_EVALID, "currency_mismatch",
                               "the carts are in %s and %s", src.currency, tcur);
    rc = cart_items(req, src.id, &items, &n);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT COUNT(*) FROM cart_items WHERE cart_id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(tgt.id) }, 1, &rows);
    if (rc < 0)
        return rc;
    nlines = gr_db_int(rows, 0, 0);
    cart_now(now);
    for (size_t i = 0; i < n && rc == 0; i++) {
        long long changes = 0;
        char iid[GR_ID_LEN];

        /* min(99, a + b) in portable SQL: the CASE keeps the CHECK constraint satisfied. */
        rc = gr_db_exec(
            req->db,
            "UPDATE cart_items SET updated_at = $4, quantity = CASE WHEN quantity + $3"
            " > 99 THEN 99 ELSE quantity + $3 END WHERE cart_id = $1 AND variant_id = $2",
            (struct gr_db_val[]){ GR_DB_TEXT(tgt.id), GR_DB_TEXT(items[i].variant_id),
                                  GR_DB_INT(items[i].quantity), GR_DB_TEXT(now) },
            4, &changes);
        if (rc < 0 || changes > 0)
            continue;
        if (nlines >= CART_LINES_MAX)
            return gr_resp_problem(req, resp, GR_EVALID, "too_many_lines",
                                   "the merged cart would hold more than %d lines", CART_LINES_MAX);
        nlines++;
        gr_id_new(iid);
        /* The line moves with what events recorded on it. */
        rc = gr_db_exec(
            req->db,
            "INSERT INTO cart_items (id, cart_id, variant_id, quantity, unit_price_amount,"
            " unit_price_currency, created_at, updated_at, product_id, sku, price_version,"
            " new_price_amount, new_price_currency, unavailable_reason, out_of_stock)"
            " SELECT $1, $2, variant_id, quantity, unit_price_amount, unit_price_currency, $3, $3,"
            " product_id, sku, price_version, new_price_amount, new_price_currency,"
            " unavailable_reason, out_of_stock FROM cart_items WHERE id = $4",
            (struct gr_db_val[]){ GR_DB_TEXT(iid), GR_DB_TEXT(tgt.id), GR_DB_TEXT(now),
                                  GR_DB_TEXT(items[i].id) },
            4, NULL);
    }
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE carts SET currency = COALESCE(currency, CAST($2 AS TEXT)),"
                        " coupon_code = COALESCE(coupon_code, CAST($3 AS TEXT)) WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(tgt.id), GR_DB_TEXT(src.currency),
                                              GR_DB_TEXT(tcoupon ? tcoupon : src.coupon_code) },
                        3, NULL);
    if (rc == 0)
        rc = cart_touch(req, &tgt);
    if (rc == 0)
        rc = gr_db_exec(
            req->db,
            "UPDATE carts SET status = 'merged', merged_into = $2,"
            " version = version + 1, updated_at = $3 WHERE id = $1",
            (struct gr_db_val[]){ GR_DB_TEXT(src.id), GR_DB_TEXT(tgt.id), GR_DB_TEXT(now) }, 3,
            NULL);
    if (rc < 0)
        return rc;
    return reply_cart(req, resp, 200, tgt.id, NULL);
}
