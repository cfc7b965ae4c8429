/*
 * product.h - the product service's own declarations: the route table, the handlers of
 * products.c, variants.c and categories.c, the helpers of product_db.c that they share
 * (validation of the fields several resources have, SQL built from constant fragments,
 * derived prices, events), the JSON text of products and variants (product_json.c) and the
 * stored JSON documents of products that reads send as they are (product_doc.c).
 *
 * Every json_t these helpers hand out is owned by the request arena (its json_decref is
 * deferred on req->arena), so callers never release one and pass json_incref(v) to
 * gr_resp_json(). Strings are arena memory or borrowed from a JSON document.
 */
#ifndef PRODUCT_H
#define PRODUCT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/money.h"
#include "gr/router.h"
#include "gr/time.h"

#define PRODUCT_TITLE_MAX     200
#define PRODUCT_SLUG_MAX      100
#define PRODUCT_DESC_MAX      20000
#define PRODUCT_BRAND_MAX     100
#define PRODUCT_SKU_MAX       64
#define PRODUCT_WEIGHT_MAX    10000000
#define PRODUCT_KV_MAX        50   /* keys of attributes / options */
#define PRODUCT_KV_KEY_MAX    100  /* characters of one such key */
#define PRODUCT_KV_VAL_MAX    1000 /* characters of one string value */
#define PRODUCT_VARIANTS_MAX  100  /* non-archived variants of one product */
#define PRODUCT_IMAGES_MAX    250  /* images of one product */
#define PRODUCT_IMAGE_POS_MAX 9999
#define PRODUCT_IDS_MAX       100 /* ids of GET /products/variants */
#define PRODUCT_CAT_NAME_MAX  100
#define PRODUCT_CAT_DEPTH_MAX 10 /* levels of the category tree */

/* Column lists shared by the SELECTs of product_db.c and the handlers (table aliases p, v, c). */
#define PRODUCT_COLS                                                                               \
    "p.id, p.title, p.slug, p.description, p.brand, p.status, p.category_id, p.attributes, "       \
    "p.min_price, p.max_price, p.currency, p.version, p.created_at, p.updated_at, "                \
    "(SELECT 1 FROM product_images pi WHERE pi.product_id = p.id LIMIT 1)"
#define VARIANT_COLS                                                                               \
    "v.id, v.product_id, v.sku, v.price_amount, v.price_currency, v.weight_g, v.options, "         \
    "v.archived, v.version, v.created_at, v.updated_at"
#define CATEGORY_COLS                                                                              \
    "c.id, c.parent_id, c.name, c.slug, c.path, c.version, c.created_at, c.updated_at"

/*
 * Column numbers of PRODUCT_COLS needed outside the row converter. The last column is 1 when
 * the product has images (NULL otherwise), so that a product without any runs no image query. It
 * is a scalar subquery with LIMIT 1 rather than EXISTS, which PostgreSQL may run as a hashed
 * scan of the whole image table instead of one index probe per row.
 */
enum {
    PCOL_ID = 0,
    PCOL_SLUG = 2,
    PCOL_STATUS = 5,
    PCOL_VERSION = 11,
    PCOL_CREATED = 12,
    PCOL_HAS_IMAGES = 14,
    PCOL_NCOLS = 15
};
/* Column numbers of VARIANT_COLS. */
enum {
    VCOL_ID = 0,
    VCOL_SKU = 2,
    VCOL_AMOUNT = 3,
    VCOL_CURRENCY = 4,
    VCOL_ARCHIVED = 7,
    VCOL_VERSION = 8,
    VCOL_NCOLS = 11
};

/* The route table (routes.c). */
#define PRODUCT_NROUTES 16
extern const struct gr_route product_routes[PRODUCT_NROUTES];

/* ---- handlers ---------------------------------------------------------------------------- */

int products_list(struct gr_req *req, struct gr_resp *resp);
int products_get(struct gr_req *req, struct gr_resp *resp);
int products_create(struct gr_req *req, struct gr_resp *resp);
int products_patch(struct gr_req *req, struct gr_resp *resp);
int products_delete(struct gr_req *req, struct gr_resp *resp);
int products_image_add(struct gr_req *req, struct gr_resp *resp);
int products_image_delete(struct gr_req *req, struct gr_resp *resp);

int variants_batch_get(struct gr_req *req, struct gr_resp *resp);
int variants_create(struct gr_req *req, struct gr_resp *resp);
int variants_patch(struct gr_req *req, struct gr_resp *resp);
int variants_delete(struct gr_req *req, struct gr_resp *resp);

int categories_list(struct gr_req *req, struct gr_resp *resp);
int categories_get(struct gr_req *req, struct gr_resp *resp);
int categories_create(struct gr_req *req, struct gr_resp *resp);
int categories_patch(struct gr_req *req, struct gr_resp *resp);
int categories_delete(struct gr_req *req, struct gr_resp *resp);

/* ---- helpers (product_db.c) -------------------------------------------------------------- */

/** Makes @v owned by the request arena (json_decref deferred) and returns it. NULL aborts. */
json_t *product_own(struct gr_req *req, json_t *v);

/** True when the caller may see draft and archived products and archived variants. */
bool product_can_read(const struct gr_req *req);

/** The current library time as RFC 3339 with milliseconds, in @out. */
void product_now(char out[GR_TIME_STR_LEN]);

/** A reader context that accumulates field errors into the response's problem. */
struct gr_json_rd product_rd(struct gr_req *req, struct gr_resp *resp);

/** True for a slug: ^[a-z0-9]+(-[a-z0-9]+)*$ of at most PRODUCT_SLUG_MAX characters. */
bool product_slug_valid(const char *s);

/**
 * Reads the slug member @key of @obj at @ptr with the gr_json reader semantics, adding
 * "must match ^[a-z0-9]+(-[a-z0-9]+)*$" for a malformed one. *@out borrowed from @obj.
 */
void product_read_slug(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                       unsigned flags, const char **out, bool *present);

/**
 * Reads an optional uuid member (nullable when @flags says so): "must be a UUID" otherwise.
 * *@out is NULL for null/absent, else borrowed from @obj.
 */
void product_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                       unsigned flags, const char **out, bool *present);

/**
 * Reads the flat key/value object @key of @obj (attributes, options): at most PRODUCT_KV_MAX
 * keys of 1..PRODUCT_KV_KEY_MAX characters whose values are strings (<= PRODUCT_KV_VAL_MAX
 * characters), numbers or booleans. Absent or null gives an empty object. *@out is its compact
 * JSON text (arena).
 */
void product_read_kv(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                     const char **out);

/* A variant as read from a create body or a patched document. */
struct product_variant_in {
    const char *sku;
    struct gr_money price;
    long long weight_g;
    bool has_weight;
    const char *options; /* compact JSON text (arena) */
    bool archived;
};

/**
 * Reads and validates the variant object @obj whose pointer is @ptr: unknown members (beyond
 * sku, price, weight_g, options and, with @allow_archived, archived) are errors. Errors go to
 * @r; the caller checks r->errs->n.
 */
void product_read_variant(const struct gr_json_rd *r, json_t *obj, const char *ptr,
                          bool allow_archived, struct product_variant_in *out);

/**
 * Inserts variant @v of product @product_id with the new id @id (gr_id_new), times @now.
 * A concurrent duplicate SKU gives a 409 "sku_taken" problem with an error at @field; other
 * errors are gr_db_exec's.
 */
GR_MUST_CHECK int product_variant_insert(struct gr_req *req, struct gr_resp *resp,
                                         const char *product_id, const struct product_variant_in *v,
                                         const char *now, const char *field, const char *id);

/** Product row @i of @rows (PRODUCT_COLS) as JSON without variants and images (arena). */
json_t *product_row_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);
/** Variant row @i of @rows (VARIANT_COLS) as JSON (arena). */
json_t *product_variant_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);
/** Category row @i of @rows (CATEGORY_COLS) as JSON (arena). */
json_t *product_category_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);

/* ---- SQL from constant fragments (product_db.c) ---------------------------------------- */

#define PRODUCT_SQL_MAX    2048 /* bytes of one built statement */
#define PRODUCT_SQL_PARAMS 128  /* its parameters */

/*
 * A statement assembled from constant SQL fragments chosen by code, for the queries whose
 * shape depends on the request (the filters of the list, the ids of a page). Every '?' in a
 * fragment becomes the next parameter, written `$k` in the text, so parameters are numbered
 * in order of use and no value ever enters the SQL. The text is the key of gr_db's
 * per-connection statement cache: each distinct shape is prepared once.
 */
struct product_sql {
    char text[PRODUCT_SQL_MAX];
    size_t len;
    struct gr_db_val params[PRODUCT_SQL_PARAMS];
    size_t nparams;
    size_t nconds; /* conditions added by product_sql_cond */
};

/** Starts @q with the fragment @head (no '?'). */
void product_sql_init(struct product_sql *q, const char *head);

/**
 * Appends the constant fragment @frag whose '?' take @vals[0..@n) in order (the values are
 * copied; strings stay borrowed). A count of '?' other than @n, or a statement beyond
 * PRODUCT_SQL_MAX or PRODUCT_SQL_PARAMS, is a bug (the fragments are constants).
 */
void product_sql_add(struct product_sql *q, const char *frag, const struct gr_db_val *vals,
                     size_t n);

/** Like product_sql_add, preceded by " WHERE " for the first condition and " AND " after. */
void product_sql_cond(struct product_sql *q, const char *frag, const struct gr_db_val *vals,
                      size_t n);

/* ---- one product with its variants and images -------------------------------------------- */

/* Columns of product_rows.images. */
enum { PIMG_FILE = 0, PIMG_POSITION = 1 };

/*
 * One product with all its variants and its images, as product_doc_render loads them (arena).
 * @rows is the join of the product and its variants: PRODUCT_COLS, then VARIANT_COLS from
 * column PCOL_NCOLS, one row per variant (by created_at, id), or one row whose variant columns
 * are NULL when it has none (@nvariants 0). @images (PIMG_* columns, by position, created_at,
 * file_id) is NULL when it has none.
 */
struct product_rows {
    const struct gr_db_rows *rows;
    size_t nvariants;
    const struct gr_db_rows *images;
};

/* ---- JSON text of responses (product_json.c) --------------------------------------------- */

#define PRODUCT_OUT_MAX ((size_t)256 << 20) /* bytes of one response body */

/*
 * JSON text being written: a response body or a stored document. The buffer is released with
 * the arena it was made in; past PRODUCT_OUT_MAX further writes are dropped and toobig is set.
 */
struct product_out {
    char *p; /* gr_xmalloc, freed by a cleanup on the arena */
    size_t len, cap;
    bool toobig;
};

/** Appends a string literal (its size is known at compile time). */
#define PRODUCT_OUT_LIT(o, s) product_out_mem((o), "" s, sizeof(s) - 1)

/** A new empty text of initial capacity @cap (struct in @a, buffer freed when @a is released). */
struct product_out *product_out_new(struct gr_arena *a, size_t cap);
/** Appends @n bytes of @s as they are. */
void product_out_mem(struct product_out *o, const char *s, size_t n);
/** Appends @v in decimal. */
void product_out_int(struct product_out *o, long long v);
/** Appends @s as a JSON string escaped like jansson's dump, or null for NULL. */
void product_out_str(struct product_out *o, const char *s);
/** Appends the stored object text @text when it is one JSON object, else "{}". */
void product_out_obj_text(struct product_out *o, const char *text);
/**
 * Appends product @p with its "variants" and "images" as an object: every variant with
 * @archived (archived ones flagged), only the non-archived ones otherwise.
 */
void product_out_product(struct product_out *o, const struct product_rows *p, bool archived);
/**
 * Makes @o the body of @resp with @status and Content-Type application/json. GR_ETOOBIG when
 * the body grew beyond PRODUCT_OUT_MAX.
 */
GR_MUST_CHECK int product_out_send(struct gr_resp *resp, struct product_out *o, int status);

/**
 * Loads the product with id @key (or slug, when @by_slug) into *@rows (one row of PRODUCT_COLS,
 * arena). GR_ENOTFOUND when absent, whatever its status: visibility is the caller's rule.
 */
GR_MUST_CHECK int product_fetch(struct gr_req *req, const char *key, bool by_slug,
                                struct gr_db_rows **rows);

/**
 * Recomputes products.min_price/max_price (non-archived variants) and currency (any variant)
 * of @id and sets updated_at to @now. Runs inside the caller's transaction.
 */
GR_MUST_CHECK int product_refresh(struct gr_req *req, const char *id, const char *now);

/**
 * Checks that @currency is the currency of every variant of product @product_id other than
 * @except_vid (NULL: all). Adds "must be '<cur>' like the product's other variants" at @field
 * and returns GR_EVALID otherwise.
 */
GR_MUST_CHECK int product_check_currency(struct gr_req *req, struct gr_resp *resp,
                                         const char *product_id, const char *except_vid,
                                         const char *currency, const char *field);

/**
 * Publishes an event (product.created, product.updated, product.deleted,
 * product.price_changed) about product @product_id (the CloudEvent's subject) with the JSON
 * text @data (borrowed; for products the stored doc_full) through the outbox, in the caller's
 * transaction, so a rollback publishes nothing. Returns 0 or a GR_E* code that the caller
 * returns (rolling the write back).
 */
GR_MUST_CHECK int product_event(struct gr_req *req, const char *type, const char *product_id,
                                const struct gr_str *data);

/** Returns a 409 "version_conflict" problem when @want (if @present) differs from @have. */
GR_MUST_CHECK int product_check_version(struct gr_req *req, struct gr_resp *resp, bool present,
                                        long long want, long long have);

/** Sets "Location: @path" and the status/body of a 201 with a copy of @body (arena-owned). */
void product_created(struct gr_req *req, struct gr_resp *resp, const char *path, json_t *body);

/**
 * Makes the list cursor [@key, @id] bound to @scope (the endpoint and its filters) into *@out
 * (arena). @key is a new reference that this function owns. Errors: gr_cursor_encode's.
 */
GR_MUST_CHECK int product_cursor_make(struct gr_req *req, const char *scope, json_t *key,
                                      const char *id, const char **out);

/**
 * Verifies and decodes a cursor of product_cursor_make into the keyset parameters @key (an
 * integer when @int_key, else text) and @id. GR_EINVAL for an edited cursor, one of another
 * endpoint or filter set, or a payload of the wrong shape.
 */
GR_MUST_CHECK int product_cursor_read(struct gr_req *req, const char *scope, const char *cursor,
                                      bool int_key, struct gr_db_val *key, struct gr_db_val *id);

/* ---- stored documents (product_doc.c) ---------------------------------------------------- */

/*
 * Every product row stores the two JSON objects GET returns for it (migration 0003): doc_full
 * for callers with products:read (all variants, archived ones flagged) and doc_public for
 * everyone else (non-archived variants only), whatever the product's status (visibility is
 * the reader's rule). product_doc_render is the one place that renders them, from the rows,
 * with product_out_product; product_doc_refresh the one place that stores them, called by
 * every write after its last change to the product, its variants or its images. Reads send a
 * stored document as it is and render one on the fly only while it is still NULL (rows written
 * before migration 0003, until product_doc_backfill has run).
 */

/* Both documents of one product and its status (all arena, NUL-terminated). */
struct product_docs {
    const char *status;
    struct gr_str full;
    struct gr_str pub;
};

/**
 * Renders both documents of the product with id @key (or slug, with @by_slug) from its rows
 * on @db: one query joining the product and its variants, and one for its images when it has
 * any. Everything is allocated in @a. GR_ENOTFOUND when absent; GR_ETOOBIG beyond
 * PRODUCT_OUT_MAX; otherwise gr_db_query's errors.
 */
GR_MUST_CHECK int product_doc_render(struct gr_db_conn *db, struct gr_arena *a, const char *key,
                                     bool by_slug, struct product_docs *out);

/**
 * Renders both documents of the product @p (rows as product_doc_render loads them, or built
 * in memory for a product about to be inserted) into @out (arena @a). GR_ETOOBIG beyond
 * PRODUCT_OUT_MAX.
 */
GR_MUST_CHECK int product_doc_render_rows(struct gr_arena *a, const struct product_rows *p,
                                          struct product_docs *out);

/**
 * Re-renders product @id's documents and stores them, inside the caller's transaction: call it
 * once per write, after the write's last change (version and updated_at included). *@full is
 * the new doc_full (arena), the body of a writer's response. Errors: product_doc_render's and
 * gr_db_exec's.
 */
GR_MUST_CHECK int product_doc_refresh(struct gr_req *req, const char *id, struct gr_str *full);
/** product_doc_refresh on @db's open transaction with arena @a (event handlers). */
GR_MUST_CHECK int product_doc_refresh_db(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                         struct gr_str *full);

/* ---- consumed events (events.c) ----------------------------------------------------------- */

#define PRODUCT_NSUBS 1
extern const struct gr_sub product_subs[PRODUCT_NSUBS];

/**
 * The end of every write to product @id: product_doc_refresh, then the event @type
 * ("product.created", "product.updated") with the new doc_full as data, in the same
 * transaction. *@full as for product_doc_refresh. Errors: theirs.
 */
GR_MUST_CHECK int product_doc_publish(struct gr_req *req, const char *id, const char *type,
                                      struct gr_str *full);

/**
 * The stored document of the product with id @key (or slug, with @by_slug): doc_full with
 * @full, else doc_public, into *@doc, and its status into *@status (may be NULL); both arena.
 * One query; a document that is still NULL is rendered on the fly. GR_ENOTFOUND when absent,
 * whatever the status.
 */
GR_MUST_CHECK int product_doc_get(struct gr_req *req, const char *key, bool by_slug, bool full,
                                  struct gr_str *doc, const char **status);

/** Makes @doc (arena or static, borrowed until the response is sent) the JSON body of @resp. */
void product_doc_send(struct gr_resp *resp, int status, const struct gr_str *doc);

#define PRODUCT_DOC_BATCH 500 /* products rendered per transaction by the back-fill */

/**
 * Renders and stores the documents of every product whose doc_full is NULL, PRODUCT_DOC_BATCH
 * per transaction on the calling thread's connection to @db, logging "rendered N/M product
 * documents" after each batch (nothing when there are none). For the service's init hook.
 * A batch still busy after a few retries (another instance back-filling) ends it with 0: reads
 * render what is left on the fly. Errors: gr_db_conn's, product_doc_render's and the
 * transaction's.
 */
GR_MUST_CHECK int product_doc_backfill(struct gr_db *db);

#endif
