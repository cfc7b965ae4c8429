/*
 * events.c - the events cart-service consumes (SERVICES §19 Events). Each handler runs in the
 * consumer's transaction, which also records the event in the inbox, so a redelivered event
 * changes nothing (gr/bus.h); every write below is also conditional on the line not already
 * being in the state the event asks for, so the same fact arriving under two event ids is one
 * change, and a cart's version grows by one per event that really changed one of its lines.
 *
 * Only open carts (active or abandoned) are touched: checked out and merged carts are
 * read-only history. The event does not count as the shopper's activity (last_activity_at and
 * the abandoned status stay as they are).
 *
 *  - product.price_changed (17; data: the variant with `old_price`, subject the product):
 *    lines of the variant keep their snapshot (the price they were added at) and record the
 *    new price, so GET cart shows price_changed with old and new amounts, like totals do from
 *    a live repricing. A price back at the snapshot clears the mark. Events whose variant
 *    version is not above the line's are older than what the line holds and are skipped.
 *  - product.deleted (17; data: the product with its variants): its lines become unavailable
 *    (reason product_deleted): shown in GET cart and totals, refused by checkout (422
 *    variant_unavailable) until removed.
 *  - inventory.out_of_stock (18; data {sku, available, threshold}): lines of the sku are
 *    flagged out_of_stock; inventory.stock_changed with stock available clears the flag.
 *    Checkout does not refuse on it: 18 decides at the reservation.
 *  - user.deleted (06, erasure): the user's carts, their lines and the anonymous carts merged
 *    into them are deleted; a second erasure finds nothing.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cart.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"

#define OPEN_CART "(SELECT id FROM carts WHERE status IN ('active', 'abandoned'))"

/* The event's data as a JSON object (arena), or NULL. */
static json_t *data_of(struct gr_arena *a, const struct gr_event *ev)
{
    json_t *d = NULL;

    if (ev->data == NULL || gr_json_parse(a, ev->data, ev->data_len, &d, NULL) < 0 ||
        !json_is_object(d))
        return NULL;
    return d;
}

/* data.@key when it is a canonical UUID, else NULL. */
static const char *uuid_field(json_t *d, const char *key)
{
    json_t *v = json_object_get(d, key);

    if (json_is_string(v) && gr_id_valid(json_string_value(v), json_string_length(v)))
        return json_string_value(v);
    return NULL;
}

/* The carts whose lines one event changed: each has its version raised once, at the end. */
struct touched {
    struct gr_arena *a;
    const char **ids; /* arena; duplicates until touched_bump */
    size_t n, cap;
    char now[32];
};

static void touched_init(struct touched *t, struct gr_arena *a)
{
    memset(t, 0, sizeof(*t));
    t->a = a;
    cart_now(t->now);
}

static void touched_add(struct touched *t, const char *id)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        const char **ids = gr_arena_alloc(t->a, cap * sizeof(*ids));

        if (t->n > 0)
            memcpy(ids, t->ids, t->n * sizeof(*ids));
        t->ids = ids;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
}

static int cmp_id(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* One new version (and updated_at) for each distinct touched cart. */
static int touched_bump(struct gr_db_conn *db, struct touched *t)
{
    int rc;

    if (t->n > 1)
        qsort(t->ids, t->n, sizeof(*t->ids), cmp_id);
    for (size_t i = 0; i < t->n; i++) {
        if (i > 0 && strcmp(t->ids[i], t->ids[i - 1]) == 0)
            continue;
        rc = gr_db_exec(db, "UPDATE carts SET version = version + 1, updated_at = $2 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(t->ids[i]), GR_DB_TEXT(t->now) }, 2, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Runs @sql (a conditional UPDATE of the line $1 with updated_at $2, and @extra parameters
 * after them) on every line of @rows (columns: line id, cart id); the cart of each line it
 * changed is added to @t.
 */
static int update_lines(struct gr_db_conn *db, const struct gr_db_rows *rows, const char *sql,
                        const struct gr_db_val *extra, size_t nextra, struct touched *t)
{
    struct gr_db_val params[8];
    int rc;

    if (nextra + 2 > sizeof(params) / sizeof(params[0]))
        return GR_EINTERNAL;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        long long n = 0;

        params[0] = GR_DB_TEXT(gr_db_text(rows, i, 0));
        params[1] = GR_DB_TEXT(t->now);
        for (size_t k = 0; k < nextra; k++)
            params[k + 2] = extra[k];
        rc = gr_db_exec(db, sql, params, nextra + 2, &n);
        if (rc < 0)
            return rc;
        if (n > 0)
            touched_add(t, gr_db_text(rows, i, 1));
    }
    return 0;
}

/* ---- product.price_changed --------------------------------------------------------------- */

static int on_price_changed(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                            void *app)
{
    json_t *d = data_of(a, ev), *price, *ver;
    const char *vid = uuid_field(d, "id"), *cur;
    struct gr_db_rows *rows = NULL;
    json_int_t amount;
    struct touched t;
    int rc;

    (void)app;
    touched_init(&t, a);
    price = json_object_get(d, "price");
    cur = json_string_value(json_object_get(price, "currency"));
    ver = json_object_get(d, "version");
    if (vid == NULL || cur == NULL || !gr_money_currency_valid(cur) ||
        !json_is_integer(json_object_get(price, "amount")) || !json_is_integer(ver)) {
        gr_log_warn("product.price_changed without a variant, price or version, ignored",
                    "event_id", ev->id);
        return 0;
    }
    amount = json_integer_value(json_object_get(price, "amount"));
    if (amount < 0 || amount > 99999999) {
        gr_log_warn("product.price_changed with an amount out of range, ignored", "event_id",
                    ev->id);
        return 0;
    }
    rc = gr_db_query(db, a,
                     "SELECT id, cart_id FROM cart_items WHERE variant_id = $1"
                     " AND cart_id IN " OPEN_CART,
                     (struct gr_db_val[]){ GR_DB_TEXT(vid) }, 1, &rows);
    if (rc < 0)
        return rc;
    /* The new price is kept unless it equals the snapshot (then the mark goes); the version is
     * recorded either way, and an event not newer than the line's is skipped. */
    rc = update_lines(
        db, rows,
        "UPDATE cart_items SET updated_at = $2, price_version = $3,"
        " new_price_amount = CASE WHEN unit_price_amount = $4 AND unit_price_currency = $5"
        " THEN NULL ELSE CAST($4 AS BIGINT) END,"
        " new_price_currency = CASE WHEN unit_price_amount = $4 AND unit_price_currency = $5"
        " THEN NULL ELSE CAST($5 AS TEXT) END"
        " WHERE id = $1 AND (price_version IS NULL OR price_version < $3)",
        (struct gr_db_val[]){ GR_DB_INT(json_integer_value(ver)), GR_DB_INT(amount),
                              GR_DB_TEXT(cur) },
        3, &t);
    if (rc == 0)
        rc = touched_bump(db, &t);
    if (rc == 0 && t.n > 0)
        gr_log_info("price change recorded on cart lines", "event_id", ev->id, "variant_id", vid);
    return rc;
}

/* ---- product.deleted --------------------------------------------------------------------- */

static int on_product_deleted(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                              void *app)
{
    static const char *const sql =
        "UPDATE cart_items SET updated_at = $2, unavailable_reason = 'product_deleted'"
        " WHERE id = $1 AND unavailable_reason IS NULL";
    json_t *d = data_of(a, ev), *variants, *v;
    const char *pid = uuid_field(d, "id");
    struct gr_db_rows *rows = NULL;
    struct touched t;
    size_t i;
    int rc;

    (void)app;
    touched_init(&t, a);
    if (pid == NULL && ev->subject != NULL && gr_id_valid(ev->subject, strlen(ev->subject)))
        pid = ev->subject;
    if (pid == NULL) {
        gr_log_warn("product.deleted without a product id, ignored", "event_id", ev->id);
        return 0;
    }
    rc = gr_db_query(db, a,
                     "SELECT id, cart_id FROM cart_items WHERE product_id = $1"
                     " AND cart_id IN " OPEN_CART,
                     (struct gr_db_val[]){ GR_DB_TEXT(pid) }, 1, &rows);
    if (rc == 0)
        rc = update_lines(db, rows, sql, NULL, 0, &t);
    if (rc < 0)
        return rc;
    /* Lines written before product_id was kept are found by the variant ids of the data. */
    variants = json_object_get(d, "variants");
    json_array_foreach(variants, i, v)
    {
        const char *vid = uuid_field(v, "id");

        if (vid == NULL)
            continue;
        rc = gr_db_query(db, a,
                         "SELECT id, cart_id FROM cart_items WHERE variant_id = $1"
                         " AND cart_id IN " OPEN_CART,
                         (struct gr_db_val[]){ GR_DB_TEXT(vid) }, 1, &rows);
        if (rc == 0)
            rc = update_lines(db, rows, sql, NULL, 0, &t);
        if (rc < 0)
            return rc;
    }
    rc = touched_bump(db, &t);
    if (rc == 0 && t.n > 0)
        gr_log_info("deleted product's cart lines flagged", "event_id", ev->id, "product_id", pid);
    return rc;
}

/* ---- inventory.out_of_stock / inventory.stock_changed ------------------------------------- */

/* The sku of an inventory event: data.sku, else the subject; NULL when absent or too long. */
static const char *sku_of(json_t *d, const struct gr_event *ev)
{
    const char *sku = json_string_value(json_object_get(d, "sku"));

    if (sku == NULL)
        sku = ev->subject;
    if (sku == NULL || sku[0] == '\0' || strlen(sku) > CART_SKU_MAX)
        return NULL;
    return sku;
}

/* Sets the out_of_stock flag of the sku's open lines to @flag (0 or 1); *@changed lines. */
static int set_out_of_stock(struct gr_db_conn *db, struct gr_arena *a, const char *sku, int flag,
                            size_t *changed)
{
    struct gr_db_rows *rows = NULL;
    struct touched t;
    int rc;

    touched_init(&t, a);
    rc = gr_db_query(db, a,
                     "SELECT id, cart_id FROM cart_items WHERE sku = $1 AND out_of_stock <> $2"
                     " AND cart_id IN " OPEN_CART,
                     (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_INT(flag) }, 2, &rows);
    if (rc == 0)
        rc = update_lines(db, rows,
                          "UPDATE cart_items SET updated_at = $2, out_of_stock = $3"
                          " WHERE id = $1 AND out_of_stock <> $3",
                          (struct gr_db_val[]){ GR_DB_INT(flag) }, 1, &t);
    if (rc == 0)
        rc = touched_bump(db, &t);
    *changed = t.n;
    return rc;
}

static int on_out_of_stock(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    json_t *d = data_of(a, ev);
    const char *sku = sku_of(d, ev);
    size_t changed = 0;
    int rc;

    (void)app;
    if (sku == NULL) {
        gr_log_warn("inventory.out_of_stock without a sku, ignored", "event_id", ev->id);
        return 0;
    }
    rc = set_out_of_stock(db, a, sku, 1, &changed);
    if (rc == 0 && changed > 0)
        gr_log_info("cart lines flagged out of stock", "event_id", ev->id, "sku", sku);
    return rc;
}

/* A level with stock available (available > 0 in a warehouse) means the sku is back. */
static int on_stock_changed(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                            void *app)
{
    json_t *d = data_of(a, ev);
    json_t *avail = json_object_get(d, "available");
    const char *sku = sku_of(d, ev);
    size_t changed = 0;

    (void)app;
    if (sku == NULL || !json_is_integer(avail) || json_integer_value(avail) <= 0)
        return 0;
    return set_out_of_stock(db, a, sku, 0, &changed);
}

/* ---- user.deleted ------------------------------------------------------------------------ */

static int on_user_deleted(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    /* Children first: the lines, then the anonymous carts merged into the user's (they
     * reference them through merged_into), then the user's carts. */
    static const char *const sql[] = {
        "DELETE FROM cart_items WHERE cart_id IN (SELECT id FROM carts WHERE user_id = $1"
        " OR merged_into IN (SELECT id FROM carts WHERE user_id = $1))",
        "DELETE FROM carts WHERE user_id IS NULL"
        " AND merged_into IN (SELECT id FROM carts WHERE user_id = $1)",
        "DELETE FROM carts WHERE user_id = $1",
    };
    json_t *d = data_of(a, ev);
    const char *uid = NULL;
    long long carts = 0;
    int rc = 0;

    (void)app;
    if (ev->subject != NULL && gr_id_valid(ev->subject, strlen(ev->subject)))
        uid = ev->subject;
    if (uid == NULL)
        uid = uuid_field(d, "user_id");
    if (uid == NULL)
        uid = uuid_field(d, "id");
    if (uid == NULL) {
        gr_log_warn("user.deleted without a user id, ignored", "event_id", ev->id);
        return 0;
    }
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]) && rc == 0; i++)
        rc = gr_db_exec(db, sql[i], (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1,
                        i == 2 ? &carts : NULL);
    if (rc == 0 && carts > 0)
        gr_log_info("erased the carts of a deleted user", "event_id", ev->id, "user_id", uid);
    return rc;
}

const struct gr_sub cart_subs[CART_NSUBS] = {
    { "product.price_changed", on_price_changed }, { "product.deleted", on_product_deleted },
    { "inventory.out_of_stock", on_out_of_stock }, { "inventory.stock_changed", on_stock_changed },
    { "user.deleted", on_user_deleted },
};
