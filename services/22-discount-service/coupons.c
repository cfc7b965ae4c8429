/*
 * coupons.c - coupon administration (CRUD, coupons:write), POST /coupons/validate (the
 * discount of a cart without consuming anything) and the list of a coupon's redemptions.
 * Codes are unique case-insensitively through the UNIQUE column code_norm = lower(code), so
 * concurrent creates of "SAVE10" and "save10" end with one 201 and one 409 code_taken.
 */
#include <string.h>

#include "discount.h"
#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/service.h"

/* ---- list cursors ------------------------------------------------------------------------ */

static int cursor_make(struct gr_req *req, const char *scope, const char *key, const char *id,
                       const char **out)
{
    json_t *payload = discount_own(req->arena, json_pack("[s,s]", key, id));
    struct gr_str dump;

    if (gr_json_dump(req->arena, payload, &dump) < 0)
        return GR_EINTERNAL;
    return gr_cursor_encode(&req->ctx->cursor_key, req->arena, scope, dump.ptr, dump.len, out);
}

static int cursor_read(struct gr_req *req, const char *scope, const char *cursor,
                       struct gr_db_val *key, struct gr_db_val *id)
{
    const char *payload = NULL;
    size_t len = 0;
    json_t *doc = NULL;

    if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, &len) < 0 ||
        gr_json_parse(req->arena, payload, len, &doc, NULL) < 0 || !json_is_array(doc) ||
        json_array_size(doc) != 2 || !json_is_string(json_array_get(doc, 0)) ||
        !json_is_string(json_array_get(doc, 1)))
        return GR_EINVAL;
    *key = GR_DB_TEXT(json_string_value(json_array_get(doc, 0)));
    *id = GR_DB_TEXT(json_string_value(json_array_get(doc, 1)));
    return 0;
}

/* The list body of rows [0, @n) rendered by @render, with a cursor after row n-1. */
static int list_body(struct gr_req *req, struct gr_resp *resp, const struct gr_db_rows *rows,
                     int limit, const char *scope, size_t created_col,
                     json_t *(*render)(struct gr_arena *, const struct gr_db_rows *, size_t))
{
    size_t n = gr_db_nrows(rows);
    bool has_more = n > (size_t)limit;
    const char *next = NULL;
    json_t *data = json_array();
    json_t *body;

    if (has_more) {
        n = (size_t)limit;
        if (cursor_make(req, scope, gr_db_text(rows, n - 1, created_col),
                        gr_db_text(rows, n - 1, 0), &next) < 0) {
            json_decref(data);
            return GR_EINTERNAL;
        }
    }
    for (size_t i = 0; i < n; i++)
        json_array_append(data, render(req->arena, rows, i));
    body = json_pack("{s:o,s:b,s:o}", "data", data, "has_more", has_more, "next_cursor",
                     next != NULL ? json_string(next) : json_null());
    gr_resp_json(resp, 200, body);
    return 0;
}

static json_t *render_coupon(struct gr_arena *a, const struct gr_db_rows *rows, size_t i)
{
    struct coupon c;

    coupon_from_row(a, rows, i, &c);
    return coupon_json(a, &c);
}

int coupons_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor");
    struct gr_db_val key = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *scope = "GET /api/v1/coupons";
    int limit = 20;
    int rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    if (cursor != NULL && cursor_read(req, scope, cursor, &key, &kid) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " COUPON_COLS " FROM coupons"
                     " WHERE CAST($1 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($1 AS TEXT), CAST($2 AS TEXT))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($3 AS INTEGER)",
                     (struct gr_db_val[]){ key, kid, GR_DB_INT(limit + 1) }, 3, &rows);
    if (rc < 0)
        return rc;
    return list_body(req, resp, rows, limit, scope, 15, render_coupon);
}

int coupons_get(struct gr_req *req, struct gr_resp *resp)
{
    struct coupon c;
    int rc = coupon_fetch(req->db, req->arena, gr_req_param(req, "id"), &c);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(coupon_json(req->arena, &c)));
    return 0;
}

/* ---- the coupon body --------------------------------------------------------------------- */

struct coupon_in {
    const char *code, *kind;
    long long bp, max, per;
    struct gr_money amount;
    bool has_bp, has_amount;
    const char *starts_at, *ends_at; /* normalised RFC 3339, NULL = open */
    bool stackable;
    const char *product_ids, *category_ids; /* JSON text */
};

static bool code_valid(const char *s)
{
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* An optional nullable RFC 3339 time at @key, normalised to UTC milliseconds. */
static const char *read_time(const struct gr_json_rd *r, json_t *doc, const char *key, int64_t *ms)
{
    const char *s = NULL;
    char *out;

    if (gr_json_str(r, doc, "", key, GR_JSON_NULLABLE, 1, 64, &s, NULL) < 0 || s == NULL)
        return NULL;
    if (gr_time_parse(s, ms) < 0) {
        gr_errs_addk(r->errs, r->a, "", key, "must be an RFC 3339 date-time");
        return NULL;
    }
    out = gr_arena_alloc(r->a, GR_TIME_STR_LEN);
    gr_time_format(*ms, out);
    return out;
}

/* An array of at most DISCOUNT_TARGETS_MAX UUIDs at @ptr/@key of @obj, as JSON text. */
static const char *read_ids(const struct gr_json_rd *r, json_t *obj, const char *ptr,
                            const char *key)
{
    json_t *arr = NULL, *v;
    const char *aptr = gr_json_ptr_key(r->a, ptr, key);
    struct gr_str dump;
    size_t i;

    if (gr_json_arr(r, obj, ptr, key, GR_JSON_NULLABLE, DISCOUNT_TARGETS_MAX, &arr, NULL) < 0 ||
        arr == NULL)
        return "[]";
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v) || !gr_id_valid(json_string_value(v), json_string_length(v)))
            gr_errs_add(r->errs, r->a, gr_json_ptr_idx(r->a, aptr, i), "must be a UUID");
    }
    if (gr_json_dump(r->a, arr, &dump) < 0)
        return "[]";
    return dump.ptr;
}

static void read_coupon(const struct gr_json_rd *r, json_t *doc, struct coupon_in *in)
{
    static const char *const kinds[] = { "percent", "fixed", "free_shipping" };
    static const char *const targets[] = { "product_ids", "category_ids", NULL };
    json_t *applies = NULL;
    int64_t starts = 0, ends = 0;
    bool has_kind = false;

    memset(in, 0, sizeof(*in));
    in->product_ids = in->category_ids = "[]";
    if (gr_json_str(r, doc, "", "code", GR_JSON_REQUIRED, 1, DISCOUNT_CODE_MAX, &in->code, NULL) ==
            0 &&
        in->code != NULL && !code_valid(in->code))
        gr_errs_add(r->errs, r->a, "/code", "must contain only letters, digits, '-' and '_'");
    if (gr_json_str(r, doc, "", "kind", GR_JSON_REQUIRED, 1, 32, &in->kind, NULL) == 0 &&
        in->kind != NULL) {
        for (size_t i = 0; i < 3; i++)
            has_kind = has_kind || strcmp(in->kind, kinds[i]) == 0;
        if (!has_kind)
            gr_errs_add(r->errs, r->a, "/kind", "must be one of percent, fixed, free_shipping");
    }
    (void)gr_json_int(r, doc, "", "percent_off_bp", GR_JSON_NULLABLE, 1, DISCOUNT_BP_MAX, &in->bp,
                      NULL);
    in->has_bp = in->bp > 0;
    if (gr_json_money(r, doc, "", "amount_off", GR_JSON_NULLABLE, &in->amount, NULL) == 0 &&
        in->amount.currency[0] != '\0') {
        in->has_amount = true;
        if (in->amount.amount < 1)
            gr_errs_add(r->errs, r->a, "/amount_off/amount", "must be at least 1");
    }
    (void)gr_json_int(r, doc, "", "max_redemptions", GR_JSON_NULLABLE, 1, DISCOUNT_LIMIT_MAX,
                      &in->max, NULL);
    (void)gr_json_int(r, doc, "", "per_customer_limit", GR_JSON_NULLABLE, 1, DISCOUNT_LIMIT_MAX,
                      &in->per, NULL);
    in->starts_at = read_time(r, doc, "starts_at", &starts);
    in->ends_at = read_time(r, doc, "ends_at", &ends);
    if (in->starts_at != NULL && in->ends_at != NULL && ends <= starts)
        gr_errs_add(r->errs, r->a, "/ends_at", "must be after starts_at");
    (void)gr_json_bool(r, doc, "", "stackable", GR_JSON_OPTIONAL, &in->stackable, NULL);
    if (gr_json_obj(r, doc, "", "applies_to", GR_JSON_NULLABLE, &applies, NULL) == 0 &&
        applies != NULL && gr_json_only(r, applies, "/applies_to", targets) == 0) {
        in->product_ids = read_ids(r, applies, "/applies_to", "product_ids");
        in->category_ids = read_ids(r, applies, "/applies_to", "category_ids");
    }
    /* The amounts must fit the kind. */
    if (in->has_bp && in->has_amount)
        gr_errs_add(r->errs, r->a, "/amount_off",
                    "percent_off_bp and amount_off cannot both be set");
    else if (has_kind && strcmp(in->kind, "percent") == 0) {
        if (!in->has_bp)
            gr_errs_add(r->errs, r->a, "/percent_off_bp", "is required for kind percent");
        if (in->has_amount)
            gr_errs_add(r->errs, r->a, "/amount_off", "is only for kind fixed");
    } else if (has_kind && strcmp(in->kind, "fixed") == 0) {
        if (!in->has_amount)
            gr_errs_add(r->errs, r->a, "/amount_off", "is required for kind fixed");
        if (in->has_bp)
            gr_errs_add(r->errs, r->a, "/percent_off_bp", "is only for kind percent");
    } else if (has_kind) {
        if (in->has_bp)
            gr_errs_add(r->errs, r->a, "/percent_off_bp", "is only for kind percent");
        if (in->has_amount)
            gr_errs_add(r->errs, r->a, "/amount_off", "is only for kind fixed");
    }
}

static const char *const coupon_keys[] = { "code",
                                           "kind",
                                           "percent_off_bp",
                                           "amount_off",
                                           "max_redemptions",
                                           "per_customer_limit",
                                           "starts_at",
                                           "ends_at",
                                           "stackable",
                                           "applies_to",
                                           NULL };

static int code_taken(struct gr_req *req, struct gr_resp *resp, const char *code)
{
    gr_resp_field_error(req, resp, "/code", "is already taken");
    return gr_resp_problem(req, resp, GR_ECONFLICT, "code_taken",
                           "coupon code '%s' is already taken", code);
}

/* The coupon.created-style JSON text of coupon @id after a write; the coupon itself in *@c. */
static int reload(struct gr_req *req, const char *id, struct coupon *c)
{
    return coupon_fetch(req->db, req->arena, id, c);
}

int coupons_create(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = discount_rd(req, resp);
    struct coupon_in in;
    struct coupon c;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    int rc;

    (void)gr_json_only(&r, req->json, "", coupon_keys);
    read_coupon(&r, req->json, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    gr_id_new(id);
    discount_now(now);
    rc = gr_db_exec(
        req->db,
        "INSERT INTO coupons (id, code, code_norm, kind, percent_off_bp, amount_off, currency,"
        " max_redemptions, per_customer_limit, starts_at, ends_at, stackable, product_ids,"
        " category_ids, redeemed_count, version, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, 1, $15, $15)",
        (struct gr_db_val[]){
            GR_DB_TEXT(id), GR_DB_TEXT(in.code), GR_DB_TEXT(discount_lower(req->arena, in.code)),
            GR_DB_TEXT(in.kind), in.has_bp ? GR_DB_INT(in.bp) : GR_DB_NULL,
            in.has_amount ? GR_DB_INT(in.amount.amount) : GR_DB_NULL,
            GR_DB_TEXT(in.has_amount ? in.amount.currency : NULL),
            in.max > 0 ? GR_DB_INT(in.max) : GR_DB_NULL,
            in.per > 0 ? GR_DB_INT(in.per) : GR_DB_NULL, GR_DB_TEXT(in.starts_at),
            GR_DB_TEXT(in.ends_at), GR_DB_INT(in.stackable ? 1 : 0), GR_DB_TEXT(in.product_ids),
            GR_DB_TEXT(in.category_ids), GR_DB_TEXT(now) },
        15, NULL);
    if (rc == GR_ECONFLICT)
        return code_taken(req, resp, in.code);
    if (rc < 0)
        return rc;
    rc = reload(req, id, &c);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location", gr_arena_printf(req->arena, "/api/v1/coupons/%s", id));
    gr_resp_json(resp, 201, json_incref(coupon_json(req->arena, &c)));
    return 0;
}

/* The coupon in the shape of a create body, for PATCH's merge. */
static json_t *coupon_input(struct gr_arena *a, const struct coupon *c)
{
    json_t *full = coupon_json(a, c);
    json_t *in = discount_own(a, json_object());

    for (size_t i = 0; coupon_keys[i] != NULL; i++) {
        json_t *v = json_object_get(full, coupon_keys[i]);
        if (v != NULL && !json_is_null(v))
            json_object_set(in, coupon_keys[i], v);
    }
    return in;
}

int coupons_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const patch_keys[] = { "code",
                                              "kind",
                                              "percent_off_bp",
                                              "amount_off",
                                              "max_redemptions",
                                              "per_customer_limit",
                                              "starts_at",
                                              "ends_at",
                                              "stackable",
                                              "applies_to",
                                              "version",
                                              NULL };
    struct gr_json_rd r = discount_rd(req, resp);
    struct coupon c;
    struct coupon_in in;
    json_t *merged, *patch;
    long long want = 0;
    bool has_version = false;
    char now[GR_TIME_STR_LEN];
    long long changed = 0;
    int rc;

    if (!json_is_object(req->json)) {
        gr_resp_field_error(req, resp, "", "must be an object");
        return GR_EVALID;
    }
    (void)gr_json_only(&r, req->json, "", patch_keys);
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &want,
                      &has_version);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = coupon_fetch(req->db, req->arena, gr_req_param(req, "id"), &c);
    if (rc < 0)
        return rc;
    if (has_version && want != c.version)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the coupon is at version %lld", c.version);
    patch = discount_own(req->arena, json_deep_copy(req->json));
    json_object_del(patch, "version");
    merged = coupon_input(req->arena, &c);
    if (gr_json_merge_patch(merged, patch) < 0)
        return GR_EINTERNAL;
    read_coupon(&r, merged, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    discount_now(now);
    rc = gr_db_exec(
        req->db,
        "UPDATE coupons SET code = $2, code_norm = $3, kind = $4, percent_off_bp = $5,"
        " amount_off = $6, currency = $7, max_redemptions = $8, per_customer_limit = $9,"
        " starts_at = $10, ends_at = $11, stackable = $12, product_ids = $13, category_ids = $14,"
        " version = version + 1, updated_at = $15 WHERE id = $1 AND version = $16",
        (struct gr_db_val[]){
            GR_DB_TEXT(c.id), GR_DB_TEXT(in.code), GR_DB_TEXT(discount_lower(req->arena, in.code)),
            GR_DB_TEXT(in.kind), in.has_bp ? GR_DB_INT(in.bp) : GR_DB_NULL,
            in.has_amount ? GR_DB_INT(in.amount.amount) : GR_DB_NULL,
            GR_DB_TEXT(in.has_amount ? in.amount.currency : NULL),
            in.max > 0 ? GR_DB_INT(in.max) : GR_DB_NULL,
            in.per > 0 ? GR_DB_INT(in.per) : GR_DB_NULL, GR_DB_TEXT(in.starts_at),
            GR_DB_TEXT(in.ends_at), GR_DB_INT(in.stackable ? 1 : 0), GR_DB_TEXT(in.product_ids),
            GR_DB_TEXT(in.category_ids), GR_DB_TEXT(now), GR_DB_INT(c.version) },
        16, &changed);
    if (rc == GR_ECONFLICT)
        return code_taken(req, resp, in.code);
    if (rc < 0)
        return rc;
    if (changed != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the coupon changed meanwhile");
    rc = reload(req, c.id, &c);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(coupon_json(req->arena, &c)));
    return 0;
}

int coupons_delete(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    struct coupon c;
    int rc = coupon_fetch(req->db, req->arena, gr_req_param(req, "id"), &c);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM redemptions WHERE coupon_id = $1 LIMIT 1",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "coupon_in_use",
                               "the coupon has redemptions; set ends_at to retire it");
    rc = gr_db_exec(req->db, "DELETE FROM coupons WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(c.id) }, 1, NULL);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

/* ---- carts and usability (shared with redemptions.c) ------------------------------------- */

void dc_read_cart(struct gr_req *req, struct gr_resp *resp, json_t *doc, struct dc_cart *cart)
{
    static const char *const line_keys[] = { "product_id", "category_id", "quantity", "unit_price",
                                             NULL };
    struct gr_json_rd r = discount_rd(req, resp);
    const char *cur = NULL;
    json_t *lines = NULL, *l;
    struct gr_money ship = { 0 };
    bool has_ship = false;
    size_t i;

    memset(cart, 0, sizeof(*cart));
    if (gr_json_str(&r, doc, "", "currency", GR_JSON_REQUIRED, 3, 3, &cur, NULL) == 0 &&
        cur != NULL) {
        if (gr_money_currency_valid(cur))
            snprintf(cart->currency, sizeof(cart->currency), "%s", cur);
        else
            gr_resp_field_error(req, resp, "/currency",
                                "must be a lowercase ISO 4217 currency code");
    }
    if (gr_json_arr(&r, doc, "", "lines", GR_JSON_REQUIRED, DISCOUNT_LINES_MAX, &lines, NULL) ==
            0 &&
        lines != NULL && json_array_size(lines) == 0)
        gr_resp_field_error(req, resp, "/lines", "must not be empty");
    json_array_foreach(lines, i, l)
    {
        const char *ptr = gr_json_ptr_idx(req->arena, "/lines", i);
        struct dc_line *dl = &cart->lines[i];
        const char *pid = NULL, *cid = NULL;
        long long qty = 0;
        struct gr_money price = { 0 };
        size_t before = resp->errs.n;

        if (gr_json_only(&r, l, ptr, line_keys) < 0)
            continue;
        (void)gr_json_str(&r, l, ptr, "product_id", GR_JSON_REQUIRED, 36, 36, &pid, NULL);
        if (pid != NULL && !gr_id_valid(pid, strlen(pid)))
            gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, ptr, "product_id"),
                                "must be a UUID");
        (void)gr_json_str(&r, l, ptr, "category_id", GR_JSON_NULLABLE, 36, 36, &cid, NULL);
        if (cid != NULL && !gr_id_valid(cid, strlen(cid)))
            gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, ptr, "category_id"),
                                "must be a UUID");
        (void)gr_json_int(&r, l, ptr, "quantity", GR_JSON_REQUIRED, 1, DISCOUNT_QTY_MAX, &qty,
                          NULL);
        (void)gr_json_money(&r, l, ptr, "unit_price", GR_JSON_REQUIRED, &price, NULL);
        if (resp->errs.n > before)
            continue;
        if (cart->currency[0] != '\0' && strcmp(price.currency, cart->currency) != 0) {
            gr_resp_field_error(req, resp,
                                gr_arena_printf(req->arena, "%s/unit_price/currency", ptr),
                                "must be the cart's currency %s", cart->currency);
            continue;
        }
        dl->product_id = pid;
        dl->category_id = cid;
        dl->total = dl->remaining = price.amount * qty;
        cart->subtotal += dl->total;
    }
    cart->nlines = json_array_size(lines);
    if (resp->errs.n == 0 && cart->subtotal > GR_MONEY_MAX_AMOUNT)
        gr_resp_field_error(req, resp, "/lines", "the subtotal exceeds %lld", GR_MONEY_MAX_AMOUNT);
    if (gr_json_money(&r, doc, "", "shipping", GR_JSON_NULLABLE, &ship, &has_ship) == 0 &&
        ship.currency[0] != '\0') {
        if (cart->currency[0] != '\0' && strcmp(ship.currency, cart->currency) != 0)
            gr_resp_field_error(req, resp, "/shipping/currency", "must be the cart's currency %s",
                                cart->currency);
        cart->shipping = ship.amount;
    }
}

int dc_check_usable(struct gr_req *req, struct gr_resp *resp, const struct coupon *c,
                    const struct dc_cart *cart, const char *user_id, const char *field,
                    const char *now)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if ((c->starts_at != NULL && strcmp(now, c->starts_at) < 0) ||
        (c->ends_at != NULL && strcmp(now, c->ends_at) >= 0)) {
        gr_resp_field_error(req, resp, field, "is not active now");
        return gr_resp_problem(req, resp, GR_EVALID, "coupon_not_active",
                               "coupon '%s' is outside its validity window", c->code);
    }
    if (strcmp(c->kind, "fixed") == 0 && strcmp(c->currency, cart->currency) != 0) {
        gr_resp_field_error(req, resp, "/currency", "coupon '%s' is in %s", c->code, c->currency);
        return gr_resp_problem(req, resp, GR_EVALID, "currency_mismatch",
                               "coupon '%s' takes off an amount in %s, the cart is in %s", c->code,
                               c->currency, cart->currency);
    }
    if (c->max_redemptions > 0) {
        /* Reservations whose time ran out hold no slot even before a sweep releases them. */
        rc = gr_db_query(req->db, req->arena,
                         "SELECT count(*) FROM redemptions WHERE coupon_id = $1"
                         " AND status = 'reserved' AND expires_at <= $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(now) }, 2, &rows);
        if (rc < 0)
            return rc;
        if (c->redeemed_count - gr_db_int(rows, 0, 0) >= c->max_redemptions)
            return gr_resp_problem(req, resp, GR_ECONFLICT, "coupon_exhausted",
                                   "coupon '%s' has no redemptions left", c->code);
    }
    if (c->per_customer_limit > 0 && user_id != NULL) {
        rc = gr_db_query(
            req->db, req->arena,
            "SELECT count(*) FROM redemptions WHERE coupon_id = $1 AND user_id = $2"
            " AND (status = 'confirmed' OR (status = 'reserved' AND expires_at > $3))",
            (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(user_id), GR_DB_TEXT(now) }, 3,
            &rows);
        if (rc < 0)
            return rc;
        if (gr_db_int(rows, 0, 0) >= c->per_customer_limit)
            return gr_resp_problem(req, resp, GR_ECONFLICT, "coupon_limit_reached",
                                   "the customer has used coupon '%s' %lld times already", c->code,
                                   c->per_customer_limit);
    }
    return 0;
}

/* ---- validate ---------------------------------------------------------------------------- */

static json_t *money(struct gr_arena *a, long long amount, const char *currency)
{
    struct gr_money m = { .amount = amount };

    snprintf(m.currency, sizeof(m.currency), "%s", currency);
    return discount_own(a, gr_money_to_json(&m));
}

/*
 * The user a validate is for: body user_id when the caller may read coupons (a service acting
 * for a customer) or names themself; a customer naming someone else is refused (403). Without
 * user_id: the caller, unless it is a service (then no per-customer check).
 */
static int validate_user(struct gr_req *req, struct gr_resp *resp, const char *body_user,
                         const char **user)
{
    const char *sub = req->principal->sub;

    *user = NULL;
    if (body_user != NULL) {
        if (strcmp(body_user, sub) != 0 && !gr_req_can(req, "coupons:read"))
            return gr_resp_problem(req, resp, GR_EFORBIDDEN, NULL,
                                   "validating for another user needs coupons:read");
        *user = body_user;
    } else if (!gr_req_can(req, "coupons:read")) {
        *user = sub;
    }
    return 0;
}

int coupons_validate(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "code",  "codes",    "user_id", "currency",
                                        "lines", "shipping", NULL };
    struct gr_json_rd r = discount_rd(req, resp);
    struct dc_cart cart;
    struct coupon cs[DISCOUNT_CODES_MAX];
    const char *codes[DISCOUNT_CODES_MAX], *fields[DISCOUNT_CODES_MAX];
    const char *code = NULL, *body_user = NULL, *user = NULL;
    json_t *arr = NULL, *v, *out_coupons, *out_lines, *body;
    long long line_disc[DISCOUNT_LINES_MAX] = { 0 };
    long long total = 0, ship_total = 0;
    char now[GR_TIME_STR_LEN];
    size_t n = 0, i;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "code", GR_JSON_OPTIONAL, 1, DISCOUNT_CODE_MAX, &code,
                      NULL);
    (void)gr_json_arr(&r, req->json, "", "codes", GR_JSON_OPTIONAL, DISCOUNT_CODES_MAX, &arr, NULL);
    if (code != NULL && arr != NULL)
        gr_resp_field_error(req, resp, "/codes", "give either code or codes");
    else if (code != NULL) {
        codes[0] = code;
        fields[0] = "/code";
        n = 1;
    } else if (arr != NULL) {
        json_array_foreach(arr, i, v)
        {
            fields[i] = gr_json_ptr_idx(req->arena, "/codes", i);
            if (!json_is_string(v) || json_string_length(v) < 1 ||
                json_string_length(v) > DISCOUNT_CODE_MAX)
                gr_resp_field_error(req, resp, fields[i], "must be a code of 1..%d characters",
                                    DISCOUNT_CODE_MAX);
            else
                codes[n++] = json_string_value(v);
        }
    }
    if (n == 0 && resp->errs.n == 0)
        gr_resp_field_error(req, resp, "/codes", "one code at least is required");
    (void)gr_json_str(&r, req->json, "", "user_id", GR_JSON_NULLABLE, 36, 36, &body_user, NULL);
    if (body_user != NULL && !gr_id_valid(body_user, strlen(body_user)))
        gr_resp_field_error(req, resp, "/user_id", "must be a UUID");
    dc_read_cart(req, resp, req->json, &cart);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = validate_user(req, resp, body_user, &user);
    if (rc < 0)
        return rc;
    discount_now(now);
    for (i = 0; i < n; i++) {
        rc = coupon_fetch_code(req->db, req->arena, codes[i], &cs[i]);
        if (rc == GR_ENOTFOUND) {
            gr_resp_field_error(req, resp, fields[i], "no such coupon");
            return gr_resp_problem(req, resp, GR_EVALID, "coupon_not_found",
                                   "no coupon has the code '%s'", codes[i]);
        }
        if (rc < 0)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cs[j].id, cs[i].id) == 0) {
                gr_resp_field_error(req, resp, fields[i], "is given twice");
                return GR_EVALID;
            }
    }
    for (i = 0; n > 1 && i < n; i++)
        if (!cs[i].stackable) {
            gr_resp_field_error(req, resp, fields[i], "cannot be combined with other coupons");
            return gr_resp_problem(req, resp, GR_EVALID, "coupon_not_stackable",
                                   "coupon '%s' cannot be combined with another", cs[i].code);
        }
    for (i = 0; i < n; i++) {
        rc = dc_check_usable(req, resp, &cs[i], &cart, user, fields[i], now);
        if (rc < 0)
            return rc;
    }
    out_coupons = json_array();
    for (i = 0; i < n; i++) {
        long long lt = 0, ship = 0;
        dc_apply(&cs[i], cart.lines, cart.nlines, cart.shipping - ship_total, &lt, &ship);
        for (size_t k = 0; k < cart.nlines; k++)
            line_disc[k] += cart.lines[k].discount;
        total += lt;
        ship_total += ship;
        json_array_append(
            out_coupons,
            discount_own(req->arena,
                         json_pack("{s:s,s:s,s:s,s:O,s:O}", "id", cs[i].id, "code", cs[i].code,
                                   "kind", cs[i].kind, "discount",
                                   money(req->arena, lt, cart.currency), "shipping_discount",
                                   money(req->arena, ship, cart.currency))));
    }
    out_lines = json_array();
    for (i = 0; i < cart.nlines; i++)
        json_array_append(
            out_lines,
            discount_own(req->arena,
                         json_pack("{s:I,s:s,s:O,s:O}", "index", (json_int_t)i, "product_id",
                                   cart.lines[i].product_id, "total",
                                   money(req->arena, cart.lines[i].total, cart.currency),
                                   "discount", money(req->arena, line_disc[i], cart.currency))));
    body = json_pack("{s:s,s:O,s:O,s:O,s:o,s:o}", "currency", cart.currency, "subtotal",
                     money(req->arena, cart.subtotal, cart.currency), "discount",
                     money(req->arena, total, cart.currency), "shipping_discount",
                     money(req->arena, ship_total, cart.currency), "coupons", out_coupons, "lines",
                     out_lines);
    gr_resp_json(resp, 200, body);
    return 0;
}

/* ---- a coupon's redemptions -------------------------------------------------------------- */

int coupons_redemptions(struct gr_req *req, struct gr_resp *resp)
{
    const char *status = gr_req_query(req, "status");
    const char *cursor = gr_req_query(req, "cursor");
    struct gr_db_val key = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    struct coupon c;
    const char *scope;
    int limit = 20;
    int rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    if (status != NULL && strcmp(status, "reserved") != 0 && strcmp(status, "confirmed") != 0 &&
        strcmp(status, "released") != 0) {
        gr_resp_field_error(req, resp, "query.status", "must be reserved, confirmed or released");
        return GR_EVALID;
    }
    rc = coupon_fetch(req->db, req->arena, gr_req_param(req, "id"), &c);
    if (rc < 0)
        return rc;
    scope = gr_arena_printf(req->arena, "GET /api/v1/coupons/%s/redemptions\nstatus=%s", c.id,
                            status != NULL ? status : "");
    if (cursor != NULL && cursor_read(req, scope, cursor, &key, &kid) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " REDEMPTION_COLS " FROM redemptions r"
                     " JOIN coupons c ON c.id = r.coupon_id WHERE r.coupon_id = $1"
                     " AND (CAST($2 AS TEXT) IS NULL OR r.status = CAST($2 AS TEXT))"
                     " AND (CAST($3 AS TEXT) IS NULL"
                     " OR (r.created_at, r.id) < (CAST($3 AS TEXT), CAST($4 AS TEXT)))"
                     " ORDER BY r.created_at DESC, r.id DESC LIMIT CAST($5 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.id), GR_DB_TEXT(status), key, kid,
                                           GR_DB_INT(limit + 1) },
                     5, &rows);
    if (rc < 0)
        return rc;
    return list_body(req, resp, rows, limit, scope, 11, redemption_json);
}
