/*
 * coupon_db.c - what the coupon and redemption handlers and the event consumers share: coupon
 * rows and their JSON, redemption JSON, and the two state changes of a redemption (the sweep
 * of expired reservations and confirm/release), each inside the caller's open transaction
 * with its event in the outbox. Everything allocated here belongs to the given arena.
 */
#include <stdio.h>
#include <string.h>

#include "discount.h"
#include "gr/id.h"
#include "gr/service.h"

static void decref(void *v)
{
    json_decref(v);
}

json_t *discount_own(struct gr_arena *a, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(a, decref, v);
    return v;
}

void discount_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

struct gr_json_rd discount_rd(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    return r;
}

char *discount_lower(struct gr_arena *a, const char *s)
{
    char *out = gr_arena_strdup(a, s);

    for (char *p = out; p != NULL && *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return out;
}

/* A JSON array of ids stored as text; an unreadable one reads as [] (never written). */
static json_t *ids_of(struct gr_arena *a, const char *text)
{
    json_t *v = NULL;

    if (text == NULL || gr_json_parse(a, text, strlen(text), &v, NULL) < 0 || !json_is_array(v))
        return discount_own(a, json_array());
    return v;
}

void coupon_from_row(struct gr_arena *a, const struct gr_db_rows *rows, size_t i, struct coupon *c)
{
    memset(c, 0, sizeof(*c));
    c->id = gr_db_text(rows, i, 0);
    c->code = gr_db_text(rows, i, 1);
    c->kind = gr_db_text(rows, i, 2);
    c->percent_off_bp = gr_db_int(rows, i, 3);
    c->amount_off = gr_db_int(rows, i, 4);
    c->currency = gr_db_text(rows, i, 5);
    c->max_redemptions = gr_db_int(rows, i, 6);
    c->per_customer_limit = gr_db_int(rows, i, 7);
    c->starts_at = gr_db_text(rows, i, 8);
    c->ends_at = gr_db_text(rows, i, 9);
    c->stackable = gr_db_int(rows, i, 10) != 0;
    c->product_ids = ids_of(a, gr_db_text(rows, i, 11));
    c->category_ids = ids_of(a, gr_db_text(rows, i, 12));
    c->redeemed_count = gr_db_int(rows, i, 13);
    c->version = gr_db_int(rows, i, 14);
    c->created_at = gr_db_text(rows, i, 15);
    c->updated_at = gr_db_text(rows, i, 16);
}

int coupon_fetch(struct gr_db_conn *db, struct gr_arena *a, const char *id, struct coupon *c)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(db, a, "SELECT " COUPON_COLS " FROM coupons WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    coupon_from_row(a, rows, 0, c);
    return 0;
}

int coupon_fetch_code(struct gr_db_conn *db, struct gr_arena *a, const char *code, struct coupon *c)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(db, a, "SELECT " COUPON_COLS " FROM coupons WHERE code_norm = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(discount_lower(a, code)) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    coupon_from_row(a, rows, 0, c);
    return 0;
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *int_or_null(long long v)
{
    return v != 0 ? json_integer(v) : json_null();
}

json_t *coupon_json(struct gr_arena *a, const struct coupon *c)
{
    json_t *amount = json_null();

    if (c->amount_off > 0 && c->currency != NULL) {
        struct gr_money m = { .amount = c->amount_off };
        snprintf(m.currency, sizeof(m.currency), "%s", c->currency);
        json_decref(amount);
        amount = gr_money_to_json(&m);
    }
    return discount_own(
        a, json_pack(
               "{s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:{s:O,s:O},s:I,s:I,s:s,s:s}", "id", c->id,
               "code", c->code, "kind", c->kind, "percent_off_bp", int_or_null(c->percent_off_bp),
               "amount_off", amount, "max_redemptions", int_or_null(c->max_redemptions),
               "per_customer_limit", int_or_null(c->per_customer_limit), "starts_at",
               str_or_null(c->starts_at), "ends_at", str_or_null(c->ends_at), "stackable",
               c->stackable, "applies_to", "product_ids", c->product_ids, "category_ids",
               c->category_ids, "redeemed_count", (json_int_t)c->redeemed_count, "version",
               (json_int_t)c->version, "created_at", c->created_at, "updated_at", c->updated_at));
}

json_t *redemption_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i)
{
    struct gr_money m = { .amount = gr_db_int(rows, i, 7) };

    snprintf(m.currency, sizeof(m.currency), "%s", gr_db_text(rows, i, 8));
    return discount_own(
        a,
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:I,s:s,s:s}", "id", gr_db_text(rows, i, 0),
                  "coupon_id", gr_db_text(rows, i, 1), "code", gr_db_text(rows, i, 2), "user_id",
                  gr_db_text(rows, i, 3), "order_id", gr_db_text(rows, i, 4), "status",
                  gr_db_text(rows, i, 5), "release_reason", str_or_null(gr_db_text(rows, i, 6)),
                  "discount", gr_money_to_json(&m), "expires_at", gr_db_text(rows, i, 9), "version",
                  (json_int_t)gr_db_int(rows, i, 10), "created_at", gr_db_text(rows, i, 11),
                  "updated_at", gr_db_text(rows, i, 12)));
}

/* Reads redemption @id (with its coupon's code) into *@rows; GR_ENOTFOUND when absent. */
static int fetch_redemption(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                            struct gr_db_rows **rows)
{
    int rc = gr_db_query(db, a,
                         "SELECT " REDEMPTION_COLS " FROM redemptions r"
                         " JOIN coupons c ON c.id = r.coupon_id WHERE r.id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, rows);
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

/* Emits @type with the redemption @id's JSON as data. */
static int emit_redemption(struct gr_db_conn *db, struct gr_arena *a, const char *type,
                           const char *id, const char *traceparent, json_t **out)
{
    struct gr_db_rows *rows = NULL;
    struct gr_str dump;
    json_t *j;
    int rc = fetch_redemption(db, a, id, &rows);

    if (rc < 0)
        return rc;
    j = redemption_json(a, rows, 0);
    if (gr_json_dump(a, j, &dump) < 0)
        return GR_EINTERNAL;
    if (out != NULL)
        *out = j;
    return gr_bus_emit(db, DISCOUNT_SOURCE, type, id, dump.ptr, traceparent, NULL);
}

int redemptions_sweep(struct gr_db_conn *db, struct gr_arena *a, const char *coupon_id,
                      const char *now, const char *traceparent)
{
    struct gr_db_rows *rows = NULL;
    size_t n;
    int rc;

    rc = gr_db_query(db, a,
                     "UPDATE redemptions SET status = 'released', release_reason = 'expired',"
                     " version = version + 1, updated_at = $2"
                     " WHERE coupon_id = $1 AND status = 'reserved' AND expires_at <= $2"
                     " RETURNING id",
                     (struct gr_db_val[]){ GR_DB_TEXT(coupon_id), GR_DB_TEXT(now) }, 2, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    if (n == 0)
        return 0;
    rc =
        gr_db_exec(db, "UPDATE coupons SET redeemed_count = redeemed_count - $2 WHERE id = $1",
                   (struct gr_db_val[]){ GR_DB_TEXT(coupon_id), GR_DB_INT((long long)n) }, 2, NULL);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = emit_redemption(db, a, "coupon.released", gr_db_text(rows, i, 0), traceparent, NULL);
    return rc;
}

int redemption_move(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *to,
                    const char *reason, const char *traceparent, json_t **out, const char **slug)
{
    struct gr_db_rows *rows = NULL;
    const char *status, *coupon_id;
    char now[GR_TIME_STR_LEN];
    bool expired;
    int rc;

    *slug = NULL;
    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = fetch_redemption(db, a, id, &rows);
    if (rc < 0)
        return rc;
    discount_now(now);
    status = gr_db_text(rows, 0, 5);
    coupon_id = gr_db_text(rows, 0, 1);
    expired = strcmp(status, "reserved") == 0 && strcmp(gr_db_text(rows, 0, 9), now) <= 0;
    if (strcmp(status, to) == 0) { /* confirm a confirmed one, release a released one */
        if (out != NULL)
            *out = redemption_json(a, rows, 0);
        return 0;
    }
    if (strcmp(to, "confirmed") == 0) {
        if (strcmp(status, "released") == 0) {
            *slug = "redemption_released";
            return GR_ECONFLICT;
        }
        if (expired) {
            *slug = "reservation_expired";
            return GR_ECONFLICT;
        }
        rc = gr_db_exec(db,
                        "UPDATE redemptions SET status = 'confirmed', version = version + 1,"
                        " updated_at = $2 WHERE id = $1 AND status = 'reserved'",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, NULL);
        if (rc == 0)
            rc = emit_redemption(db, a, "coupon.redeemed", id, traceparent, out);
        return rc;
    }
    /* release: a reservation or a confirmed redemption gives its slot back */
    rc =
        gr_db_exec(db,
                   "UPDATE redemptions SET status = 'released', release_reason = $3,"
                   " version = version + 1, updated_at = $2 WHERE id = $1 AND status <> 'released'",
                   (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now),
                                         GR_DB_TEXT(expired ? "expired" : reason) },
                   3, NULL);
    if (rc == 0)
        rc = gr_db_exec(db, "UPDATE coupons SET redeemed_count = redeemed_count - 1 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(coupon_id) }, 1, NULL);
    if (rc == 0)
        rc = emit_redemption(db, a, "coupon.released", id, traceparent, out);
    return rc;
}
