/*
 * product_db.c - what the product, variant and category handlers share: reading the fields
 * that several bodies have (slugs, uuids, flat key/value objects, variants), category rows as
 * JSON, statements assembled from constant SQL fragments, the derived price range of a
 * product, optimistic versions, list cursors and the event hook. Everything a function here
 * allocates belongs to the request arena.
 */
#include <string.h>

#include "gr/auth.h"
#include "gr/bus.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/service.h"
#include "gr/time.h"
#include "product.h"

static void decref(void *v)
{
    json_decref(v);
}

json_t *product_own(struct gr_req *req, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(req->arena, decref, v);
    return v;
}

bool product_can_read(const struct gr_req *req)
{
    return gr_req_can(req, "products:read");
}

void product_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

struct gr_json_rd product_rd(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    return r;
}

bool product_slug_valid(const char *s)
{
    size_t n = strlen(s);
    bool prev_dash = true; /* no leading dash */

    if (n == 0 || n > PRODUCT_SLUG_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-') {
            if (prev_dash)
                return false;
            prev_dash = true;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            prev_dash = false;
        } else {
            return false;
        }
    }
    return !prev_dash;
}

void product_read_slug(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                       unsigned flags, const char **out, bool *present)
{
    const char *s = NULL;
    size_t before = r->errs->n;

    if (gr_json_str(r, obj, ptr, key, flags, 1, PRODUCT_SLUG_MAX, &s, present) < 0 || s == NULL)
        return;
    if (r->errs->n == before && !product_slug_valid(s)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must match ^[a-z0-9]+(-[a-z0-9]+)*$");
        return;
    }
    *out = s;
}

void product_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                       unsigned flags, const char **out, bool *present)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    const char *s = NULL;

    if (v != NULL && !json_is_null(v) &&
        (!json_is_string(v) || !gr_id_valid(json_string_value(v), json_string_length(v)))) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be a UUID");
        if (present != NULL)
            *present = true;
        return;
    }
    if (gr_json_str(r, obj, ptr, key, flags, 36, 36, &s, present) < 0)
        return;
    *out = s;
}

static bool kv_value_ok(const json_t *v)
{
    if (json_is_string(v)) {
        /* Count code points: continuation bytes do not start a character. */
        const char *s = json_string_value(v);
        size_t n = json_string_length(v), chars = 0;
        for (size_t i = 0; i < n; i++)
            if (((unsigned char)s[i] & 0xC0) != 0x80)
                chars++;
        return chars <= PRODUCT_KV_VAL_MAX;
    }
    return json_is_number(v) || json_is_boolean(v);
}

void product_read_kv(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                     const char **out)
{
    json_t *kv = NULL;
    const char *k;
    json_t *v;
    const char *kptr = gr_json_ptr_key(r->a, ptr, key);
    struct gr_str dump;
    size_t before = r->errs->n;

    *out = "{}";
    if (gr_json_obj(r, obj, ptr, key, GR_JSON_NULLABLE, &kv, NULL) < 0 || kv == NULL)
        return;
    if (json_object_size(kv) > PRODUCT_KV_MAX) {
        gr_errs_add(r->errs, r->a, kptr, "must have at most %d keys", PRODUCT_KV_MAX);
        return;
    }
    json_object_foreach(kv, k, v)
    {
        size_t klen = strlen(k);
        if (klen == 0 || klen > PRODUCT_KV_KEY_MAX)
            gr_errs_addk(r->errs, r->a, kptr, k, "keys must be 1..%d characters",
                         PRODUCT_KV_KEY_MAX);
        else if (!kv_value_ok(v))
            gr_errs_addk(r->errs, r->a, kptr, k,
                         "must be a string of at most %d characters, a number or a boolean",
                         PRODUCT_KV_VAL_MAX);
    }
    if (r->errs->n != before)
        return;
    if (gr_json_dump(r->a, kv, &dump) < 0)
        GR_BUG("cannot dump a validated object");
    *out = dump.ptr;
}

static bool sku_valid(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

void product_read_variant(const struct gr_json_rd *r, json_t *obj, const char *ptr,
                          bool allow_archived, struct product_variant_in *out)
{
    static const char *const keys[] = { "sku", "price", "weight_g", "options", "archived", NULL };
    static const char *const keys_new[] = { "sku", "price", "weight_g", "options", NULL };
    size_t before;

    memset(out, 0, sizeof(*out));
    out->options = "{}";
    if (!json_is_object(obj)) {
        gr_errs_add(r->errs, r->a, ptr, "must be an object");
        return;
    }
    (void)gr_json_only(r, obj, ptr, allow_archived ? keys : keys_new);
    before = r->errs->n;
    (void)gr_json_str(r, obj, ptr, "sku", GR_JSON_REQUIRED, 1, PRODUCT_SKU_MAX, &out->sku, NULL);
    if (r->errs->n == before && out->sku != NULL && !sku_valid(out->sku))
        gr_errs_addk(r->errs, r->a, ptr, "sku", "must contain only A-Z a-z 0-9 . _ -");
    (void)gr_json_money(r, obj, ptr, "price", GR_JSON_REQUIRED, &out->price, NULL);
    (void)gr_json_int(r, obj, ptr, "weight_g", GR_JSON_NULLABLE, 0, PRODUCT_WEIGHT_MAX,
                      &out->weight_g, &out->has_weight);
    if (out->has_weight && json_is_null(json_object_get(obj, "weight_g")))
        out->has_weight = false;
    product_read_kv(r, obj, ptr, "options", &out->options);
    if (allow_archived)
        (void)gr_json_bool(r, obj, ptr, "archived", GR_JSON_OPTIONAL, &out->archived, NULL);
}

/* A new reference: the text at @col, or JSON null. */
static json_t *text_or_null(const struct gr_db_rows *rows, size_t i, size_t col)
{
    const char *s = gr_db_text(rows, i, col);
    return s != NULL ? json_string(s) : json_null();
}

json_t *product_category_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i)
{
    json_t *c = product_own(req, json_object());

    json_object_set_new(c, "id", text_or_null(rows, i, 0));
    json_object_set_new(c, "parent_id", text_or_null(rows, i, 1));
    json_object_set_new(c, "name", text_or_null(rows, i, 2));
    json_object_set_new(c, "slug", text_or_null(rows, i, 3));
    json_object_set_new(c, "path", text_or_null(rows, i, 4));
    json_object_set_new(c, "version", json_integer(gr_db_int(rows, i, 5)));
    json_object_set_new(c, "created_at", text_or_null(rows, i, 6));
    json_object_set_new(c, "updated_at", text_or_null(rows, i, 7));
    return c;
}

void product_sql_init(struct product_sql *q, const char *head)
{
    q->len = 0;
    q->nparams = 0;
    q->nconds = 0;
    q->text[0] = '\0';
    product_sql_add(q, head, NULL, 0);
}

/* Appends "$<k>" for parameter number @k. */
static void sql_param_ref(struct product_sql *q, size_t k)
{
    char tmp[8];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + k % 10);
        k /= 10;
    } while (k != 0);
    tmp[--i] = '$';
    if (sizeof(tmp) - i >= PRODUCT_SQL_MAX - q->len)
        GR_BUG("product sql text too long");
    memcpy(q->text + q->len, tmp + i, sizeof(tmp) - i);
    q->len += sizeof(tmp) - i;
}

void product_sql_add(struct product_sql *q, const char *frag, const struct gr_db_val *vals,
                     size_t n)
{
    size_t used = 0;

    for (; *frag != '\0'; frag++) {
        if (*frag != '?') {
            if (q->len + 1 >= PRODUCT_SQL_MAX)
                GR_BUG("product sql text too long");
            q->text[q->len++] = *frag;
            continue;
        }
        if (used == n || q->nparams == PRODUCT_SQL_PARAMS)
            GR_BUG("product sql fragment has more '?' than values");
        q->params[q->nparams++] = vals[used++];
        sql_param_ref(q, q->nparams);
    }
    if (used != n)
        GR_BUG("product sql fragment has fewer '?' than values");
    q->text[q->len] = '\0';
}

void product_sql_cond(struct product_sql *q, const char *frag, const struct gr_db_val *vals,
                      size_t n)
{
    product_sql_add(q, q->nconds++ == 0 ? " WHERE " : " AND ", NULL, 0);
    product_sql_add(q, frag, vals, n);
}

int product_fetch(struct gr_req *req, const char *key, bool by_slug, struct gr_db_rows **rows)
{
    int rc;

    if (by_slug)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " PRODUCT_COLS " FROM products p WHERE p.slug = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, rows);
    else if (gr_id_valid(key, strlen(key)))
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " PRODUCT_COLS " FROM products p WHERE p.id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, rows);
    else
        return GR_ENOTFOUND;
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

int product_refresh(struct gr_req *req, const char *id, const char *now)
{
    return gr_db_exec(
        req->db,
        "UPDATE products SET"
        " min_price = (SELECT MIN(price_amount) FROM variants WHERE product_id = $1 AND archived = "
        "0),"
        " max_price = (SELECT MAX(price_amount) FROM variants WHERE product_id = $1 AND archived = "
        "0),"
        " currency = (SELECT MIN(price_currency) FROM variants WHERE product_id = $1),"
        " updated_at = $2"
        " WHERE id = $1",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, NULL);
}

int product_check_currency(struct gr_req *req, struct gr_resp *resp, const char *product_id,
                           const char *except_vid, const char *currency, const char *field)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT price_currency FROM variants WHERE product_id = $1"
                     " AND id <> $2 AND price_currency <> $3 LIMIT 1",
                     (struct gr_db_val[]){ GR_DB_TEXT(product_id),
                                           GR_DB_TEXT(except_vid != NULL ? except_vid : ""),
                                           GR_DB_TEXT(currency) },
                     3, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return 0;
    gr_resp_field_error(req, resp, field, "must be '%s' like the product's other variants",
                        gr_db_text(rows, 0, 0));
    return GR_EVALID;
}

int product_event(struct gr_req *req, const char *type, const char *product_id,
                  const struct gr_str *data)
{
    return gr_req_emit(req, type, product_id, data->ptr);
}

int product_check_version(struct gr_req *req, struct gr_resp *resp, bool present, long long want,
                          long long have)
{
    if (!present || want == have)
        return 0;
    return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                           "version %lld is stale: the current version is %lld", want, have);
}

void product_created(struct gr_req *req, struct gr_resp *resp, const char *path, json_t *body)
{
    gr_resp_header(req, resp, "Location", path);
    gr_resp_json(resp, 201, json_incref(body));
}

int product_variant_insert(struct gr_req *req, struct gr_resp *resp, const char *product_id,
                           const struct product_variant_in *v, const char *now, const char *field,
                           const char *id)
{
    int rc;

    rc =
        gr_db_exec(req->db,
                   "INSERT INTO variants (id, product_id, sku, price_amount, price_currency,"
                   " weight_g, options, archived, version, created_at, updated_at)"
                   " VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 1, $8, $8)",
                   (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(product_id), GR_DB_TEXT(v->sku),
                                         GR_DB_INT(v->price.amount), GR_DB_TEXT(v->price.currency),
                                         v->has_weight ? GR_DB_INT(v->weight_g) : GR_DB_NULL,
                                         GR_DB_TEXT(v->options), GR_DB_TEXT(now) },
                   8, NULL);
    if (rc == GR_ECONFLICT) {
        gr_resp_field_error(req, resp, field, "is already taken");
        return gr_resp_problem(req, resp, GR_ECONFLICT, "sku_taken", "sku '%s' is already taken",
                               v->sku);
    }
    return rc;
}

int product_cursor_make(struct gr_req *req, const char *scope, json_t *key, const char *id,
                        const char **out)
{
    json_t *payload = product_own(req, json_pack("[o,s]", key, id));
    struct gr_str dump;

    if (gr_json_dump(req->arena, payload, &dump) < 0)
        return GR_EINTERNAL;
    return gr_cursor_encode(&req->ctx->cursor_key, req->arena, scope, dump.ptr, dump.len, out);
}

int product_cursor_read(struct gr_req *req, const char *scope, const char *cursor, bool int_key,
                        struct gr_db_val *key, struct gr_db_val *id)
{
    const char *payload = NULL;
    size_t len = 0;
    json_t *doc = NULL;
    json_t *k, *i;

    if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, &len) < 0)
        return GR_EINVAL;
    if (gr_json_parse(req->arena, payload, len, &doc, NULL) < 0 || !json_is_array(doc) ||
        json_array_size(doc) != 2)
        return GR_EINVAL;
    k = json_array_get(doc, 0);
    i = json_array_get(doc, 1);
    if (!json_is_string(i) || (int_key ? !json_is_integer(k) : !json_is_string(k)))
        return GR_EINVAL;
    *id = GR_DB_TEXT(json_string_value(i));
    *key = int_key ? GR_DB_INT(json_integer_value(k)) : GR_DB_TEXT(json_string_value(k));
    return 0;
}
