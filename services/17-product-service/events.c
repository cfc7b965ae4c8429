/*
 * events.c - the events product-service consumes (SERVICES §17: sub file.deleted). Each
 * handler runs in the consumer's transaction, which also records the event in the inbox, so a
 * redelivered event changes nothing (gr/bus.h).
 */
#include <jansson.h>
#include <string.h>

#include "gr/log.h"
#include "product.h"

#define SOURCE "/gravity/product-service"

/* The id of the deleted file: the event's subject, else data.id. */
static const char *file_id_of(struct gr_arena *a, const struct gr_event *ev)
{
    json_t *d;
    const char *id = NULL;

    if (ev->subject && gr_id_valid(ev->subject, strlen(ev->subject)))
        return ev->subject;
    d = json_loadb(ev->data, ev->data_len, 0, NULL);
    if (json_is_string(json_object_get(d, "id")))
        id = gr_arena_strdup(a, json_string_value(json_object_get(d, "id")));
    json_decref(d);
    return id && gr_id_valid(id, strlen(id)) ? id : NULL;
}

/*
 * file.deleted: the file leaves the images of every product that shows it; each such product
 * is given a new document and publishes product.updated, like DELETE …/images/{file_id} does.
 */
static int on_file_deleted(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    const char *fid = file_id_of(a, ev);
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    int rc;

    (void)app;
    if (!fid) {
        gr_log_warn("file.deleted without a file id, ignored", "event_id", ev->id);
        return 0;
    }
    rc = gr_db_query(db, a, "SELECT product_id FROM product_images WHERE file_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(fid) }, 1, &rows);
    if (rc < 0)
        return rc;
    product_now(now);
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *pid = gr_db_text(rows, i, 0);
        struct gr_str doc;

        rc = gr_db_exec(db, "DELETE FROM product_images WHERE product_id = $1 AND file_id = $2",
                        (struct gr_db_val[]){ GR_DB_TEXT(pid), GR_DB_TEXT(fid) }, 2, NULL);
        if (rc == 0)
            rc = gr_db_exec(db, "UPDATE products SET updated_at = $2 WHERE id = $1",
                            (struct gr_db_val[]){ GR_DB_TEXT(pid), GR_DB_TEXT(now) }, 2, NULL);
        if (rc == 0)
            rc = product_doc_refresh_db(db, a, pid, &doc);
        if (rc == 0)
            rc = gr_bus_emit(db, SOURCE, "product.updated", pid, doc.ptr, ev->traceparent, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

const struct gr_sub product_subs[PRODUCT_NSUBS] = {
    { "file.deleted", on_file_deleted },
};
