/*
 * redemptions.c - POST /coupon-redemptions reserves a coupon for an order; confirm and release
 * move the reservation on (order-service calls them, or the order.confirmed / order.cancelled
 * events do, events.c).
 *
 * A reservation takes one slot of the coupon with a conditional UPDATE of coupons.
 * redeemed_count (reserved + confirmed) guarded by max_redemptions, in the same transaction as
 * the redemption row: never a read-then-write, so 100 parallel reservations of a coupon with
 * 10 slots give exactly 10 reservations on SQLite (one writer at a time) and on PostgreSQL
 * (SERIALIZABLE: a concurrent update of the row aborts with a serialization failure and the
 * attempt is run again on a fresh snapshot, where the counter is up to date). Because 100
 * requests contend for one row, the handler runs its own transaction with more attempts than
 * the core's GR_R_TX retry (REDEEM_ATTEMPTS). Reservations whose time ran out are released in
 * the same transaction first (redemptions_sweep), so they free their slots.
 */
#include <string.h>
#include <unistd.h>

#include "discount.h"
#include "gr/auth.h"
#include "gr/id.h"
#include "gr/service.h"

#define REDEEM_ATTEMPTS  40    /* transaction attempts under contention */
#define REDEEM_PAUSE_MAX 20000 /* microseconds: the longest pause window between attempts */

struct reserve_in {
    const char *code, *order_id, *user_id;
    struct dc_cart cart;
};

/* One attempt of the reservation, in the open transaction; its redemption JSON in *@out. */
static int reserve(struct gr_req *req, struct gr_resp *resp, const struct reserve_in *in,
                   json_t **out)
{
    const struct discount_app *app = req->app;
    const char *tp = gr_req_header(req, "traceparent");
    struct gr_db_rows *rows = NULL;
    struct dc_cart cart = in->cart; /* dc_apply writes the lines */
    struct coupon c;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN], exp[GR_TIME_STR_LEN];
    long long lines = 0, ship = 0;
    int rc;

    rc = coupon_fetch_code(req->db, req->arena, in->code, &c);
    if (rc == GR_ENOTFOUND) {
        gr_resp_field_error(req, resp, "/code", "no such coupon");
        return gr_resp_problem(req, resp, GR_EVALID, "coupon_not_found",
                               "no coupon has the code '%s'", in->code);
    }
    if (rc < 0)
        return rc;
    discount_now(now);
    rc = redemptions_sweep(req->db, req->arena, c.id, now, tp);
    if (rc < 0)
        return rc;
    c.max_redemptions = 0; /* the conditional UPDATE below decides about slots */
    rc = dc_check_usable(req, resp, &c, &cart, in->user_id, "/code", now);
    if (rc < 0)
        return rc;
    dc_apply(&c, cart.lines, cart.nlines, cart.shipping, &lines, &ship);
    rc = gr_db_query(req->db, req->arena,
                     "UPDATE coupons SET redeemed_count = redeemed_count + 1"
                     " WHERE id = $1 AND (max_redemptions IS NULL"
                     " OR redeemed_count < max_redemptions)"
                     " RETURNING redeemed_count, max_redemptions",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "coupon_exhausted",
                               "coupon '%s' has no redemptions left", c.code);
    gr_id_new(id);
    gr_time_format(gr_time_now_ms() + app->reservation_ttl_s * 1000, exp);
    rc = gr_db_exec(req->db,
                    "INSERT INTO redemptions (id, coupon_id, user_id, order_id, status, discount,"
                    " currency, expires_at, version, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, 'reserved', $5, $6, $7, 1, $8, $8)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(c.id), GR_DB_TEXT(in->user_id),
                                          GR_DB_TEXT(in->order_id), GR_DB_INT(lines + ship),
                                          GR_DB_TEXT(cart.currency), GR_DB_TEXT(exp),
                                          GR_DB_TEXT(now) },
                    8, NULL);
    if (rc == GR_ECONFLICT) {
        gr_resp_field_error(req, resp, "/order_id", "already has this coupon");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "already_redeemed",
                               "order %s already has a redemption of coupon '%s'", in->order_id,
                               c.code);
    }
    if (rc < 0)
        return rc;
    if (!gr_db_isnull(rows, 0, 1) && gr_db_int(rows, 0, 0) >= gr_db_int(rows, 0, 1)) {
        /* The last slot is taken: coupon.exhausted with the coupon as data. */
        struct gr_str dump;
        rc = coupon_fetch(req->db, req->arena, c.id, &c);
        if (rc < 0)
            return rc;
        if (gr_json_dump(req->arena, coupon_json(req->arena, &c), &dump) < 0)
            return GR_EINTERNAL;
        rc = gr_bus_emit(req->db, DISCOUNT_SOURCE, "coupon.exhausted", c.id, dump.ptr, tp, NULL);
        if (rc < 0)
            return rc;
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " REDEMPTION_COLS " FROM redemptions r"
                     " JOIN coupons c ON c.id = r.coupon_id WHERE r.id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    *out = redemption_json(req->arena, rows, 0);
    return 0;
}

/* The pause before attempt @attempt + 1: a growing window, half of it jitter. */
static void pause_before_retry(int attempt)
{
    unsigned window = 1000u << (attempt < 5 ? attempt : 5);
    unsigned jitter;

    if (window > REDEEM_PAUSE_MAX)
        window = REDEEM_PAUSE_MAX;
    jitter = (unsigned)((uint64_t)gr_time_mono_ns() / 1000 % (window / 2));
    usleep((useconds_t)(window / 2 + jitter));
}

int redemptions_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "code",  "order_id", "user_id", "currency",
                                        "lines", "shipping", NULL };
    struct gr_json_rd r = discount_rd(req, resp);
    struct reserve_in *in = gr_arena_calloc(req->arena, sizeof(*in));
    json_t *out = NULL;
    int rc = GR_EBUSY;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "code", GR_JSON_REQUIRED, 1, DISCOUNT_CODE_MAX, &in->code,
                      NULL);
    (void)gr_json_str(&r, req->json, "", "order_id", GR_JSON_REQUIRED, 36, 36, &in->order_id, NULL);
    if (in->order_id != NULL && !gr_id_valid(in->order_id, strlen(in->order_id)))
        gr_resp_field_error(req, resp, "/order_id", "must be a UUID");
    (void)gr_json_str(&r, req->json, "", "user_id", GR_JSON_REQUIRED, 36, 36, &in->user_id, NULL);
    if (in->user_id != NULL && !gr_id_valid(in->user_id, strlen(in->user_id)))
        gr_resp_field_error(req, resp, "/user_id", "must be a UUID");
    dc_read_cart(req, resp, req->json, &in->cart);
    if (resp->errs.n > 0)
        return GR_EVALID;
    for (int attempt = 1; rc == GR_EBUSY && attempt <= REDEEM_ATTEMPTS; attempt++) {
        if (attempt > 1)
            pause_before_retry(attempt - 1);
        rc = gr_req_begin(req);
        if (rc == 0)
            rc = reserve(req, resp, in, &out);
        if (rc == 0)
            rc = gr_db_commit(req->db);
        else
            (void)gr_db_rollback(req->db);
        if (rc == GR_EBUSY) {
            resp->errs.n = 0;
            resp->errs.dropped = 0;
            resp->type = NULL;
            resp->detail = NULL;
        }
    }
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location",
                   gr_arena_printf(req->arena, "/api/v1/coupon-redemptions/%s",
                                   json_string_value(json_object_get(out, "id"))));
    gr_resp_json(resp, 201, json_incref(out));
    return 0;
}

int redemptions_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " REDEMPTION_COLS " FROM redemptions r"
                     " JOIN coupons c ON c.id = r.coupon_id WHERE r.id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    gr_resp_json(resp, 200, json_incref(redemption_json(req->arena, rows, 0)));
    return 0;
}

static int move(struct gr_req *req, struct gr_resp *resp, const char *to)
{
    const char *slug = NULL;
    json_t *out = NULL;
    int rc = redemption_move(req->db, req->arena, gr_req_param(req, "id"), to, "released",
                             gr_req_header(req, "traceparent"), &out, &slug);

    if (rc == GR_ECONFLICT && slug != NULL)
        return gr_resp_problem(req, resp, rc, slug, "the redemption cannot be confirmed (%s)",
                               slug);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(out));
    return 0;
}

int redemptions_confirm(struct gr_req *req, struct gr_resp *resp)
{
    return move(req, resp, "confirmed");
}

int redemptions_release(struct gr_req *req, struct gr_resp *resp)
{
    return move(req, resp, "released");
}
