/*
 * product.h - the product service's own declarations: the route table, the handlers of
 * products.c, variants.c and categories.c, and the helpers of product_db.c that they share
 * (row to JSON, validation of the fields several resources have, derived prices, events).
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
    "p.min_price, p.max_price, p.currency, p.version, p.created_at, p.updated_at"
#define VARIANT_COLS                                                                               \
    "v.id, v.product_id, v.sku, v.price_amount, v.price_currency, v.weight_g, v.options, "         \
    "v.archived, v.version, v.created_at, v.updated_at"
#define CATEGORY_COLS                                                                              \
    "c.id, c.parent_id, c.name, c.slug, c.path, c.version, c.created_at, c.updated_at"

/* Column numbers of PRODUCT_COLS needed outside the row converter. */
enum { PCOL_ID = 0, PCOL_SLUG = 2, PCOL_STATUS = 5, PCOL_VERSION = 11, PCOL_CREATED = 12 };
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
 * Inserts variant @v of product @product_id with a new id written to @id, times @now.
 * A concurrent duplicate SKU gives a 409 "sku_taken" problem with an error at @field; other
 * errors are gr_db_exec's.
 */
GR_MUST_CHECK int product_variant_insert(struct gr_req *req, struct gr_resp *resp,
                                         const char *product_id, const struct product_variant_in *v,
                                         const char *now, const char *field, char id[GR_ID_LEN]);

/** Product row @i of @rows (PRODUCT_COLS) as JSON without variants and images (arena). */
json_t *product_row_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);
/** Variant row @i of @rows (VARIANT_COLS) as JSON (arena). */
json_t *product_variant_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);
/** Category row @i of @rows (CATEGORY_COLS) as JSON (arena). */
json_t *product_category_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i);

/**
 * Adds "variants" (all of them with @all_variants, else only non-archived ones) and "images"
 * to the product JSON @p whose id is @id. Errors: those of gr_db_query.
 */
GR_MUST_CHECK int product_attach(struct gr_req *req, json_t *p, const char *id, bool all_variants);

/**
 * Loads the product with id @key (or slug, when @by_slug) into *@rows (one row of PRODUCT_COLS,
 * arena). GR_ENOTFOUND when absent, whatever its status: visibility is the caller's rule.
 */
GR_MUST_CHECK int product_fetch(struct gr_req *req, const char *key, bool by_slug,
                                struct gr_db_rows **rows);

/**
 * Loads product @id with variants and images as JSON (arena) for a response to a writer: all
 * variants, archived ones flagged. GR_ENOTFOUND when absent.
 */
GR_MUST_CHECK int product_load_full(struct gr_req *req, const char *id, json_t **out);

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
 * The event hook. Called inside the write's transaction at every point where SERVICES §17
 * publishes an event (product.created, product.updated, product.deleted,
 * product.price_changed) with the event type and the snapshot that becomes its `data`
 * (borrowed). It is a no-op until gr_bus lands: then it writes the CloudEvent to the outbox
 * in the same transaction, so a rollback publishes nothing. Returns 0 or a GR_E* code that
 * the caller returns (rolling the write back).
 */
GR_MUST_CHECK int product_event(struct gr_req *req, const char *type, json_t *snapshot);

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

/** Parses text that this service stored as a JSON object; an empty object when unreadable. */
json_t *product_json_text(struct gr_req *req, const char *text);

#endif
