/*
 * preferences.c - the caller's preferences (GET|PUT /users/me/preferences): one JSON object
 * per user of known keys (theme, marketing_emails, notifications.{email,sms,push,in_app})
 * plus a free-form `custom` object for applications, at most USER_PREFS_MAX bytes as compact
 * JSON. PUT replaces the whole object; its optional `version` guards against lost updates
 * like a PATCH's (a user who never saved any has version 0).
 */
#include <string.h>

#include "gr/service.h"
#include "user.h"

/* GET's answer: the stored object, or {} with version 0 when there is none. */
static int send_prefs(struct gr_req *req, struct gr_resp *resp, const char *uid)
{
    struct gr_db_rows *rows = NULL;
    json_t *doc = NULL, *body;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT doc, version, updated_at FROM preferences WHERE user_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        body = json_pack("{s:{},s:i,s:n}", "preferences", "version", 0, "updated_at");
    } else {
        const char *text = gr_db_text(rows, 0, 0);
        rc = gr_json_parse(req->arena, text, strlen(text), &doc, NULL);
        if (rc < 0 || !json_is_object(doc))
            return GR_EINTERNAL;
        body = json_pack("{s:O,s:I,s:s}", "preferences", doc, "version",
                         (json_int_t)gr_db_int(rows, 0, 1), "updated_at", gr_db_text(rows, 0, 2));
    }
    gr_resp_json(resp, 200, body);
    return 0;
}

int preferences_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = user_me_peek(req, &rows);
    if (rc < 0)
        return rc;
    return send_prefs(req, resp, user_self(req));
}

/* The members of `custom`: scalars only, strings of at most USER_PREFS_VAL_MAX characters. */
static void read_custom(const struct gr_json_rd *r, json_t *custom, const char *ptr)
{
    const char *k;
    json_t *v;

    if (json_object_size(custom) > USER_PREFS_CUSTOM) {
        gr_errs_add(r->errs, r->a, ptr, "must have at most %d keys", USER_PREFS_CUSTOM);
        return;
    }
    json_object_foreach(custom, k, v)
    {
        size_t klen = strlen(k);

        if (klen == 0 || klen > USER_PREFS_KEY_MAX)
            gr_errs_addk(r->errs, r->a, ptr, k, "keys must be 1..%d bytes", USER_PREFS_KEY_MAX);
        else if (json_is_string(v))
            (void)gr_json_str(r, custom, ptr, k, 0, 0, USER_PREFS_VAL_MAX, &(const char *){ NULL },
                              NULL);
        else if (!json_is_number(v) && !json_is_boolean(v))
            gr_errs_addk(r->errs, r->a, ptr, k, "must be a string, a number or a boolean");
    }
}

/* Validates the preferences object @p (pointer "/preferences"); errors go to @r. */
static void read_prefs(const struct gr_json_rd *r, json_t *p)
{
    static const char *const keys[] = { "theme", "marketing_emails", "notifications", "custom",
                                        NULL };
    static const char *const channels[] = { "email", "sms", "push", "in_app", NULL };
    const char *ptr = "/preferences";
    const char *theme = NULL;
    json_t *notif = NULL, *custom = NULL;
    bool b;
    size_t before;

    if (gr_json_only(r, p, ptr, keys) < 0 && !json_is_object(p))
        return;
    before = r->errs->n;
    (void)gr_json_str(r, p, ptr, "theme", 0, 1, 16, &theme, NULL);
    if (theme != NULL && r->errs->n == before && strcmp(theme, "light") != 0 &&
        strcmp(theme, "dark") != 0 && strcmp(theme, "system") != 0)
        gr_errs_addk(r->errs, r->a, ptr, "theme", "must be 'light', 'dark' or 'system'");
    (void)gr_json_bool(r, p, ptr, "marketing_emails", 0, &b, NULL);
    if (gr_json_obj(r, p, ptr, "notifications", 0, &notif, NULL) == 0 && notif != NULL) {
        const char *nptr = gr_json_ptr_key(r->a, ptr, "notifications");
        (void)gr_json_only(r, notif, nptr, channels);
        for (size_t i = 0; channels[i] != NULL; i++)
            (void)gr_json_bool(r, notif, nptr, channels[i], 0, &b, NULL);
    }
    if (gr_json_obj(r, p, ptr, "custom", 0, &custom, NULL) == 0 && custom != NULL)
        read_custom(r, custom, gr_json_ptr_key(r->a, ptr, "custom"));
}

int preferences_put(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "preferences", "version", NULL };
    struct gr_json_rd r = user_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    json_t *prefs = NULL, *stored = NULL;
    char now[GR_TIME_STR_LEN];
    const char *uid;
    long long version = 0, have = 0, changes = 0;
    bool has_version = false;
    struct gr_str text;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 0, GR_JSON_MAX_INT, &version,
                      &has_version);
    (void)gr_json_obj(&r, req->json, "", "preferences", GR_JSON_REQUIRED, &prefs, NULL);
    if (prefs != NULL)
        read_prefs(&r, prefs);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_json_dump(req->arena, prefs, &text);
    if (rc < 0)
        return rc;
    if (text.len > USER_PREFS_MAX) {
        gr_resp_field_error(req, resp, "/preferences", "must be at most %d bytes as JSON",
                            USER_PREFS_MAX);
        return GR_EVALID;
    }
    rc = gr_db_query(req->db, req->arena, "SELECT doc, version FROM preferences WHERE user_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1) {
        const char *cur = gr_db_text(rows, 0, 0);
        have = gr_db_int(rows, 0, 1);
        if (gr_json_parse(req->arena, cur, strlen(cur), &stored, NULL) < 0)
            stored = NULL;
    }
    rc = user_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (stored != NULL && json_equal(stored, prefs))
        return send_prefs(req, resp, uid);
    user_now(now);
    if (have == 0)
        rc = gr_db_exec(
            req->db,
            "INSERT INTO preferences (user_id, doc, version, created_at, updated_at)"
            " VALUES ($1, $2, 1, $3, $3)",
            (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(text.ptr), GR_DB_TEXT(now) }, 3,
            &changes);
    else
        rc = gr_db_exec(req->db,
                        "UPDATE preferences SET doc = $3, version = version + 1, updated_at = $4"
                        " WHERE user_id = $1 AND version = $2",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_INT(have),
                                              GR_DB_TEXT(text.ptr), GR_DB_TEXT(now) },
                        4, &changes);
    if (rc == GR_ECONFLICT)
        return GR_EBUSY; /* a concurrent first PUT inserted the row: start again (PostgreSQL) */
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the preferences changed concurrently");
    return send_prefs(req, resp, uid);
}
