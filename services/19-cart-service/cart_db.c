/*
 * cart_db.c - the cart store and who may see a cart (SERVICES §19).
 *
 * A signed-in cart belongs to the token's `sub`; an anonymous cart is reached with the
 * `cart_token` that its creation returned, sent back as X-Cart-Token. Only the token's SHA-256
 * is stored, so a copy of the database does not open anyone's cart, and the hashes are
 * compared in constant time. A cart the caller may not see is a 404, as if it did not exist
 * (section 0); callers with carts:read (support staff) may read any cart but change none.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "cart.h"
#include "gr/auth.h"
#include "gr/buf.h"
#include "gr/id.h"
#include "gr/service.h"
#include "gr/time.h"

#define HASH_HEX 64

void cart_now(char out[32])
{
    gr_time_format(gr_time_now_ms(), out);
}

const char *cart_token_hash(struct gr_arena *a, const char *s)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char *hex = gr_arena_alloc(a, HASH_HEX + 1);

    if (EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        GR_BUG("sha-256 failed");
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return hex;
}

const char *cart_token_new(struct gr_arena *a)
{
    unsigned char raw[CART_TOKEN_BYTES];
    struct gr_buf b = GR_BUF_INIT;
    const char *out;

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        GR_BUG("RAND_bytes failed");
    gr_buf_init(&b, 256);
    if (gr_b64url_encode(&b, raw, sizeof(raw)) < 0)
        GR_BUG("cart token does not fit");
    out = gr_arena_strdup(a, gr_buf_cstr(&b));
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(b.ptr, b.len);
    gr_buf_release(&b);
    return out;
}

void cart_from_row(const struct gr_db_rows *r, size_t i, struct cart *c)
{
    c->id = gr_db_text(r, i, 0);
    c->user_id = gr_db_text(r, i, 1);
    c->currency = gr_db_text(r, i, 2);
    c->status = gr_db_text(r, i, 3);
    c->coupon_code = gr_db_text(r, i, 4);
    c->order_id = gr_db_text(r, i, 5);
    c->version = gr_db_int(r, i, 6);
    c->created_at = gr_db_text(r, i, 7);
    c->updated_at = gr_db_text(r, i, 8);
}

void cart_item_from_row(const struct gr_db_rows *r, size_t i, struct cart_item *it)
{
    it->id = gr_db_text(r, i, 0);
    it->variant_id = gr_db_text(r, i, 1);
    it->quantity = gr_db_int(r, i, 2);
    it->snapshot.amount = gr_db_int(r, i, 3);
    snprintf(it->snapshot.currency, sizeof(it->snapshot.currency), "%s", gr_db_text(r, i, 4));
    it->product_id = gr_db_text(r, i, 5);
    it->sku = gr_db_text(r, i, 6);
    it->price_changed = !gr_db_isnull(r, i, 7) && !gr_db_isnull(r, i, 8);
    memset(&it->new_price, 0, sizeof(it->new_price));
    if (it->price_changed) {
        it->new_price.amount = gr_db_int(r, i, 7);
        snprintf(it->new_price.currency, sizeof(it->new_price.currency), "%s", gr_db_text(r, i, 8));
    }
    it->unavailable = gr_db_text(r, i, 9);
    it->out_of_stock = gr_db_int(r, i, 10) != 0;
}

/* True when the caller holds the cart: its user, or the bearer of its token. */
static bool holds(struct gr_req *req, const struct cart *c, const char *token_hash)
{
    const char *tok;

    if (c->user_id != NULL)
        return req->principal != NULL && strcmp(req->principal->sub, c->user_id) == 0;
    tok = gr_req_header(req, "X-Cart-Token");
    if (tok == NULL || token_hash == NULL || strlen(tok) == 0 || strlen(tok) > CART_TOKEN_MAX ||
        strlen(token_hash) != HASH_HEX)
        return false;
    return CRYPTO_memcmp(cart_token_hash(req->arena, tok), token_hash, HASH_HEX) == 0;
}

int cart_load(struct gr_req *req, struct gr_resp *resp, const char *id, enum cart_access mode,
              struct cart *c)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if (id == NULL || !gr_id_valid(id, strlen(id)))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "cart_not_found", "no such cart");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " CART_COLS ", token_hash FROM carts WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "cart_not_found", "no such cart");
    cart_from_row(rows, 0, c);
    if (!holds(req, c, gr_db_text(rows, 0, 9)) &&
        !(mode == CART_READ && gr_req_can(req, "carts:read")))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, "cart_not_found", "no such cart");
    if (mode == CART_WRITE && strcmp(c->status, "checked_out") == 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "cart_checked_out",
                               "the cart was checked out and is read-only");
    if (mode == CART_WRITE && strcmp(c->status, "merged") == 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "cart_merged",
                               "the cart was merged into another and is read-only");
    return 0;
}

int cart_items(struct gr_req *req, const char *id, struct cart_item **items, size_t *n)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT " CART_ITEM_COLS " FROM cart_items WHERE cart_id = $1"
                     " ORDER BY created_at, id LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(CART_LINES_MAX) }, 2, &rows);
    if (rc < 0)
        return rc;
    *n = gr_db_nrows(rows);
    *items = gr_arena_calloc(req->arena, (*n + 1) * sizeof(**items));
    for (size_t i = 0; i < *n; i++)
        cart_item_from_row(rows, i, &(*items)[i]);
    return 0;
}

int cart_touch(struct gr_req *req, struct cart *c)
{
    char now[32];
    int rc;

    cart_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE carts SET version = version + 1, updated_at = $2,"
                    " last_activity_at = $2, abandoned_at = NULL,"
                    " status = CASE WHEN status = 'abandoned' THEN 'active' ELSE status END"
                    " WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(now) }, 2, NULL);
    if (rc < 0)
        return rc;
    c->version++;
    if (strcmp(c->status, "abandoned") == 0)
        c->status = "active";
    return 0;
}

static json_t *money_json(long long amount, const char *currency)
{
    struct gr_money m = { .amount = amount };

    snprintf(m.currency, sizeof(m.currency), "%s", currency);
    return gr_money_to_json(&m);
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* The cart and its lines, read together by cart_render. */
struct render_read {
    const char *id;
    struct cart c;
    struct cart_item *items;
    size_t n;
};

static int render_read(struct gr_req *req, void *arg)
{
    struct render_read *r = arg;
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena, "SELECT " CART_COLS " FROM carts WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(r->id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    cart_from_row(rows, 0, &r->c);
    return cart_items(req, r->id, &r->items, &r->n);
}

int cart_render(struct gr_req *req, const char *id, const char *token, json_t **out)
{
    /* One snapshot: an event applied meanwhile must not show its lines with the old version. */
    struct render_read r = { .id = id };
    long long count = 0;
    bool any_changed = false, any_unavailable = false, any_oos = false;
    json_t *arr, *body;
    int rc;

    rc = gr_req_read(req, render_read, &r);
    if (rc < 0)
        return rc;
    arr = json_array();
    for (size_t i = 0; i < r.n; i++) {
        const struct cart_item *it = &r.items[i];
        json_t *l;

        count += it->quantity;
        l = json_pack("{s:s,s:s,s:I,s:o,s:o,s:b,s:b,s:b}", "id", it->id, "variant_id",
                      it->variant_id, "quantity", (json_int_t)it->quantity, "unit_price",
                      money_json(it->snapshot.amount, it->snapshot.currency), "line_total",
                      money_json(it->snapshot.amount * it->quantity, it->snapshot.currency),
                      "price_changed", it->price_changed, "available", it->unavailable == NULL,
                      "out_of_stock", it->out_of_stock);
        if (l == NULL)
            GR_BUG("jansson allocation failed");
        if (it->price_changed) {
            any_changed = true;
            json_object_set_new(l, "old_unit_price", gr_money_to_json(&it->snapshot));
            json_object_set_new(l, "new_unit_price", gr_money_to_json(&it->new_price));
        }
        if (it->unavailable != NULL) {
            any_unavailable = true;
            json_object_set_new(l, "reason", json_string(it->unavailable));
        }
        any_oos = any_oos || it->out_of_stock;
        json_array_append_new(arr, l);
    }
    body = json_pack("{s:s,s:o,s:s,s:o,s:o,s:o,s:o,s:I,s:I,s:s,s:s}", "id", r.c.id, "user_id",
                     str_or_null(r.c.user_id), "status", r.c.status, "currency",
                     str_or_null(r.c.currency), "coupon_code", str_or_null(r.c.coupon_code),
                     "order_id", str_or_null(r.c.order_id), "items", arr, "item_count",
                     (json_int_t)count, "version", (json_int_t)r.c.version, "created_at",
                     r.c.created_at, "updated_at", r.c.updated_at);
    if (body == NULL)
        return GR_EINTERNAL;
    json_object_set_new(body, "price_changed", json_boolean(any_changed));
    json_object_set_new(body, "has_unavailable", json_boolean(any_unavailable));
    json_object_set_new(body, "has_out_of_stock", json_boolean(any_oos));
    if (token != NULL)
        json_object_set_new(body, "cart_token", json_string(token));
    *out = body;
    return 0;
}
