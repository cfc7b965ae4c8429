/*
 * discount.h - the discount service's own declarations: the route table, the handlers of
 * coupons.c and redemptions.c, the coupon rows and their JSON (coupon_db.c), the discount
 * arithmetic (calc.c, pure functions) and the events it consumes (events.c).
 *
 * Every json_t these helpers hand out is owned by the request arena (its json_decref is
 * deferred on the arena), so callers never release one and pass json_incref(v) to
 * gr_resp_json(). Strings are arena memory or borrowed from a JSON document.
 */
#ifndef DISCOUNT_H
#define DISCOUNT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/json.h"
#include "gr/money.h"
#include "gr/router.h"
#include "gr/time.h"

#define DISCOUNT_SOURCE      "/gravity/discount-service"
#define DISCOUNT_CODE_MAX    64  /* characters of a code: [A-Za-z0-9_-] */
#define DISCOUNT_TARGETS_MAX 100 /* product_ids / category_ids of one coupon */
#define DISCOUNT_LINES_MAX   100 /* lines of a validate or reservation body */
#define DISCOUNT_CODES_MAX   5   /* codes of one validate body */
#define DISCOUNT_QTY_MAX     999 /* quantity of one line (as in 16) */
#define DISCOUNT_BP_MAX      10000
#define DISCOUNT_LIMIT_MAX   1000000000LL /* max_redemptions, per_customer_limit */
#define DISCOUNT_TTL_DEFAULT 1800         /* seconds a reservation holds its slot */

/* The service state (req->app): settings read once at start-up. */
struct discount_app {
    long long reservation_ttl_s; /* DISCOUNT_RESERVATION_TTL_S, 1..86400, default 1800 */
};

/* The route table (routes.c). */
#define DISCOUNT_NROUTES 11
extern const struct gr_route discount_routes[DISCOUNT_NROUTES];

/* Subscriptions (events.c). */
#define DISCOUNT_NSUBS 2
extern const struct gr_sub discount_subs[DISCOUNT_NSUBS];

/* ---- handlers ---------------------------------------------------------------------------- */

int coupons_list(struct gr_req *req, struct gr_resp *resp);
int coupons_create(struct gr_req *req, struct gr_resp *resp);
int coupons_get(struct gr_req *req, struct gr_resp *resp);
int coupons_patch(struct gr_req *req, struct gr_resp *resp);
int coupons_delete(struct gr_req *req, struct gr_resp *resp);
int coupons_validate(struct gr_req *req, struct gr_resp *resp);
int coupons_redemptions(struct gr_req *req, struct gr_resp *resp);

int redemptions_create(struct gr_req *req, struct gr_resp *resp);
int redemptions_get(struct gr_req *req, struct gr_resp *resp);
int redemptions_confirm(struct gr_req *req, struct gr_resp *resp);
int redemptions_release(struct gr_req *req, struct gr_resp *resp);

/* ---- coupons (coupon_db.c) --------------------------------------------------------------- */

/* A coupon row. Strings are arena memory; product_ids/category_ids are arena-owned arrays. */
struct coupon {
    const char *id, *code, *kind;
    long long percent_off_bp;                      /* 0 when NULL */
    long long amount_off;                          /* 0 when NULL */
    const char *currency;                          /* NULL unless kind fixed */
    long long max_redemptions, per_customer_limit; /* 0 = unlimited */
    const char *starts_at, *ends_at;               /* NULL = open */
    bool stackable;
    json_t *product_ids, *category_ids;
    long long redeemed_count, version;
    const char *created_at, *updated_at;
};

#define COUPON_COLS                                                                                \
    "id, code, kind, percent_off_bp, amount_off, currency, max_redemptions, per_customer_limit, "  \
    "starts_at, ends_at, stackable, product_ids, category_ids, redeemed_count, version, "          \
    "created_at, updated_at"
#define REDEMPTION_COLS                                                                            \
    "r.id, r.coupon_id, c.code, r.user_id, r.order_id, r.status, r.release_reason, r.discount, "   \
    "r.currency, r.expires_at, r.version, r.created_at, r.updated_at"

/** Makes @v owned by the request arena (json_decref deferred) and returns it. NULL aborts. */
json_t *discount_own(struct gr_arena *a, json_t *v);
/** The current library time as RFC 3339 with milliseconds. */
void discount_now(char out[GR_TIME_STR_LEN]);
/** A reader context that accumulates field errors into the response's problem. */
struct gr_json_rd discount_rd(struct gr_req *req, struct gr_resp *resp);
/** ASCII-lowercase copy of @s in @a. */
char *discount_lower(struct gr_arena *a, const char *s);

/** Converts row @i of a SELECT COUPON_COLS into @c (arena @a). */
void coupon_from_row(struct gr_arena *a, const struct gr_db_rows *rows, size_t i, struct coupon *c);
/** Coupon by id into @c; GR_ENOTFOUND when absent. */
GR_MUST_CHECK int coupon_fetch(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                               struct coupon *c);
/** Coupon by code (case-insensitive) into @c; GR_ENOTFOUND when absent. */
GR_MUST_CHECK int coupon_fetch_code(struct gr_db_conn *db, struct gr_arena *a, const char *code,
                                    struct coupon *c);
/** The coupon as the API shows it (arena-owned). */
json_t *coupon_json(struct gr_arena *a, const struct coupon *c);
/** The redemption of row @i of a SELECT REDEMPTION_COLS (arena-owned). */
json_t *redemption_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i);

/**
 * Releases the reservations of coupon @coupon_id whose time ran out (expires_at <= @now):
 * status released (reason expired), their slots given back, one coupon.released each. Runs in
 * the caller's open transaction.
 */
GR_MUST_CHECK int redemptions_sweep(struct gr_db_conn *db, struct gr_arena *a,
                                    const char *coupon_id, const char *now,
                                    const char *traceparent);
/**
 * Moves the redemption @id to @to ("confirmed" or "released", with @reason for a release) in
 * the open transaction on @db, emitting coupon.redeemed or coupon.released; its new JSON in
 * *@out (may be NULL). Confirming a released or expired reservation: GR_ECONFLICT with
 * *@slug set; releasing a released one and confirming a confirmed one change nothing (0).
 */
GR_MUST_CHECK int redemption_move(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                  const char *to, const char *reason, const char *traceparent,
                                  json_t **out, const char **slug);

/* ---- discount arithmetic (calc.c) -------------------------------------------------------- */

/* One cart line as validate and reservations see it. */
struct dc_line {
    const char *product_id;  /* borrowed */
    const char *category_id; /* borrowed, may be NULL */
    long long total;         /* unit price x quantity, minor units */
    long long remaining;     /* total minus the discounts of coupons applied before */
    long long discount;      /* this line's discount from the coupon being applied */
};

/** True when @c applies to the line: no targets at all, or its product or category is one. */
bool dc_eligible(const struct coupon *c, const struct dc_line *l);
/** round_half_up(@amount x @bp / 10000) for amounts 0..(10^11) and bp 0..10000. */
long long dc_percent(long long amount, long long bp);
/**
 * Applies @c to @lines (their `remaining`), writing each line's discount (0 for ineligible
 * lines) and subtracting it from `remaining`: percent coupons take dc_percent of each eligible
 * line; fixed ones spread min(amount_off, eligible remaining) over the eligible lines in
 * proportion, rounded half-up per line, with the rounding difference settled on the lines in
 * order so the lines sum exactly to that amount; free_shipping takes @shipping (lines
 * untouched). Never more than a line's remaining amount. The coupon's total in *@lines_total
 * and its shipping discount in *@ship.
 */
void dc_apply(const struct coupon *c, struct dc_line *lines, size_t n, long long shipping,
              long long *lines_total, long long *ship);

/* ---- evaluation shared by validate and reservations (coupons.c) -------------------------- */

/* A parsed cart: currency, lines and optional shipping. */
struct dc_cart {
    char currency[4];
    struct dc_line lines[DISCOUNT_LINES_MAX];
    size_t nlines;
    long long shipping; /* 0 when absent */
    long long subtotal;
};

/**
 * Reads "currency", "lines" and "shipping" of body @doc into @cart, adding field errors to the
 * response (every line's unit_price must be in the cart's currency).
 */
void dc_read_cart(struct gr_req *req, struct gr_resp *resp, json_t *doc, struct dc_cart *cart);
/**
 * Checks that coupon @c may be used now by @user_id (may be NULL) on @cart: validity window
 * (422 coupon_not_active), fixed amount currency (422 currency_mismatch), slots left (409
 * coupon_exhausted) and the customer's limit (409 coupon_limit_reached). @field is the
 * pointer of the code in the body. Returns 0 or the problem's code, set on @resp.
 */
GR_MUST_CHECK int dc_check_usable(struct gr_req *req, struct gr_resp *resp, const struct coupon *c,
                                  const struct dc_cart *cart, const char *user_id,
                                  const char *field, const char *now);

#endif
