/*
 * products.c - the product handlers: the filtered, sorted and keyset-paginated list, lookup by
 * id or slug, create (with nested variants, in one transaction), JSON Merge Patch updates with
 * optimistic versions, delete (a draft is removed, anything else archived), and the image
 * list of a product. Writes run inside the route's transaction (GR_R_TX), so every early
 * error return leaves no trace.
 */
#include <stdio.h>
#include <string.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/service.h"
#include "gr/time.h"
#include "product.h"

/* ---- list ---------------------------------------------------------------------------------- */

/*
 * The list query is assembled from the constant fragments below, for the filters present only
 * (product_sql_*): a catch-all "($n IS NULL OR col = $n)" would hide every index from the
 * planner. Callers without products:read see active products only. Every sort has an index
 * led by status (migrations 0001 and 0002), so the public list (and any status filter) reads
 * one index range in order and stops after limit + 1 rows; the keyset condition of a cursor
 * narrows that range. An admin list without a status filter uses (created_at, id) for the
 * default order and sorts for the others.
 *
 * A row is the product's stored document for the caller (doc_full with products:read, else
 * doc_public) and the columns that cursors are made of: the page is those documents joined.
 */
#define LIST_COLS        "SELECT p.id, p.title, p.created_at, p.min_price, "
#define LIST_HEAD_PUBLIC LIST_COLS "p.doc_public FROM products p"
#define LIST_HEAD_FULL   LIST_COLS "p.doc_full FROM products p"

#define F_ACTIVE "p.status = 'active'"
#define F_STATUS "p.status = ?"
#define F_BRAND  "p.brand = ?"
#define F_CATEGORY                                                                                 \
    "p.category_id IN (SELECT d.id FROM categories d, categories a WHERE a.id = ?"                 \
    " AND d.path LIKE (a.path || '%'))"
#define F_MIN_PRICE "p.max_price >= ?"
#define F_MAX_PRICE "p.min_price <= ?"
#define F_Q         "lower(p.title) LIKE ? ESCAPE '\\'"
#define F_LIMIT     " LIMIT ?"

/* Sort keys: products without a price sort last in both price orders. */
#define KEY_PRICE_ASC  "COALESCE(p.min_price, 100000000)"
#define KEY_PRICE_DESC "COALESCE(p.min_price, -1)"

#define PRODUCT_LIST_MAX 100 /* products of one page: the largest limit of gr_req_limit */

/* Columns of a list row. */
enum { LCOL_ID = 0, LCOL_TITLE = 1, LCOL_CREATED = 2, LCOL_MIN_PRICE = 3, LCOL_DOC = 4 };

enum key_kind { KEY_TEXT, KEY_INT };

/*
 * The keyset condition of a cursor is (key, id) beyond (?, ?) as a row value for text keys.
 * SQLite uses a row value as an index range only on plain columns, so the price keys, which
 * are expressions, spell it out as key >= ? AND (key > ? OR id > ?), taking the key twice.
 */
struct sort_def {
    const char *name;
    enum key_kind kind;
    const char *after;
    const char *order;
};

static const struct sort_def sorts[] = {
    { "-created_at", KEY_TEXT, "(p.created_at, p.id) < (?, ?)",
      " ORDER BY p.created_at DESC, p.id DESC" },
    { "created_at", KEY_TEXT, "(p.created_at, p.id) > (?, ?)", " ORDER BY p.created_at, p.id" },
    { "price", KEY_INT, KEY_PRICE_ASC " >= ? AND (" KEY_PRICE_ASC " > ? OR p.id > ?)",
      " ORDER BY " KEY_PRICE_ASC ", p.id" },
    { "-price", KEY_INT, KEY_PRICE_DESC " <= ? AND (" KEY_PRICE_DESC " < ? OR p.id < ?)",
      " ORDER BY " KEY_PRICE_DESC " DESC, p.id DESC" },
    { "title", KEY_TEXT, "(p.title, p.id) > (?, ?)", " ORDER BY p.title, p.id" },
    { "-title", KEY_TEXT, "(p.title, p.id) < (?, ?)", " ORDER BY p.title DESC, p.id DESC" },
};

struct list_q {
    const char *status, *brand, *category, *q, *qpat, *cursor;
    long long min_price, max_price;
    bool has_min, has_max;
    const struct sort_def *sort;
    int limit;
};

/* "%abc%" for a case-insensitive substring match, with LIKE's wildcards escaped. */
static const char *like_pattern(struct gr_arena *a, const char *q)
{
    size_t n = strlen(q);
    char *out = gr_arena_alloc(a, 2 * n + 3);
    size_t j = 0;

    out[j++] = '%';
    for (size_t i = 0; i < n; i++) {
        char c = q[i];
        if (c == '%' || c == '_' || c == '\\')
            out[j++] = '\\';
        out[j++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[j++] = '%';
    out[j] = '\0';
    return out;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* Reads the query string; every bad parameter adds a "query.<name>" error. */
static void list_parse(struct gr_req *req, struct gr_resp *resp, struct list_q *lq)
{
    const char *sort = gr_req_query(req, "sort");
    const char *s;

    memset(lq, 0, sizeof(*lq));
    lq->sort = &sorts[0];
    if (gr_req_limit(req, resp, &lq->limit) < 0)
        lq->limit = 20;
    if (gr_req_query_int(req, resp, "min_price", 0, GR_MONEY_MAX_AMOUNT, &lq->min_price,
                         &lq->has_min) < 0)
        lq->has_min = false;
    if (gr_req_query_int(req, resp, "max_price", 0, GR_MONEY_MAX_AMOUNT, &lq->max_price,
                         &lq->has_max) < 0)
        lq->has_max = false;
    if (sort != NULL) {
        lq->sort = NULL;
        for (size_t i = 0; i < sizeof(sorts) / sizeof(sorts[0]); i++)
            if (strcmp(sort, sorts[i].name) == 0)
                lq->sort = &sorts[i];
        if (lq->sort == NULL) {
            gr_resp_field_error(req, resp, "query.sort",
                                "must be one of -created_at, created_at, price, -price, title, "
                                "-title");
            lq->sort = &sorts[0];
        }
    }
    s = gr_req_query(req, "category");
    if (s != NULL && !gr_id_valid(s, strlen(s)))
        gr_resp_field_error(req, resp, "query.category", "must be a category id (UUID)");
    lq->category = s;
    s = gr_req_query(req, "brand");
    if (s != NULL && (*s == '\0' || utf8_chars(s) > PRODUCT_BRAND_MAX))
        gr_resp_field_error(req, resp, "query.brand", "must be 1..%d characters",
                            PRODUCT_BRAND_MAX);
    lq->brand = s;
    s = gr_req_query(req, "q");
    if (s != NULL && (*s == '\0' || utf8_chars(s) > PRODUCT_TITLE_MAX))
        gr_resp_field_error(req, resp, "query.q", "must be 1..%d characters", PRODUCT_TITLE_MAX);
    lq->q = s;
    lq->qpat = s != NULL ? like_pattern(req->arena, s) : NULL;
    s = gr_req_query(req, "status");
    if (s != NULL && strcmp(s, "draft") != 0 && strcmp(s, "active") != 0 &&
        strcmp(s, "archived") != 0)
        gr_resp_field_error(req, resp, "query.status", "must be draft, active or archived");
    else if (s != NULL && strcmp(s, "active") != 0 && !product_can_read(req))
        gr_resp_field_error(req, resp, "query.status",
                            "only 'active' is allowed without products:read");
    lq->status = s;
    lq->cursor = gr_req_query(req, "cursor");
}

/* The cursor scope: the endpoint plus every filter and the sort, length-prefixed. */
static const char *list_scope(struct gr_req *req, const struct list_q *lq)
{
#define F(x) strlen((x) != NULL ? (x) : ""), (x) != NULL ? (x) : ""
    return gr_arena_printf(req->arena,
                           "GET /api/v1/products\ncategory=%zu:%s\nbrand=%zu:%s\nstatus=%zu:%s\n"
                           "q=%zu:%s\nmin=%d:%lld\nmax=%d:%lld\nsort=%s",
                           F(lq->category), F(lq->brand), F(lq->status), F(lq->q), lq->has_min,
                           lq->min_price, lq->has_max, lq->max_price, lq->sort->name);
#undef F
}

/* The cursor after row @last of a page, for the sort @sort. */
static int cursor_make(struct gr_req *req, const char *scope, const struct sort_def *sort,
                       const struct gr_db_rows *rows, size_t last, const char **out)
{
    const char *id = gr_db_text(rows, last, LCOL_ID);
    json_t *key;

    if (sort->kind == KEY_INT) {
        long long k;
        if (gr_db_isnull(rows, last, LCOL_MIN_PRICE))
            k = strcmp(sort->name, "price") == 0 ? 100000000 : -1;
        else
            k = gr_db_int(rows, last, LCOL_MIN_PRICE);
        key = json_integer(k);
    } else {
        size_t col = strstr(sort->name, "title") != NULL ? LCOL_TITLE : LCOL_CREATED;
        key = json_string(gr_db_text(rows, last, col));
    }
    return product_cursor_make(req, scope, key, id, out);
}

/* The list statement for @lq into @q: only the filters present, then sort and limit. */
static void list_sql(const struct list_q *lq, bool can_read, const struct gr_db_val *after,
                     struct product_sql *q)
{
    product_sql_init(q, can_read ? LIST_HEAD_FULL : LIST_HEAD_PUBLIC);
    /* Without products:read, list_parse let only status=active through. */
    if (lq->status != NULL)
        product_sql_cond(q, F_STATUS, (struct gr_db_val[]){ GR_DB_TEXT(lq->status) }, 1);
    else if (!can_read)
        product_sql_cond(q, F_ACTIVE, NULL, 0);
    if (lq->brand != NULL)
        product_sql_cond(q, F_BRAND, (struct gr_db_val[]){ GR_DB_TEXT(lq->brand) }, 1);
    if (lq->category != NULL)
        product_sql_cond(q, F_CATEGORY, (struct gr_db_val[]){ GR_DB_TEXT(lq->category) }, 1);
    if (lq->has_min)
        product_sql_cond(q, F_MIN_PRICE, (struct gr_db_val[]){ GR_DB_INT(lq->min_price) }, 1);
    if (lq->has_max)
        product_sql_cond(q, F_MAX_PRICE, (struct gr_db_val[]){ GR_DB_INT(lq->max_price) }, 1);
    if (lq->qpat != NULL)
        product_sql_cond(q, F_Q, (struct gr_db_val[]){ GR_DB_TEXT(lq->qpat) }, 1);
    if (after != NULL && lq->sort->kind == KEY_INT)
        product_sql_cond(q, lq->sort->after, (struct gr_db_val[]){ after[0], after[0], after[1] },
                         3);
    else if (after != NULL)
        product_sql_cond(q, lq->sort->after, after, 2);
    product_sql_add(q, lq->sort->order, NULL, 0);
    product_sql_add(q, F_LIMIT, (struct gr_db_val[]){ GR_DB_INT(lq->limit + 1) }, 1);
}

/* The document of list row @i for the caller; rendered on the fly while it is still NULL. */
static int list_doc(struct gr_req *req, const struct gr_db_rows *rows, size_t i, bool can_read,
                    struct gr_str *doc)
{
    struct product_docs d;
    int rc;

    if (!gr_db_isnull(rows, i, LCOL_DOC)) {
        doc->ptr = gr_db_text(rows, i, LCOL_DOC);
        doc->len = strlen(doc->ptr);
        return 0;
    }
    rc = product_doc_render(req->db, req->arena, gr_db_text(rows, i, LCOL_ID), false, &d);
    if (rc < 0)
        return rc;
    *doc = can_read ? d.full : d.pub;
    return 0;
}

int products_list(struct gr_req *req, struct gr_resp *resp)
{
    struct list_q lq;
    struct gr_db_val after[2];
    struct product_sql q;
    struct gr_db_rows *rows = NULL;
    struct gr_str docs[PRODUCT_LIST_MAX];
    struct product_out *o;
    const char *scope, *next = NULL;
    bool can_read = product_can_read(req);
    size_t n, size = 0;
    int rc;

    list_parse(req, resp, &lq);
    if (resp->errs.n > 0)
        return GR_EVALID;
    scope = list_scope(req, &lq);
    if (lq.cursor != NULL && product_cursor_read(req, scope, lq.cursor, lq.sort->kind == KEY_INT,
                                                 &after[0], &after[1]) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");

    list_sql(&lq, can_read, lq.cursor != NULL ? after : NULL, &q);
    rc = gr_db_query(req->db, req->arena, q.text, q.params, q.nparams, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    if (n > (size_t)lq.limit) {
        n = (size_t)lq.limit;
        rc = cursor_make(req, scope, lq.sort, rows, n - 1, &next);
        if (rc < 0)
            return rc;
    }
    GR_ASSERT(n <= PRODUCT_LIST_MAX);
    for (size_t k = 0; k < n; k++) {
        rc = list_doc(req, rows, k, can_read, &docs[k]);
        if (rc < 0)
            return rc;
        size += docs[k].len + 1;
    }

    o = product_out_new(req->arena, size + 256);
    PRODUCT_OUT_LIT(o, "{\"data\":[");
    for (size_t k = 0; k < n; k++) {
        if (k != 0)
            product_out_mem(o, ",", 1);
        product_out_mem(o, docs[k].ptr, docs[k].len);
    }
    if (next != NULL)
        PRODUCT_OUT_LIT(o, "],\"has_more\":true,\"next_cursor\":");
    else
        PRODUCT_OUT_LIT(o, "],\"has_more\":false,\"next_cursor\":");
    product_out_str(o, next);
    product_out_mem(o, "}", 1);
    return product_out_send(resp, o, 200);
}

/* ---- get ----------------------------------------------------------------------------------- */

int products_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *key = gr_req_param(req, "id");
    bool can_read = product_can_read(req);
    const char *status = NULL;
    struct gr_str doc;
    int rc;

    rc = product_doc_get(req, key, !gr_id_valid(key, strlen(key)), can_read, &doc, &status);
    if (rc < 0)
        return rc;
    if (!can_read && strcmp(status, "active") != 0)
        return GR_ENOTFOUND;
    product_doc_send(resp, 200, &doc);
    return 0;
}

/* ---- create and patch ---------------------------------------------------------------------- */

/* The editable fields of a product, read from a create body or a patched document. */
struct product_in {
    const char *title, *slug, *description, *brand, *status, *category_id, *attributes;
};

static void read_product(const struct gr_json_rd *r, json_t *doc, struct product_in *in)
{
    memset(in, 0, sizeof(*in));
    in->status = "draft";
    (void)gr_json_str(r, doc, "", "title", GR_JSON_REQUIRED, 1, PRODUCT_TITLE_MAX, &in->title,
                      NULL);
    product_read_slug(r, doc, "", "slug", GR_JSON_REQUIRED, &in->slug, NULL);
    if (in->slug != NULL && strcmp(in->slug, "variants") == 0) {
        gr_errs_add(r->errs, r->a, "/slug", "'variants' is reserved");
        in->slug = NULL;
    }
    (void)gr_json_str(r, doc, "", "description", GR_JSON_NULLABLE, 0, PRODUCT_DESC_MAX,
                      &in->description, NULL);
    (void)gr_json_str(r, doc, "", "brand", GR_JSON_NULLABLE, 1, PRODUCT_BRAND_MAX, &in->brand,
                      NULL);
    {
        const char *st = NULL;
        size_t before = r->errs->n;
        (void)gr_json_str(r, doc, "", "status", GR_JSON_OPTIONAL, 1, 20, &st, NULL);
        if (st != NULL && r->errs->n == before) {
            if (strcmp(st, "draft") == 0 || strcmp(st, "active") == 0 ||
                strcmp(st, "archived") == 0)
                in->status = st;
            else
                gr_errs_add(r->errs, r->a, "/status", "must be draft, active or archived");
        }
    }
    product_read_uuid(r, doc, "", "category_id", GR_JSON_NULLABLE, &in->category_id, NULL);
    product_read_kv(r, doc, "", "attributes", &in->attributes);
}

/* 422 at /category_id when @id names no category. */
static int check_category(struct gr_req *req, struct gr_resp *resp, const char *id)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if (id == NULL)
        return 0;
    rc = gr_db_query(req->db, req->arena, "SELECT id FROM categories WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1)
        return 0;
    gr_resp_field_error(req, resp, "/category_id", "no such category");
    return GR_EVALID;
}

/*
 * Slug and SKU uniqueness is left to the UNIQUE constraints: the INSERT or UPDATE that hits one
 * fails with GR_ECONFLICT, which becomes a 409 with the contract's type. A SELECT beforehand
 * would only add a read that PostgreSQL's serializable mode turns into serialization failures
 * under concurrent creates.
 */
static int slug_taken(struct gr_req *req, struct gr_resp *resp, const char *slug)
{
    gr_resp_field_error(req, resp, "/slug", "is already taken");
    return gr_resp_problem(req, resp, GR_ECONFLICT, "slug_taken", "slug '%s' is already taken",
                           slug);
}

/* Reads the "variants" array of a create body into @vs (at most PRODUCT_VARIANTS_MAX). */
static size_t read_variants(struct gr_req *req, const struct gr_json_rd *r, json_t *body,
                            struct product_variant_in *vs)
{
    json_t *arr = NULL;
    const char *currency = NULL; /* of the first valid variant */
    size_t n;

    if (gr_json_arr(r, body, "", "variants", GR_JSON_OPTIONAL, PRODUCT_VARIANTS_MAX, &arr, NULL) <
            0 ||
        arr == NULL)
        return 0;
    n = json_array_size(arr);
    for (size_t i = 0; i < n; i++) {
        const char *ptr = gr_json_ptr_idx(req->arena, "/variants", i);
        size_t before = r->errs->n;
        product_read_variant(r, json_array_get(arr, i), ptr, false, &vs[i]);
        if (r->errs->n != before)
            continue;
        for (size_t j = 0; j < i; j++) {
            if (vs[j].sku != NULL && strcmp(vs[j].sku, vs[i].sku) == 0) {
                gr_errs_add(r->errs, r->a, gr_json_ptr_key(req->arena, ptr, "sku"),
                            "duplicates /variants/%zu/sku", j);
                break;
            }
        }
        if (currency == NULL)
            currency = vs[i].price.currency;
        else if (strcmp(currency, vs[i].price.currency) != 0)
            gr_errs_add(r->errs, r->a, gr_arena_printf(req->arena, "%s/price/currency", ptr),
                        "must be '%s' like the other variants", currency);
    }
    return n;
}

/* The lowest and the highest price of the @n (>= 1) variants @vs. */
static long long price_min(const struct product_variant_in *vs, size_t n)
{
    long long m = vs[0].price.amount;

    for (size_t i = 1; i < n; i++)
        if (vs[i].price.amount < m)
            m = vs[i].price.amount;
    return m;
}

static long long price_max(const struct product_variant_in *vs, size_t n)
{
    long long m = vs[0].price.amount;

    for (size_t i = 1; i < n; i++)
        if (vs[i].price.amount > m)
            m = vs[i].price.amount;
    return m;
}

/*
 * The rows product_doc_render would load for the new product @id: PRODUCT_COLS then
 * VARIANT_COLS per variant, exactly the text the INSERTs below store, so the documents are
 * rendered before the transaction takes the write lock and go into the INSERT itself.
 */
static struct product_rows new_rows(struct gr_req *req, const char *id, const struct product_in *in,
                                    const struct product_variant_in *vs, size_t nv,
                                    char (*vids)[GR_ID_LEN], const char *now)
{
    struct gr_arena *a = req->arena;
    struct gr_db_rows *r = gr_db_rows_new(a, nv > 0 ? nv : 1, PCOL_NCOLS + VCOL_NCOLS);
    const char *min = nv > 0 ? gr_arena_printf(a, "%lld", price_min(vs, nv)) : NULL;
    const char *max = nv > 0 ? gr_arena_printf(a, "%lld", price_max(vs, nv)) : NULL;

    for (size_t i = 0; i < (nv > 0 ? nv : 1); i++) {
        const char *p[PCOL_NCOLS] = { id,
                                      in->title,
                                      in->slug,
                                      in->description,
                                      in->brand,
                                      in->status,
                                      in->category_id,
                                      in->attributes,
                                      min,
                                      max,
                                      nv > 0 ? vs[0].price.currency : NULL,
                                      "1",
                                      now,
                                      now,
                                      NULL };

        for (size_t c = 0; c < PCOL_NCOLS; c++)
            gr_db_rows_set(r, i, c, p[c]);
        if (nv == 0)
            break;
        {
            const struct product_variant_in *v = &vs[i];
            const char *vc[VCOL_NCOLS] = {
                vids[i],
                id,
                v->sku,
                gr_arena_printf(a, "%lld", v->price.amount),
                v->price.currency,
                v->has_weight ? gr_arena_printf(a, "%lld", v->weight_g) : NULL,
                v->options,
                "0",
                "1",
                now,
                now,
            };
            for (size_t c = 0; c < VCOL_NCOLS; c++)
                gr_db_rows_set(r, i, PCOL_NCOLS + c, vc[c]);
        }
    }
    return (struct product_rows){ .rows = r, .nvariants = nv, .images = NULL };
}

int products_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "title",      "slug",     "description",
                                        "brand",      "status",   "category_id",
                                        "attributes", "variants", NULL };
    struct gr_json_rd r = product_rd(req, resp);
    struct product_variant_in vs[PRODUCT_VARIANTS_MAX];
    char vids[PRODUCT_VARIANTS_MAX][GR_ID_LEN];
    struct product_in in;
    struct product_docs docs;
    struct product_rows rows;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    size_t nv;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    read_product(&r, req->json, &in);
    nv = read_variants(req, &r, req->json, vs);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = check_category(req, resp, in.category_id);
    if (rc < 0)
        return rc;

    gr_id_new(id);
    for (size_t i = 0; i < nv; i++)
        gr_id_new(vids[i]);
    product_now(now);
    rows = new_rows(req, id, &in, vs, nv, vids, now);
    rc = product_doc_render_rows(req->arena, &rows, &docs);
    if (rc < 0)
        return rc;
    /*
     * The derived price range goes into the INSERT itself: every new variant counts (none is
     * archived) and read_variants checked that they share one currency, so this is what
     * product_refresh would compute. The documents too: nothing is read back.
     */
    rc = gr_db_exec(req->db,
                    "INSERT INTO products (id, title, slug, description, brand, status,"
                    " category_id, attributes, min_price, max_price, currency, version,"
                    " created_at, updated_at, doc_public, doc_full)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12, $13, $14)",
                    (struct gr_db_val[]){
                        GR_DB_TEXT(id), GR_DB_TEXT(in.title), GR_DB_TEXT(in.slug),
                        GR_DB_TEXT(in.description), GR_DB_TEXT(in.brand), GR_DB_TEXT(in.status),
                        GR_DB_TEXT(in.category_id), GR_DB_TEXT(in.attributes),
                        nv > 0 ? GR_DB_INT(price_min(vs, nv)) : GR_DB_NULL,
                        nv > 0 ? GR_DB_INT(price_max(vs, nv)) : GR_DB_NULL,
                        GR_DB_TEXT(nv > 0 ? vs[0].price.currency : NULL), GR_DB_TEXT(now),
                        GR_DB_TEXT(docs.pub.ptr), GR_DB_TEXT(docs.full.ptr) },
                    14, NULL);
    if (rc == GR_ECONFLICT)
        return slug_taken(req, resp, in.slug);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < nv; i++) {
        rc = product_variant_insert(req, resp, id, &vs[i], now,
                                    gr_arena_printf(req->arena, "/variants/%zu/sku", i), vids[i]);
        if (rc < 0)
            return rc;
    }
    rc = product_event(req, "product.created", id, &docs.full);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location", gr_arena_printf(req->arena, "/api/v1/products/%s", id));
    product_doc_send(resp, 201, &docs.full);
    return 0;
}

/* The editable fields of the product row @rows as a JSON object (arena). */
static json_t *editable_doc(struct gr_req *req, const struct gr_db_rows *rows)
{
    static const char *const fields[] = { "title",  "slug",        "description", "brand",
                                          "status", "category_id", "attributes" };
    json_t *p = product_row_json(req, rows, 0);
    json_t *doc = product_own(req, json_object());

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        json_t *v = json_object_get(p, fields[i]);
        if (!json_is_null(v))
            json_object_set_new(doc, fields[i], json_deep_copy(v));
    }
    return doc;
}

/* A deep copy of the PATCH body without "version" (arena), for gr_json_merge_patch. */
static json_t *patch_of(struct gr_req *req)
{
    json_t *patch = product_own(req, json_deep_copy(req->json));

    json_object_del(patch, "version");
    return patch;
}

int products_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "title",      "slug",    "description",
                                        "brand",      "status",  "category_id",
                                        "attributes", "version", NULL };
    const char *id = gr_req_param(req, "id");
    struct gr_json_rd r = product_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    struct product_in in;
    char now[GR_TIME_STR_LEN];
    long long version = 0, have;
    bool has_version = false;
    json_t *before, *doc;
    struct gr_str full;
    long long changes = 0;
    int rc;

    rc = product_fetch(req, id, false, &rows);
    if (rc < 0)
        return rc;
    have = gr_db_int(rows, 0, PCOL_VERSION);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &version,
                      &has_version);
    before = editable_doc(req, rows);
    doc = product_own(req, json_deep_copy(before));
    if (gr_json_merge_patch(doc, patch_of(req)) < 0)
        return GR_EINTERNAL;
    read_product(&r, doc, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = product_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (json_equal(before, doc)) {
        rc = product_doc_get(req, id, false, true, &full, NULL);
        if (rc < 0)
            return rc;
        product_doc_send(resp, 200, &full);
        return 0;
    }
    rc = check_category(req, resp, in.category_id);
    if (rc < 0)
        return rc;

    product_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE products SET title = $2, slug = $3, description = $4, brand = $5,"
                    " status = $6, category_id = $7, attributes = $8, version = version + 1,"
                    " updated_at = $9 WHERE id = $1 AND version = $10",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(in.title), GR_DB_TEXT(in.slug),
                                          GR_DB_TEXT(in.description), GR_DB_TEXT(in.brand),
                                          GR_DB_TEXT(in.status), GR_DB_TEXT(in.category_id),
                                          GR_DB_TEXT(in.attributes), GR_DB_TEXT(now),
                                          GR_DB_INT(have) },
                    10, &changes);
    if (rc == GR_ECONFLICT)
        return slug_taken(req, resp, in.slug);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the product changed concurrently");
    rc = product_doc_publish(req, id, "product.updated", &full);
    if (rc < 0)
        return rc;
    product_doc_send(resp, 200, &full);
    return 0;
}

/* ---- delete -------------------------------------------------------------------------------- */

/* Removes a draft product and everything that hangs off it. */
static int remove_product(struct gr_req *req, const char *id)
{
    static const char *const sql[] = {
        "DELETE FROM product_images WHERE product_id = $1",
        "DELETE FROM variants WHERE product_id = $1",
        "DELETE FROM products WHERE id = $1",
    };
    int rc = 0;

    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]) && rc == 0; i++)
        rc = gr_db_exec(req->db, sql[i], (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    return rc;
}

int products_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    const char *status;
    char now[GR_TIME_STR_LEN];
    struct gr_str doc;
    int rc;

    rc = product_fetch(req, id, false, &rows);
    if (rc < 0)
        return rc;
    status = gr_db_text(rows, 0, PCOL_STATUS);
    if (strcmp(status, "draft") == 0) {
        rc = product_doc_get(req, id, false, true, &doc, NULL);
        if (rc < 0)
            return rc;
        rc = remove_product(req, id);
        if (rc < 0)
            return rc;
        rc = product_event(req, "product.deleted", id, &doc);
        if (rc < 0)
            return rc;
        gr_resp_json(resp, 204, NULL);
        return 0;
    }
    if (strcmp(status, "archived") == 0) {
        rc = product_doc_get(req, id, false, true, &doc, NULL);
        if (rc < 0)
            return rc;
        product_doc_send(resp, 200, &doc);
        return 0;
    }
    product_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE products SET status = 'archived', version = version + 1,"
                    " updated_at = $2 WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, NULL);
    if (rc < 0)
        return rc;
    rc = product_doc_publish(req, id, "product.updated", &doc);
    if (rc < 0)
        return rc;
    product_doc_send(resp, 200, &doc);
    return 0;
}

/* ---- images -------------------------------------------------------------------------------- */

int products_image_add(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "file_id", "position", NULL };
    const char *id = gr_req_param(req, "id");
    struct gr_json_rd r = product_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    const char *file_id = NULL;
    long long pos = 0;
    bool has_pos = false;
    char now[GR_TIME_STR_LEN];
    struct gr_str doc;
    json_t *img;
    int rc;

    rc = product_fetch(req, id, false, &rows);
    if (rc < 0)
        return rc;
    (void)gr_json_only(&r, req->json, "", keys);
    product_read_uuid(&r, req->json, "", "file_id", GR_JSON_REQUIRED, &file_id, NULL);
    (void)gr_json_int(&r, req->json, "", "position", GR_JSON_OPTIONAL, 0, PRODUCT_IMAGE_POS_MAX,
                      &pos, &has_pos);
    if (resp->errs.n > 0)
        return GR_EVALID;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT COUNT(*), COALESCE(MAX(position) + 1, 0),"
                     " SUM(CASE WHEN file_id = $2 THEN 1 ELSE 0 END)"
                     " FROM product_images WHERE product_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(file_id) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, 2) > 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "image_exists",
                               "file '%s' is already an image of this product", file_id);
    if (gr_db_int(rows, 0, 0) >= PRODUCT_IMAGES_MAX)
        return gr_resp_problem(req, resp, GR_EVALID, "too_many_images",
                               "a product has at most %d images", PRODUCT_IMAGES_MAX);
    if (!has_pos) {
        pos = gr_db_int(rows, 0, 1);
        if (pos > PRODUCT_IMAGE_POS_MAX)
            pos = PRODUCT_IMAGE_POS_MAX;
    }
    product_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO product_images (product_id, file_id, position, created_at)"
                    " VALUES ($1, $2, $3, $4)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(file_id), GR_DB_INT(pos),
                                          GR_DB_TEXT(now) },
                    4, NULL);
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "image_exists",
                               "file '%s' is already an image of this product", file_id);
    if (rc < 0)
        return rc;
    rc = gr_db_exec(req->db, "UPDATE products SET updated_at = $2 WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, NULL);
    if (rc < 0)
        return rc;
    rc = product_doc_publish(req, id, "product.updated", &doc);
    if (rc < 0)
        return rc;
    img = product_own(req, json_pack("{s:s,s:s,s:I,s:s}", "product_id", id, "file_id", file_id,
                                     "position", (json_int_t)pos, "created_at", now));
    product_created(req, resp,
                    gr_arena_printf(req->arena, "/api/v1/products/%s/images/%s", id, file_id), img);
    return 0;
}

int products_image_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    const char *file_id = gr_req_param(req, "file_id");
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    long long changes = 0;
    struct gr_str doc;
    int rc;

    rc = product_fetch(req, id, false, &rows);
    if (rc < 0)
        return rc;
    rc = gr_db_exec(req->db, "DELETE FROM product_images WHERE product_id = $1 AND file_id = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(file_id) }, 2, &changes);
    if (rc < 0)
        return rc;
    if (changes == 0)
        return GR_ENOTFOUND;
    product_now(now);
    rc = gr_db_exec(req->db, "UPDATE products SET updated_at = $2 WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, NULL);
    if (rc < 0)
        return rc;
    rc = product_doc_publish(req, id, "product.updated", &doc);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 204, NULL);
    return 0;
}
