/*
 * product_doc.c - the stored JSON documents of products (migration 0003). Each product row
 * keeps doc_full, the object GET returns to callers with products:read (all variants, archived
 * ones flagged), and doc_public, the object everyone else sees (non-archived variants only).
 * product_doc_render is the one place that renders them (from the join of the product and its
 * variants, and its images, with product_json.c's writer); doc_store the one place that stores
 * them, through product_doc_refresh inside every write's transaction and through the start-up
 * back-fill of rows written before the migration. Reads select a document and send it as it
 * is: no variant or image query, no JSON writing. A document that is still NULL (a row the
 * back-fill has not reached yet) is rendered on the fly by product_doc_get and the list.
 */
#include <stdio.h>
#include <string.h>

#include "gr/log.h"
#include "product.h"

/* The join of a product and all its variants, by id or by slug. */
#define JOIN_SELECT                                                                                \
    "SELECT " PRODUCT_COLS ", " VARIANT_COLS                                                       \
    " FROM products p LEFT JOIN variants v ON v.product_id = p.id"
#define JOIN_ORDER " ORDER BY v.created_at, v.id"

/* How often in a row the back-fill retries a batch that lost a race with another writer. */
#define BACKFILL_BUSY_RETRIES 5

/* Loads the product @key (id, or slug with @by_slug) with its variants and images into @p. */
static int load(struct gr_db_conn *db, struct gr_arena *a, const char *key, bool by_slug,
                struct product_rows *p)
{
    static const char *const sql[2] = {
        JOIN_SELECT " WHERE p.id = $1" JOIN_ORDER,
        JOIN_SELECT " WHERE p.slug = $1" JOIN_ORDER,
    };
    struct gr_db_rows *rows = NULL, *images = NULL;
    int rc;

    memset(p, 0, sizeof(*p));
    if (!by_slug && !gr_id_valid(key, strlen(key)))
        return GR_ENOTFOUND;
    rc = gr_db_query(db, a, sql[by_slug], (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return GR_ENOTFOUND;
    p->rows = rows;
    /* One row per variant, the product's columns repeated; one row of NULLs without any. */
    if (!gr_db_isnull(rows, 0, PCOL_NCOLS + VCOL_ID))
        p->nvariants = gr_db_nrows(rows);
    if (gr_db_int(rows, 0, PCOL_HAS_IMAGES) == 0)
        return 0;
    rc = gr_db_query(db, a,
                     "SELECT i.file_id, i.position FROM product_images i WHERE i.product_id = $1"
                     " ORDER BY i.position, i.created_at, i.file_id",
                     (struct gr_db_val[]){ GR_DB_TEXT(gr_db_text(rows, 0, PCOL_ID)) }, 1, &images);
    if (rc < 0)
        return rc;
    p->images = images;
    return 0;
}

/* The text of @o as a NUL-terminated copy in @a. */
static int out_text(struct gr_arena *a, const struct product_out *o, struct gr_str *out)
{
    if (o->toobig)
        return GR_ETOOBIG;
    out->ptr = gr_arena_strndup(a, o->p, o->len);
    out->len = o->len;
    return 0;
}

int product_doc_render_rows(struct gr_arena *a, const struct product_rows *p,
                            struct product_docs *out)
{
    struct product_out *full, *pub;
    int rc;

    memset(out, 0, sizeof(*out));
    full = product_out_new(a, 2048);
    product_out_product(full, p, true);
    pub = product_out_new(a, 2048);
    product_out_product(pub, p, false);
    out->status = gr_db_text(p->rows, 0, PCOL_STATUS);
    rc = out_text(a, full, &out->full);
    if (rc < 0)
        return rc;
    return out_text(a, pub, &out->pub);
}

int product_doc_render(struct gr_db_conn *db, struct gr_arena *a, const char *key, bool by_slug,
                       struct product_docs *out)
{
    struct product_rows p;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = load(db, a, key, by_slug, &p);
    if (rc < 0)
        return rc;
    return product_doc_render_rows(a, &p, out);
}

/* Stores the documents @d of product @id. */
static int doc_store(struct gr_db_conn *db, const char *id, const struct product_docs *d)
{
    return gr_db_exec(
        db, "UPDATE products SET doc_public = $2, doc_full = $3 WHERE id = $1",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(d->pub.ptr), GR_DB_TEXT(d->full.ptr) }, 3,
        NULL);
}

int product_doc_refresh_db(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                           struct gr_str *full)
{
    struct product_docs d;
    int rc;

    rc = product_doc_render(db, a, id, false, &d);
    if (rc < 0)
        return rc;
    rc = doc_store(db, id, &d);
    if (rc < 0)
        return rc;
    *full = d.full;
    return 0;
}

int product_doc_refresh(struct gr_req *req, const char *id, struct gr_str *full)
{
    return product_doc_refresh_db(req->db, req->arena, id, full);
}

int product_doc_get(struct gr_req *req, const char *key, bool by_slug, bool full,
                    struct gr_str *doc, const char **status)
{
    static const char *const sql[2][2] = {
        { "SELECT p.status, p.doc_public FROM products p WHERE p.id = $1",
          "SELECT p.status, p.doc_full FROM products p WHERE p.id = $1" },
        { "SELECT p.status, p.doc_public FROM products p WHERE p.slug = $1",
          "SELECT p.status, p.doc_full FROM products p WHERE p.slug = $1" },
    };
    struct gr_db_rows *rows = NULL;
    struct product_docs d;
    int rc;

    if (!by_slug && !gr_id_valid(key, strlen(key)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena, sql[by_slug][full],
                     (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return GR_ENOTFOUND;
    if (status != NULL)
        *status = gr_db_text(rows, 0, 0);
    if (!gr_db_isnull(rows, 0, 1)) {
        doc->ptr = gr_db_text(rows, 0, 1);
        doc->len = strlen(doc->ptr);
        return 0;
    }
    rc = product_doc_render(req->db, req->arena, key, by_slug, &d);
    if (rc < 0)
        return rc;
    *doc = full ? d.full : d.pub;
    return 0;
}

void product_doc_send(struct gr_resp *resp, int status, const struct gr_str *doc)
{
    resp->status = status;
    resp->body = doc->ptr;
    resp->body_len = doc->len;
    resp->content_type = "application/json";
}

/* ---- back-fill ----------------------------------------------------------------------------- */

/* Renders and stores up to PRODUCT_DOC_BATCH missing documents in one transaction; *@n done. */
static int backfill_batch(struct gr_db_conn *db, struct gr_arena *a, size_t *n)
{
    struct gr_db_rows *ids = NULL;
    int rc;

    *n = 0;
    rc = gr_db_begin(db);
    if (rc < 0)
        return rc;
    rc = gr_db_query(db, a, "SELECT id FROM products WHERE doc_full IS NULL ORDER BY id LIMIT $1",
                     (struct gr_db_val[]){ GR_DB_INT(PRODUCT_DOC_BATCH) }, 1, &ids);
    for (size_t i = 0; rc == 0 && i < gr_db_nrows(ids); i++) {
        const char *id = gr_db_text(ids, i, 0);
        struct product_docs d;

        rc = product_doc_render(db, a, id, false, &d);
        if (rc == 0)
            rc = doc_store(db, id, &d);
    }
    if (rc < 0) {
        (void)gr_db_rollback(db);
        return rc;
    }
    rc = gr_db_commit(db);
    if (rc == 0)
        *n = gr_db_nrows(ids);
    return rc;
}

int product_doc_backfill(struct gr_db *gdb)
{
    struct gr_arena a;
    struct gr_db_conn *db = NULL;
    struct gr_db_rows *rows = NULL;
    long long total, done = 0;
    int busy = 0;
    int rc;

    gr_arena_init(&a);
    rc = gr_db_conn(gdb, &db);
    if (rc < 0)
        goto out;
    rc =
        gr_db_query(db, &a, "SELECT COUNT(*) FROM products WHERE doc_full IS NULL", NULL, 0, &rows);
    if (rc < 0)
        goto out;
    total = gr_db_int(rows, 0, 0);
    /*
     * Another instance back-filling at the same time shrinks the set under us (a batch that
     * finds nothing left ends the loop) and may make ours fail as busy. Busy batches are
     * retried a few times, then left to it: reads render a missing document on the fly.
     */
    while (done < total) {
        char msg[96];
        size_t n = 0;

        rc = backfill_batch(db, &a, &n);
        gr_arena_release(&a);
        if (rc == GR_EBUSY && ++busy <= BACKFILL_BUSY_RETRIES)
            continue;
        if (rc == GR_EBUSY) {
            gr_log_warn("product documents left to render on the fly: the database is busy");
            rc = 0;
            break;
        }
        if (rc < 0 || n == 0)
            break;
        busy = 0;
        done += (long long)n;
        snprintf(msg, sizeof(msg), "rendered %lld/%lld product documents", done, total);
        gr_log_info(msg);
    }
out:
    if (rc < 0)
        gr_log_error("cannot render product documents", "code", gr_err_name(rc));
    gr_arena_release(&a);
    return rc;
}

int product_doc_publish(struct gr_req *req, const char *id, const char *type, struct gr_str *full)
{
    int rc = product_doc_refresh(req, id, full);

    if (rc < 0)
        return rc;
    return product_event(req, type, id, full);
}
