/*
 * order_db.c - the order store: the API shape of an order, the state machine and the one
 * place a status changes (order_transition: the row, one history row and one event, in the
 * caller's transaction).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "gr/id.h"
#include "gr/json.h"
#include "gr/time.h"
#include "order.h"

#define ORDER_COLS                                                                                 \
    "id, number, user_id, status, cancel_reason, cancel_requested, currency, subtotal,"            \
    " discount_total, shipping_total, tax_total, tax_inclusive, tax_rate_bp, tax_shipping,"        \
    " grand_total, coupon_code, coupon_redemption_id, shipping_address, shipping_rate_id,"         \
    " reservation_id, payment_id, payment_status, version, created_at, updated_at"
#define IT 25 /* order_render: the first line column, after ORDER_COLS */

void order_now(char out[32])
{
    gr_time_format(gr_time_now_ms(), out);
}

static json_t *money(long long amount, const char *cur)
{
    return json_pack("{s:I,s:s}", "amount", (json_int_t)amount, "currency", cur);
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

int order_render(struct gr_db_conn *db, struct gr_arena *a, const char *id, json_t **out)
{
    struct gr_db_rows *r = NULL;
    json_t *o, *items, *addr = NULL;
    const char *cur;
    int rc;

    *out = NULL;
    /* The order and its lines in one statement (one snapshot): a row per line, the line's
     * columns from IT on. */
    rc = gr_db_query(db, a,
                     "SELECT " ORDER_COLS ", i.variant_id, i.product_id, i.sku, i.unit_price,"
                     " i.quantity, i.line_total, i.discount, i.tax FROM orders"
                     " LEFT JOIN order_items i ON i.order_id = orders.id WHERE orders.id = $1"
                     " ORDER BY i.position",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) == 0)
        return GR_ENOTFOUND;
    cur = gr_db_text(r, 0, 6);
    items = json_array();
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        if (!gr_db_isnull(r, i, IT))
            json_array_append_new(
                items,
                json_pack("{s:s,s:o,s:s,s:I,s:o,s:o,s:o,s:o}", "variant_id", gr_db_text(r, i, IT),
                          "product_id", str_or_null(gr_db_text(r, i, IT + 1)), "sku",
                          gr_db_text(r, i, IT + 2), "quantity", (json_int_t)gr_db_int(r, i, IT + 4),
                          "unit_price", money(gr_db_int(r, i, IT + 3), cur), "line_total",
                          money(gr_db_int(r, i, IT + 5), cur), "discount",
                          money(gr_db_int(r, i, IT + 6), cur), "tax",
                          money(gr_db_int(r, i, IT + 7), cur)));
    if (gr_json_parse(a, gr_db_text(r, 0, 17), strlen(gr_db_text(r, 0, 17)), &addr, NULL) < 0)
        addr = NULL;
    o = json_object();
    json_object_set_new(o, "id", json_string(gr_db_text(r, 0, 0)));
    json_object_set_new(o, "number", json_string(gr_db_text(r, 0, 1)));
    json_object_set_new(o, "user_id", json_string(gr_db_text(r, 0, 2)));
    json_object_set_new(o, "status", json_string(gr_db_text(r, 0, 3)));
    json_object_set_new(o, "cancel_reason", str_or_null(gr_db_text(r, 0, 4)));
    json_object_set_new(o, "cancel_requested", json_boolean(gr_db_int(r, 0, 5) != 0));
    json_object_set_new(o, "currency", json_string(cur));
    json_object_set_new(o, "items", items);
    json_object_set_new(o, "subtotal", money(gr_db_int(r, 0, 7), cur));
    json_object_set_new(o, "discount_total", money(gr_db_int(r, 0, 8), cur));
    json_object_set_new(o, "shipping_total", money(gr_db_int(r, 0, 9), cur));
    json_object_set_new(o, "tax_total", money(gr_db_int(r, 0, 10), cur));
    json_object_set_new(o, "tax",
                        json_pack("{s:I,s:b,s:b}", "rate_bp", (json_int_t)gr_db_int(r, 0, 12),
                                  "inclusive", gr_db_int(r, 0, 11) != 0, "applies_to_shipping",
                                  gr_db_int(r, 0, 13) != 0));
    json_object_set_new(o, "grand_total", money(gr_db_int(r, 0, 14), cur));
    json_object_set_new(o, "coupon_code", str_or_null(gr_db_text(r, 0, 15)));
    json_object_set_new(o, "coupon_redemption_id", str_or_null(gr_db_text(r, 0, 16)));
    json_object_set(o, "shipping_address", addr != NULL ? addr : json_null());
    json_object_set_new(o, "shipping_rate_id", str_or_null(gr_db_text(r, 0, 18)));
    json_object_set_new(o, "reservation_id", str_or_null(gr_db_text(r, 0, 19)));
    json_object_set_new(o, "payment_id", str_or_null(gr_db_text(r, 0, 20)));
    json_object_set_new(o, "payment_status", str_or_null(gr_db_text(r, 0, 21)));
    json_object_set_new(o, "version", json_integer(gr_db_int(r, 0, 22)));
    json_object_set_new(o, "created_at", json_string(gr_db_text(r, 0, 23)));
    json_object_set_new(o, "updated_at", json_string(gr_db_text(r, 0, 24)));
    *out = o;
    return 0;
}

static const char *const statuses[] = { ST_PENDING, ST_CONFIRMED, ST_PROCESSING,
                                        ST_SHIPPED, ST_DELIVERED, ST_CANCELLED };

/* Position of @s in the forward chain PENDING..DELIVERED; -1 for CANCELLED or unknown. */
static int rank(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(statuses[i], s) == 0)
            return i;
    return -1;
}

bool order_status_valid(const char *s)
{
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        if (strcmp(statuses[i], s) == 0)
            return true;
    return false;
}

bool order_transition_ok(const char *from, const char *to)
{
    int f = rank(from), t = rank(to);

    if (strcmp(to, ST_CANCELLED) == 0)
        return strcmp(from, ST_PENDING) == 0 || strcmp(from, ST_CONFIRMED) == 0;
    /* Forward only, after the saga confirmed (a shipment event may skip PROCESSING). */
    return f >= 1 && t > f;
}

int order_transition(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *from,
                     const char *to, const char *reason, const char *actor, const char *traceparent)
{
    return order_transition_r(db, a, id, from, to, reason, actor, traceparent, NULL);
}

int order_transition_r(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *from,
                       const char *to, const char *reason, const char *actor,
                       const char *traceparent, json_t **rendered)
{
    struct gr_db_rows *r = NULL;
    char now[32], hid[GR_ID_LEN], type[32];
    struct gr_str data;
    json_t *o = NULL;
    int rc;

    if (rendered != NULL)
        *rendered = NULL;
    order_now(now);
    rc =
        gr_db_query(db, a,
                    "UPDATE orders SET status = $3, cancel_reason = $4, version = version + 1,"
                    " updated_at = $5 WHERE id = $1 AND status = $2 RETURNING version",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(from), GR_DB_TEXT(to),
                                          GR_DB_TEXT(strcmp(to, ST_CANCELLED) == 0 ? reason : NULL),
                                          GR_DB_TEXT(now) },
                    5, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ECONFLICT;
    gr_id_new(hid);
    rc = gr_db_exec(db,
                    "INSERT INTO order_status_history (id, order_id, from_status, to_status,"
                    " reason, actor, version, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    (struct gr_db_val[]){ GR_DB_TEXT(hid), GR_DB_TEXT(id), GR_DB_TEXT(from),
                                          GR_DB_TEXT(to), GR_DB_TEXT(reason), GR_DB_TEXT(actor),
                                          GR_DB_INT(gr_db_int(r, 0, 0)), GR_DB_TEXT(now) },
                    8, NULL);
    if (rc == 0)
        rc = order_render(db, a, id, &o);
    if (rc == 0)
        rc = gr_json_dump(a, o, &data);
    if (rc == 0 && rendered != NULL)
        *rendered = json_incref(o);
    json_decref(o);
    if (rc < 0)
        return rc;
    /* order.<status in lower case>: "CONFIRMED" → "order.confirmed" */
    snprintf(type, sizeof(type), "order.%s", to);
    for (size_t i = 6; type[i] != '\0'; i++)
        if (type[i] >= 'A' && type[i] <= 'Z')
            type[i] = (char)(type[i] - 'A' + 'a');
    return gr_bus_emit(db, ORDER_SOURCE, type, id, data.ptr, traceparent, NULL);
}

int order_tx(struct gr_db_conn *db, int (*fn)(struct gr_db_conn *db, void *arg), void *arg)
{
    int rc = GR_EBUSY;

    for (int attempt = 1; rc == GR_EBUSY && attempt <= 10; attempt++) {
        if (attempt > 1)
            usleep((useconds_t)(500 << (attempt < 8 ? attempt : 8)));
        rc = gr_db_begin_read_committed(db);
        if (rc == 0)
            rc = fn(db, arg);
        if (rc == 0)
            rc = gr_db_commit(db);
        else
            (void)gr_db_rollback(db);
    }
    return rc;
}
