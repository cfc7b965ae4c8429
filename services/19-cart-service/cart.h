/*
 * cart.h - cart-service's own declarations (SERVICES §19): the route table, the handlers
 * (carts.c, checkout.c), the cart store and its access rules (cart_db.c), the calls to other
 * services (upstream.c: 17 for prices, 22 for the coupon preview, 16 for checkout), the
 * events it consumes (events.c: price changes, deletions, stock-outs and erasures recorded on
 * the lines) and the sweeper that marks idle carts abandoned (sweeper.c).
 *
 * Ownership: strings in the structs below are arena memory of the request (or of the sweeper's
 * arena); json_t values handed out by the helpers are owned by the arena (their decref is
 * deferred on it) unless a comment says "new reference".
 */
#ifndef CART_H
#define CART_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/arena.h"
#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/money.h"
#include "gr/router.h"

#define CART_NROUTES     11
#define CART_LINES_MAX   100           /* lines of one cart */
#define CART_QTY_MAX     99            /* quantity of one line */
#define CART_CODE_MAX    64            /* characters of a coupon code */
#define CART_TOKEN_BYTES 32            /* random bytes of a cart_token (43 base64url characters) */
#define CART_TOKEN_MAX   128           /* characters of an X-Cart-Token we look at */
#define CART_RESP_MAX    (1024 * 1024) /* bytes of an upstream answer */
#define CART_ID_TEXT_MAX 40
#define CART_SKU_MAX     255 /* characters of a sku kept on a line */

#define CART_SOURCE "/gravity/cart-service"

/* The service's state (req->app), made by the init hook from the environment. */
struct cart_app {
    /* Base URLs when set, else the seed defaults used when 02 lists no instance (upstream.c). */
    const char *product_url;     /* PRODUCT_URL, default http://127.0.0.1:8007 */
    const char *discount_url;    /* DISCOUNT_URL, default http://127.0.0.1:8012; "off" = none */
    const char *order_url;       /* ORDER_URL, default http://127.0.0.1:8006 */
    long long timeout_ms;        /* CART_UPSTREAM_TIMEOUT_MS, default 5000 (the seed's 5 s) */
    long long abandon_after_s;   /* CART_ABANDON_AFTER_S, default 86400 */
    long long sweep_interval_ms; /* CART_SWEEP_INTERVAL_MS, default 60000 */
    /* The sweeper thread (sweeper.c). */
    struct gr_db *db;
    pthread_t sweeper;
    bool sweeper_running;
    bool stop; /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* A cart row. */
struct cart {
    const char *id;
    const char *user_id;     /* NULL for an anonymous cart */
    const char *currency;    /* NULL until the first item */
    const char *status;      /* active | merged | checked_out | abandoned */
    const char *coupon_code; /* NULL when none */
    const char *order_id;    /* set by checkout */
    long long version;
    const char *created_at;
    const char *updated_at;
};

/* A line of a cart. */
struct cart_item {
    const char *id;
    const char *variant_id;
    long long quantity;
    struct gr_money snapshot;  /* unit price when the line was added or last changed */
    const char *product_id;    /* 17's answer at the add, NULL for lines older than 0002 */
    const char *sku;           /* idem */
    bool price_changed;        /* product.price_changed recorded a price other than snapshot */
    struct gr_money new_price; /* that price, when price_changed */
    const char *unavailable;   /* "product_deleted" after product.deleted, else NULL */
    bool out_of_stock;         /* inventory.out_of_stock, until stock is back */
};

/* What 17 says about a variant now. */
struct cart_price {
    bool found;     /* 17 returned it */
    bool available; /* found, not archived, product active */
    const char *product_id;
    const char *sku;   /* NULL when 17 did not say */
    long long version; /* the variant's version, 0 when 17 did not say */
    struct gr_money price;
};

extern const struct gr_route cart_routes[CART_NROUTES];

/* ---- handlers (carts.c, checkout.c) -------------------------------------------------------- */
int carts_create(struct gr_req *req, struct gr_resp *resp);
int carts_me(struct gr_req *req, struct gr_resp *resp);
int carts_get(struct gr_req *req, struct gr_resp *resp);
int carts_item_add(struct gr_req *req, struct gr_resp *resp);
int carts_item_patch(struct gr_req *req, struct gr_resp *resp);
int carts_item_delete(struct gr_req *req, struct gr_resp *resp);
int carts_coupon_put(struct gr_req *req, struct gr_resp *resp);
int carts_coupon_delete(struct gr_req *req, struct gr_resp *resp);
int carts_totals(struct gr_req *req, struct gr_resp *resp);
int carts_merge(struct gr_req *req, struct gr_resp *resp);
int carts_checkout(struct gr_req *req, struct gr_resp *resp);

/* ---- store and access (cart_db.c) --------------------------------------------------------- */

/** Current time as RFC 3339 (library clock). */
void cart_now(char out[32]);
/** Lowercase hex SHA-256 of @s, in @a. */
const char *cart_token_hash(struct gr_arena *a, const char *s);
/** A new random cart_token (base64url), in @a. */
const char *cart_token_new(struct gr_arena *a);

enum cart_access { CART_READ = 0, CART_WRITE = 1 };

/**
 * Loads cart @id (path parameter) into @c for the caller: a signed-in cart is the token's
 * `sub`'s, an anonymous one needs X-Cart-Token (its hash matches); carts:read may read any.
 * Anything else, and an id that is not a UUID, is GR_ENOTFOUND (404: not visible). For
 * CART_WRITE a checked_out or merged cart is 409 cart_checked_out / cart_merged.
 */
GR_MUST_CHECK int cart_load(struct gr_req *req, struct gr_resp *resp, const char *id,
                            enum cart_access mode, struct cart *c);
/** The lines of cart @id, oldest first (at most CART_LINES_MAX), into *@items / *@n (arena). */
GR_MUST_CHECK int cart_items(struct gr_req *req, const char *id, struct cart_item **items,
                             size_t *n);
/**
 * Marks a write of cart @c: version + 1, updated_at and last_activity_at now, and an abandoned
 * cart active again. Inside the caller's transaction.
 */
GR_MUST_CHECK int cart_touch(struct gr_req *req, struct cart *c);
/** The cart's JSON (new reference), lines included; with_token adds @token as cart_token. */
GR_MUST_CHECK int cart_render(struct gr_req *req, const char *id, const char *token, json_t **out);
/** Reads an item row (CART_ITEM_COLS) at @i. */
void cart_item_from_row(const struct gr_db_rows *r, size_t i, struct cart_item *it);

#define CART_COLS                                                                                  \
    "id, user_id, currency, status, coupon_code, order_id, version, created_at, updated_at"
#define CART_ITEM_COLS                                                                             \
    "id, variant_id, quantity, unit_price_amount, unit_price_currency, product_id, sku,"           \
    " new_price_amount, new_price_currency, unavailable_reason, out_of_stock"
/** Reads a cart row (CART_COLS) at @i. */
void cart_from_row(const struct gr_db_rows *r, size_t i, struct cart *c);

/* ---- other services (upstream.c) ---------------------------------------------------------- */

/*
 * An upstream answer: the HTTP status and the body parsed as JSON (NULL when it is not JSON),
 * owned by the arena.
 */
struct cart_upstream {
    long status;
    json_t *json;
};

/**
 * Prices @n variants (distinct UUIDs, n <= 100) at 17: GET PRODUCT_URL/api/v1/products/variants
 * ?ids=… with the service token when the process has one (then archived variants and the
 * product's status come back, flagged), else anonymously (only sellable ones come back).
 * @out has @n entries in the order of @ids. Errors: GR_EUNAVAIL / GR_ETIMEOUT when 17 cannot
 * be reached or answers anything but 200 with the list shape.
 */
GR_MUST_CHECK int cart_price_variants(struct gr_req *req, const char *const *ids, size_t n,
                                      struct cart_price *out);
/**
 * Previews the discount of @code on the given lines at 22 (POST DISCOUNT_URL/api/v1/coupons/
 * validate), as the service (with user_id) or, without a service token, as the caller. 0 with
 * *@u filled when 22 answered; GR_EUNAVAIL when it is not configured or cannot be reached.
 */
GR_MUST_CHECK int cart_discount_preview(struct gr_req *req, json_t *body, struct cart_upstream *u);
/**
 * Creates the order at 16 (POST ORDER_URL/api/v1/orders) with @body, Idempotency-Key @key and
 * the caller's own bearer token (the order is the user's). 0 with *@u filled when 16 answered
 * at all; GR_EUNAVAIL / GR_ETIMEOUT when it cannot be reached.
 */
GR_MUST_CHECK int cart_order_create(struct gr_req *req, json_t *body, const char *key,
                                    struct cart_upstream *u);
/**
 * Frees the HTTP client upstream.c made on its first call when gr_main provides none (its
 * keep-alive connections and every thread's handle). For the fini hook, after the server
 * stopped; a no-op when nothing was made.
 */
void cart_upstream_fini(void);

/* ---- events (events.c) ------------------------------------------------------------------- */

#define CART_NSUBS 5
/*
 * product.price_changed, product.deleted, inventory.out_of_stock, inventory.stock_changed and
 * user.deleted: each handler runs in the consumer's transaction with the inbox row.
 */
extern const struct gr_sub cart_subs[CART_NSUBS];

/* ---- sweeper (sweeper.c) ------------------------------------------------------------------ */

/** Starts the thread that marks carts idle for abandon_after_s abandoned (cart.abandoned). */
GR_MUST_CHECK int cart_sweeper_start(struct cart_app *app);
/** Stops and joins it; safe to call twice and when it never started. */
void cart_sweeper_stop(struct cart_app *app);
/** One sweep now (the thread's body; exported for tests). Returns carts marked, or < 0. */
int cart_sweep_once(struct cart_app *app, struct gr_arena *a);

#endif
