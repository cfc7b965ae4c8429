/*
 * exports.c - GDPR exports (POST /users/me/exports, GET /users/me/exports/{id}). An export is
 * a privacy_requests row of kind 'export'. The archive (profile, addresses, preferences, one
 * JSON document) is small and bounded (USER_ADDR_MAX addresses, USER_PREFS_MAX bytes of
 * preferences), so it is produced synchronously in the request's transaction and stored in
 * the row; the POST still answers 202 with the request, whose status the GET reports, so a
 * later move to a worker and to 08 file-storage (file_id) changes no client. Only the newest
 * USER_EXPORTS_KEEP archives of a user are kept; older ones become 'expired'.
 */
#include <string.h>

#include "gr/service.h"
#include "user.h"

#define E "/api/v1/users/me/exports"

#define EXPORT_COLS "id, kind, status, file_id, created_at, completed_at, archive"

/* Export row @i (EXPORT_COLS) as JSON; with @archive, the archive when there is one. */
static json_t *export_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i,
                           bool archive)
{
    static const char *const names[] = { "id",      "kind",       "status",
                                         "file_id", "created_at", "completed_at" };
    json_t *o = user_own(req->arena, json_object());
    const char *text = gr_db_text(rows, i, 6);
    json_t *doc = NULL;

    for (size_t c = 0; c < sizeof(names) / sizeof(names[0]); c++) {
        const char *v = gr_db_text(rows, i, c);
        json_object_set_new(o, names[c], v ? json_string(v) : json_null());
    }
    if (archive && text != NULL && gr_json_parse(req->arena, text, strlen(text), &doc, NULL) == 0)
        json_object_set(o, "archive", doc);
    return o;
}

/* The archive of user @uid whose profile is row 0 of @profile (arena). */
static int build_archive(struct gr_req *req, const char *uid, const struct gr_db_rows *profile,
                         const char *now, json_t **out)
{
    struct gr_db_rows *rows = NULL;
    json_t *addresses = json_array(), *prefs = NULL, *archive;
    int rc;

    archive = user_own(
        req->arena, json_pack("{s:s,s:s,s:s,s:O,s:o}", "format", "gravity.user-export/1", "user_id",
                              uid, "generated_at", now, "profile",
                              user_profile_json(req->arena, profile, 0), "addresses", addresses));
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " ADDRESS_COLS " FROM addresses a WHERE a.user_id = $1"
                     " ORDER BY a.created_at, a.id",
                     (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++)
        json_array_append(addresses, user_address_json(req->arena, rows, i));
    rc = gr_db_query(req->db, req->arena, "SELECT doc FROM preferences WHERE user_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1) {
        const char *text = gr_db_text(rows, 0, 0);
        if (gr_json_parse(req->arena, text, strlen(text), &prefs, NULL) < 0)
            return GR_EINTERNAL;
    }
    json_object_set_new(archive, "preferences", prefs != NULL ? json_incref(prefs) : json_object());
    *out = archive;
    return 0;
}

int exports_create(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    const char *uid;
    json_t *archive = NULL;
    struct gr_str text;
    int rc;

    rc = user_no_body(req, resp);
    if (rc < 0)
        return rc;
    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    user_now(now);
    rc = build_archive(req, uid, rows, now, &archive);
    if (rc == 0)
        rc = gr_json_dump(req->arena, archive, &text);
    if (rc < 0)
        return rc;
    gr_id_new(id);
    rc = gr_db_exec(req->db,
                    "INSERT INTO privacy_requests (id, user_id, kind, status, archive, created_at,"
                    " completed_at) VALUES ($1, $2, 'export', 'completed', $3, $4, $4)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(uid), GR_DB_TEXT(text.ptr),
                                          GR_DB_TEXT(now) },
                    4, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE privacy_requests SET archive = NULL, status = 'expired'"
                        " WHERE user_id = $1 AND kind = 'export' AND status = 'completed'"
                        " AND id NOT IN (SELECT id FROM privacy_requests WHERE user_id = $1"
                        " AND kind = 'export' AND status = 'completed'"
                        " ORDER BY created_at DESC, id DESC LIMIT CAST($2 AS INTEGER))",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_INT(USER_EXPORTS_KEEP) }, 2,
                        NULL);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " EXPORT_COLS " FROM privacy_requests WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location", gr_arena_printf(req->arena, E "/%s", id));
    gr_resp_json(resp, 202, json_incref(export_json(req, rows, 0, false)));
    return 0;
}

int exports_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    const char *uid, *id = gr_req_param(req, "id");
    int rc;

    rc = user_me_peek(req, &rows);
    if (rc < 0)
        return rc;
    uid = user_self(req);
    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " EXPORT_COLS " FROM privacy_requests"
                     " WHERE id = $1 AND user_id = $2 AND kind = 'export'",
                     (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(uid) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    gr_resp_json(resp, 200, json_incref(export_json(req, rows, 0, true)));
    return 0;
}
