/*
 * checkout.c - POST /api/v1/carts/{id}/checkout [IK!] (SERVICES §19): turns a signed-in cart
 * into an order at 16-order-service, once.
 *
 * Steps: validate the body; load the cart (the caller's own, active, with lines); reprice
 * every line at 17 (an archived or unknown variant is 422 variant_unavailable, nothing sent
 * to 16); create the order at 16 with the caller's token and the Idempotency-Key
 * `cart:{id}:checkout:v{version}` derived from the cart (section 0: internal callers derive
 * keys from ids), so a retry, a crash between 16's answer and our commit, or two racing
 * checkouts of the same cart state all get the same order; then, in one transaction, mark the
 * cart checked_out with the order id and publish cart.checked_out. The client's own
 * Idempotency-Key replays the stored 201 (the core's gr idempotency); afterwards every write
 * to the cart is 409 cart_checked_out. The order's prices are 16's own (it prices from 17
 * itself, §16 step 1): the cart sends variant ids and quantities only.
 */
#include <stdio.h>
#include <string.h>

#include "cart.h"
#include "gr/auth.h"
#include "gr/bus.h"
#include "gr/json.h"
#include "gr/service.h"

#define ID_FIELD_MAX 64

struct done_arg {
    struct gr_resp *resp;
    const char *cart_id;
    const char *order_id;
};

/* Marks the cart checked out with its order, inside its own transaction. */
static int done_tx(struct gr_req *req, void *p)
{
    struct done_arg *a = p;
    struct gr_db_rows *rows = NULL;
    struct cart c;
    json_t *snap = NULL;
    struct gr_str data;
    char now[32];
    int rc;

    rc = gr_db_query(req->db, req->arena, "SELECT " CART_COLS " FROM carts WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(a->cart_id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    cart_from_row(rows, 0, &c);
    if (strcmp(c.status, "checked_out") == 0)
        return c.order_id != NULL && strcmp(c.order_id, a->order_id) == 0
                   ? 0 /* a racing checkout of the same state committed first */
                   : gr_resp_problem(req, a->resp, GR_ECONFLICT, "cart_checked_out",
                                     "the cart was checked out already");
    if (strcmp(c.status, "merged") == 0)
        return gr_resp_problem(req, a->resp, GR_ECONFLICT, "cart_merged",
                               "the cart was merged into another");
    cart_now(now);
    rc = gr_db_exec(
        req->db,
        "UPDATE carts SET status = 'checked_out', order_id = $2, version = version + 1,"
        " updated_at = $3, abandoned_at = NULL WHERE id = $1",
        (struct gr_db_val[]){ GR_DB_TEXT(c.id), GR_DB_TEXT(a->order_id), GR_DB_TEXT(now) }, 3,
        NULL);
    if (rc == 0)
        rc = cart_render(req, c.id, NULL, &snap);
    if (rc < 0)
        return rc;
    rc = gr_json_dump(req->arena, snap, &data);
    json_decref(snap);
    if (rc < 0)
        return rc;
    return gr_req_emit(req, "cart.checked_out", c.id, data.ptr);
}

/* Reads and checks the checkout body into @order (the fields 16 takes from the client). */
static int read_body(struct gr_req *req, struct gr_resp *resp, json_t *order)
{
    static const char *const keys[] = { "shipping_address", "shipping_rate_id", "payment_method_id",
                                        NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    json_t *addr = NULL;
    const char *rate = NULL, *pm = NULL;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_obj(&r, req->json, "", "shipping_address", GR_JSON_REQUIRED, &addr, NULL);
    (void)gr_json_str(&r, req->json, "", "shipping_rate_id", GR_JSON_NULLABLE, 1, ID_FIELD_MAX,
                      &rate, NULL);
    (void)gr_json_str(&r, req->json, "", "payment_method_id", GR_JSON_REQUIRED, 1, ID_FIELD_MAX,
                      &pm, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    /* The address is 16's to validate (§16); it is passed on as it came. */
    json_object_set(order, "shipping_address", addr);
    if (rate != NULL)
        json_object_set_new(order, "shipping_rate_id", json_string(rate));
    json_object_set_new(order, "payment_method_id", json_string(pm));
    return 0;
}

/*
 * The order at 16 for cart @c with @n lines (@items), into *@order_id and *@order (arena).
 * Problems: 503 order_service_unavailable when 16 cannot be reached or fails; 16's refusal
 * (4xx) comes back as 422 order_rejected naming 16's problem type.
 */
static int create_order(struct gr_req *req, struct gr_resp *resp, const struct cart *c,
                        const struct cart_item *items, size_t n, json_t *order,
                        const char **order_id, json_t **order_out)
{
    struct cart_upstream u;
    json_t *lines = json_array();
    const char *id, *type;
    int rc;

    for (size_t i = 0; i < n; i++)
        json_array_append_new(lines, json_pack("{s:s,s:I}", "variant_id", items[i].variant_id,
                                               "quantity", (json_int_t)items[i].quantity));
    json_object_set_new(order, "items", lines);
    json_object_set_new(order, "currency", json_string(c->currency));
    if (c->coupon_code != NULL)
        json_object_set_new(order, "coupon_code", json_string(c->coupon_code));
    rc = cart_order_create(
        req, order, gr_arena_printf(req->arena, "cart:%s:checkout:v%lld", c->id, c->version), &u);
    if (rc < 0 || u.status >= 500 || u.status == 0)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "order_service_unavailable",
                               "the order cannot be created now; the cart is unchanged");
    if (u.status == 401)
        return gr_resp_problem(req, resp, GR_EUNAUTH, NULL, "the order service refused the token");
    if (u.status == 409)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "checkout_in_flight",
                               "a checkout of this cart is in progress; retry");
    id = json_string_value(json_object_get(u.json, "id"));
    if (u.status < 200 || u.status >= 300 || id == NULL) {
        type = json_string_value(json_object_get(u.json, "type"));
        return gr_resp_problem(req, resp, GR_EVALID, "order_rejected",
                               "the order service refused the order (%ld %s)", u.status,
                               type != NULL ? type : "no problem type");
    }
    *order_id = id;
    *order_out = u.json;
    return 0;
}

int carts_checkout(struct gr_req *req, struct gr_resp *resp)
{
    struct cart_item *items = NULL;
    struct cart_price *prices;
    const char **ids, *order_id = NULL;
    struct done_arg done = { .resp = resp };
    json_t *order = json_object(), *order_resp = NULL, *body = NULL;
    struct cart c;
    size_t n = 0;
    int rc;

    rc = read_body(req, resp, order);
    if (rc == 0)
        rc = cart_load(req, resp, gr_req_param(req, "id"), CART_WRITE, &c);
    if (rc == 0 && c.user_id == NULL)
        rc = gr_resp_problem(req, resp, GR_ECONFLICT, "cart_anonymous",
                             "sign in and merge the cart before checkout");
    if (rc == 0)
        rc = cart_items(req, c.id, &items, &n);
    if (rc == 0 && n == 0)
        rc = gr_resp_problem(req, resp, GR_EVALID, "cart_empty", "the cart has no lines");
    if (rc < 0)
        goto out;
    /* Lines product.deleted flagged are refused like archived ones, without asking 17. */
    for (size_t i = 0; i < n; i++)
        if (items[i].unavailable != NULL)
            gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "/items/%zu/variant_id", i),
                                "variant %s is not for sale (%s)", items[i].variant_id,
                                items[i].unavailable);
    if (resp->errs.n > 0) {
        rc = gr_resp_problem(req, resp, GR_EVALID, "variant_unavailable",
                             "remove the lines that are not for sale");
        goto out;
    }
    ids = gr_arena_calloc(req->arena, (n + 1) * sizeof(*ids));
    prices = gr_arena_calloc(req->arena, (n + 1) * sizeof(*prices));
    for (size_t i = 0; i < n; i++)
        ids[i] = items[i].variant_id;
    rc = cart_price_variants(req, ids, n, prices);
    if (rc < 0) {
        rc = gr_resp_problem(req, resp, GR_EUNAVAIL, "product_service_unavailable",
                             "prices cannot be read now");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!prices[i].available || strcmp(prices[i].price.currency, c.currency) != 0)
            gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "/items/%zu/variant_id", i),
                                "variant %s is not for sale", items[i].variant_id);
    if (resp->errs.n > 0) {
        rc = gr_resp_problem(req, resp, GR_EVALID, "variant_unavailable",
                             "remove the lines that are not for sale");
        goto out;
    }
    rc = create_order(req, resp, &c, items, n, order, &order_id, &order_resp);
    if (rc < 0)
        goto out;
    done.cart_id = c.id;
    done.order_id = order_id;
    rc = gr_req_tx(req, done_tx, &done);
    if (rc == 0)
        rc = cart_render(req, c.id, NULL, &body);
    if (rc < 0)
        goto out;
    json_object_set(body, "order", order_resp);
    gr_resp_json(resp, 201, body);
out:
    json_decref(order);
    return rc;
}
