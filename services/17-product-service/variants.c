/*
 * variants.c - the variant handlers: the batch lookup that carts and orders price with
 * (GET /products/variants?ids=), and create, JSON Merge Patch and archive of one variant.
 * A variant is never deleted: DELETE archives it so old orders still price, and every write
 * recomputes the product's derived price range in the same transaction.
 */
#include <string.h>

#include "gr/id.h"
#include "gr/time.h"
#include "product.h"

/* ---- batch lookup -------------------------------------------------------------------------- */

/* Splits the ids parameter into at most PRODUCT_IDS_MAX distinct UUIDs. */
static int parse_ids(struct gr_req *req, struct gr_resp *resp, const char *ids, const char **out,
                     size_t *n)
{
    const char *s = ids;

    *n = 0;
    if (ids == NULL || *ids == '\0') {
        gr_resp_field_error(req, resp, "query.ids", "is required");
        return GR_EVALID;
    }
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma != NULL ? (size_t)(comma - s) : strlen(s);
        bool dup = false;

        if (!gr_id_valid(s, len)) {
            gr_resp_field_error(req, resp, "query.ids",
                                "must be a comma-separated list of variant ids (UUIDs)");
            return GR_EVALID;
        }
        for (size_t i = 0; i < *n && !dup; i++)
            dup = strncmp(out[i], s, len) == 0;
        if (!dup) {
            if (*n == PRODUCT_IDS_MAX) {
                gr_resp_field_error(req, resp, "query.ids", "must have at most %d ids",
                                    PRODUCT_IDS_MAX);
                return GR_EVALID;
            }
            out[(*n)++] = gr_arena_strndup(req->arena, s, len);
        }
        if (comma == NULL)
            break;
        s = comma + 1;
    }
    return 0;
}

int variants_batch_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *ids[PRODUCT_IDS_MAX];
    size_t n = 0;
    bool can_read = product_can_read(req);
    json_t *data, *body;
    int rc;

    rc = parse_ids(req, resp, gr_req_query(req, "ids"), ids, &n);
    if (rc < 0)
        return rc;
    data = json_array();
    body = product_own(req, json_pack("{s:o}", "data", data));
    for (size_t i = 0; i < n; i++) {
        struct gr_db_rows *rows = NULL;
        const char *status;
        json_t *v;

        rc = gr_db_query(req->db, req->arena,
                         "SELECT " VARIANT_COLS ", p.status FROM variants v"
                         " JOIN products p ON p.id = v.product_id WHERE v.id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(ids[i]) }, 1, &rows);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(rows) != 1)
            continue;
        status = gr_db_text(rows, 0, VCOL_NCOLS);
        if (!can_read && (strcmp(status, "active") != 0 || gr_db_int(rows, 0, VCOL_ARCHIVED) != 0))
            continue;
        v = product_variant_json(req, rows, 0);
        json_object_set_new(v, "product_status", json_string(status));
        json_array_append(data, v);
    }
    gr_resp_json(resp, 200, json_incref(body));
    return 0;
}

/* ---- writes -------------------------------------------------------------------------------- */

/* Variant @vid of product @pid into *@rows (VARIANT_COLS); GR_ENOTFOUND when absent. */
static int fetch_variant(struct gr_req *req, const char *pid, const char *vid,
                         struct gr_db_rows **rows)
{
    int rc;

    if (!gr_id_valid(vid, strlen(vid)))
        return GR_ENOTFOUND;
    rc =
        gr_db_query(req->db, req->arena,
                    "SELECT " VARIANT_COLS " FROM variants v WHERE v.id = $1 AND v.product_id = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(vid), GR_DB_TEXT(pid) }, 2, rows);
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

/* 422 when product @pid already has PRODUCT_VARIANTS_MAX non-archived variants. */
static int check_room(struct gr_req *req, struct gr_resp *resp, const char *pid)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT COUNT(*) FROM variants WHERE product_id = $1 AND archived = 0",
                     (struct gr_db_val[]){ GR_DB_TEXT(pid) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, 0) < PRODUCT_VARIANTS_MAX)
        return 0;
    return gr_resp_problem(req, resp, GR_EVALID, "too_many_variants",
                           "a product has at most %d variants that are not archived",
                           PRODUCT_VARIANTS_MAX);
}

/*
 * After a variant write: recomputes the product's prices (and updated_at), re-renders its
 * stored documents and publishes product.updated with the new doc_full.
 */
static int product_changed(struct gr_req *req, const char *pid, const char *now)
{
    struct gr_str doc;
    int rc;

    rc = product_refresh(req, pid, now);
    if (rc < 0)
        return rc;
    return product_doc_publish(req, pid, "product.updated", &doc);
}

int variants_create(struct gr_req *req, struct gr_resp *resp)
{
    const char *pid = gr_req_param(req, "id");
    struct gr_json_rd r = product_rd(req, resp);
    struct product_variant_in in;
    struct gr_db_rows *rows = NULL;
    char vid[GR_ID_LEN], now[GR_TIME_STR_LEN];
    json_t *v;
    int rc;

    rc = product_fetch(req, pid, false, &rows);
    if (rc < 0)
        return rc;
    product_read_variant(&r, req->json, "", false, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = check_room(req, resp, pid);
    if (rc < 0)
        return rc;
    rc = product_check_currency(req, resp, pid, NULL, in.price.currency, "/price/currency");
    if (rc < 0)
        return rc;
    product_now(now);
    gr_id_new(vid);
    rc = product_variant_insert(req, resp, pid, &in, now, "/sku", vid);
    if (rc < 0)
        return rc;
    rc = product_changed(req, pid, now);
    if (rc < 0)
        return rc;
    rc = fetch_variant(req, pid, vid, &rows);
    if (rc < 0)
        return rc;
    v = product_variant_json(req, rows, 0);
    product_created(req, resp,
                    gr_arena_printf(req->arena, "/api/v1/products/%s/variants/%s", pid, vid), v);
    return 0;
}

/* The patchable fields of variant row @rows as a JSON object (arena). */
static json_t *editable_doc(struct gr_req *req, const struct gr_db_rows *rows)
{
    static const char *const fields[] = { "sku", "price", "weight_g", "options", "archived" };
    json_t *v = product_variant_json(req, rows, 0);
    json_t *doc = product_own(req, json_object());

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        json_t *x = json_object_get(v, fields[i]);
        if (!json_is_null(x))
            json_object_set_new(doc, fields[i], json_deep_copy(x));
    }
    return doc;
}

/* product.price_changed, published only when the amount or currency really changed. */
static int price_event(struct gr_req *req, const struct gr_db_rows *old, json_t *v)
{
    json_t *price = json_object_get(v, "price");
    const char *cur = json_string_value(json_object_get(price, "currency"));
    long long amount = json_integer_value(json_object_get(price, "amount"));
    json_t *snap;
    struct gr_str data;

    if (amount == gr_db_int(old, 0, VCOL_AMOUNT) &&
        strcmp(cur, gr_db_text(old, 0, VCOL_CURRENCY)) == 0)
        return 0;
    snap = product_own(req, json_deep_copy(v));
    json_object_set_new(snap, "old_price",
                        json_pack("{s:I,s:s}", "amount", (json_int_t)gr_db_int(old, 0, VCOL_AMOUNT),
                                  "currency", gr_db_text(old, 0, VCOL_CURRENCY)));
    if (gr_json_dump(req->arena, snap, &data) < 0)
        return GR_EINTERNAL;
    return product_event(req, "product.price_changed",
                         json_string_value(json_object_get(v, "product_id")), &data);
}

int variants_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "sku",      "price",   "weight_g", "options",
                                        "archived", "version", NULL };
    const char *pid = gr_req_param(req, "id");
    const char *vid = gr_req_param(req, "vid");
    struct gr_json_rd r = product_rd(req, resp);
    struct product_variant_in in;
    struct gr_db_rows *old = NULL, *rows = NULL;
    char now[GR_TIME_STR_LEN] = "";
    long long version = 0, have, changes = 0;
    bool has_version = false, was_archived;
    json_t *before, *doc, *patch, *v;
    int rc;

    rc = fetch_variant(req, pid, vid, &old);
    if (rc < 0)
        return rc;
    have = gr_db_int(old, 0, VCOL_VERSION);
    was_archived = gr_db_int(old, 0, VCOL_ARCHIVED) != 0;
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &version,
                      &has_version);
    before = editable_doc(req, old);
    doc = product_own(req, json_deep_copy(before));
    patch = product_own(req, json_deep_copy(req->json));
    json_object_del(patch, "version");
    if (gr_json_merge_patch(doc, patch) < 0)
        return GR_EINTERNAL;
    product_read_variant(&r, doc, "", true, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = product_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (!json_equal(before, doc)) {
        rc = product_check_currency(req, resp, pid, vid, in.price.currency, "/price/currency");
        if (rc < 0)
            return rc;
        if (was_archived && !in.archived) {
            rc = check_room(req, resp, pid);
            if (rc < 0)
                return rc;
        }
        product_now(now);
        rc = gr_db_exec(
            req->db,
            "UPDATE variants SET sku = $3, price_amount = $4, price_currency = $5,"
            " weight_g = $6, options = $7, archived = $8, version = version + 1,"
            " updated_at = $9 WHERE id = $1 AND version = $2",
            (struct gr_db_val[]){
                GR_DB_TEXT(vid), GR_DB_INT(have), GR_DB_TEXT(in.sku), GR_DB_INT(in.price.amount),
                GR_DB_TEXT(in.price.currency), in.has_weight ? GR_DB_INT(in.weight_g) : GR_DB_NULL,
                GR_DB_TEXT(in.options), GR_DB_INT(in.archived ? 1 : 0), GR_DB_TEXT(now) },
            9, &changes);
        if (rc == GR_ECONFLICT) {
            gr_resp_field_error(req, resp, "/sku", "is already taken");
            return gr_resp_problem(req, resp, GR_ECONFLICT, "sku_taken",
                                   "sku '%s' is already taken", in.sku);
        }
        if (rc < 0)
            return rc;
        if (changes != 1)
            return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                                   "the variant changed concurrently");
    }
    rc = fetch_variant(req, pid, vid, &rows);
    if (rc < 0)
        return rc;
    v = product_variant_json(req, rows, 0);
    if (changes == 1) {
        rc = price_event(req, old, v);
        if (rc < 0)
            return rc;
        rc = product_changed(req, pid, now);
        if (rc < 0)
            return rc;
    }
    gr_resp_json(resp, 200, json_incref(v));
    return 0;
}

int variants_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *pid = gr_req_param(req, "id");
    const char *vid = gr_req_param(req, "vid");
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    int rc;

    rc = fetch_variant(req, pid, vid, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, VCOL_ARCHIVED) == 0) {
        product_now(now);
        rc = gr_db_exec(req->db,
                        "UPDATE variants SET archived = 1, version = version + 1, updated_at = $2"
                        " WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(vid), GR_DB_TEXT(now) }, 2, NULL);
        if (rc < 0)
            return rc;
        rc = product_changed(req, pid, now);
        if (rc < 0)
            return rc;
    }
    gr_resp_json(resp, 204, NULL);
    return 0;
}
