/*
 * profiles.c - profiles: the caller's own (GET|PATCH /users/me, created on first use when
 * user.created has not arrived yet), anyone's with users:read (GET /users/{id}, the list with
 * its email and q filters) and erasure (DELETE /users/{id}: the user themself or
 * users:delete), which anonymises the profile, deletes addresses, preferences and export
 * archives, and publishes user.deleted once. Another user's profile without users:read is a
 * 404, as if it did not exist (SERVICES §0).
 */
#include <string.h>

#include "gr/service.h"
#include "user.h"

int profiles_me_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(user_profile_json(req->arena, rows, 0)));
    return 0;
}

/* The fields a PATCH may change, in PROFILE_COLS order from PCOL_FIRST. */
static const char *const editable[] = { "first_name",     "last_name", "display_name",
                                        "avatar_file_id", "locale",    "timezone" };
#define NEDITABLE (sizeof(editable) / sizeof(editable[0]))

/* The editable fields of profile row 0 as an object, nulls left out (arena). */
static json_t *editable_doc(struct gr_req *req, const struct gr_db_rows *rows)
{
    json_t *doc = user_own(req->arena, json_object());

    for (size_t i = 0; i < NEDITABLE; i++) {
        const char *v = gr_db_text(rows, 0, PCOL_FIRST + i);
        if (v != NULL)
            json_object_set_new(doc, editable[i], json_string(v));
    }
    return doc;
}

struct profile_in {
    const char *v[NEDITABLE]; /* NULL = cleared */
};

/* Reads and validates the patched document @doc into @in; errors go to the response. */
static void read_profile(struct gr_req *req, struct gr_resp *resp, json_t *doc,
                         struct profile_in *in)
{
    const struct user_app *app = req->app;
    struct gr_json_rd r = user_rd(req, resp);
    const char *s = NULL;
    size_t before;

    memset(in, 0, sizeof(*in));
    (void)gr_json_str(&r, doc, "", "first_name", GR_JSON_NULLABLE, 1, USER_NAME_MAX, &in->v[0],
                      NULL);
    (void)gr_json_str(&r, doc, "", "last_name", GR_JSON_NULLABLE, 1, USER_NAME_MAX, &in->v[1],
                      NULL);
    (void)gr_json_str(&r, doc, "", "display_name", GR_JSON_NULLABLE, 1, USER_DISPLAY_MAX, &in->v[2],
                      NULL);
    user_read_uuid(&r, doc, "", "avatar_file_id", &in->v[3], NULL);
    before = resp->errs.n;
    (void)gr_json_str(&r, doc, "", "locale", GR_JSON_NULLABLE, 2, USER_LOCALE_MAX, &s, NULL);
    if (s != NULL && resp->errs.n == before && !user_locale_canon(req->arena, s, &in->v[4]))
        gr_resp_field_error(req, resp, "/locale",
                            "must be a BCP 47 language tag such as 'en' or 'pt-BR'");
    s = NULL;
    before = resp->errs.n;
    (void)gr_json_str(&r, doc, "", "timezone", GR_JSON_NULLABLE, 1, USER_TZ_MAX, &s, NULL);
    if (s != NULL && resp->errs.n == before) {
        if (user_tz_valid(app->zoneinfo_dir, s))
            in->v[5] = s;
        else
            gr_resp_field_error(req, resp, "/timezone",
                                "must be an IANA time zone such as 'Europe/Paris'");
    }
}

/* The validated values as an object like editable_doc's, to tell whether anything changed. */
static json_t *values_doc(struct gr_req *req, const struct profile_in *in)
{
    json_t *doc = user_own(req->arena, json_object());

    for (size_t i = 0; i < NEDITABLE; i++)
        if (in->v[i] != NULL)
            json_object_set_new(doc, editable[i], json_string(in->v[i]));
    return doc;
}

int profiles_me_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "first_name", "last_name", "display_name", "avatar_file_id",
                                        "locale", "timezone", "version",
                                        /* read-only, reported as such below */
                                        "id", "email", "username", "created_at", "updated_at",
                                        NULL };
    static const char *const ro[] = { "id", "email", "username", "created_at", "updated_at", NULL };
    struct gr_json_rd r = user_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    struct profile_in in;
    char now[GR_TIME_STR_LEN];
    long long version = 0, have, changes = 0;
    bool has_version = false;
    const char *id;
    json_t *before, *doc, *patch;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    id = gr_db_text(rows, 0, PCOL_ID);
    have = gr_db_int(rows, 0, PCOL_VERSION);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    rc = user_read_only(req, resp, req->json, ro,
                        "is read-only here: the email and username belong to auth-service");
    if (rc < 0)
        return rc;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &version,
                      &has_version);
    before = editable_doc(req, rows);
    doc = user_own(req->arena, json_deep_copy(before));
    patch = user_own(req->arena, json_deep_copy(req->json));
    json_object_del(patch, "version");
    if (gr_json_merge_patch(doc, patch) < 0)
        return GR_EINTERNAL;
    read_profile(req, resp, doc, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = user_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (json_equal(before, values_doc(req, &in))) {
        gr_resp_json(resp, 200, json_incref(user_profile_json(req->arena, rows, 0)));
        return 0;
    }
    user_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE profiles SET first_name = $3, last_name = $4, display_name = $5,"
                    " avatar_file_id = $6, locale = $7, timezone = $8, version = version + 1,"
                    " updated_at = $9 WHERE user_id = $1 AND version = $2 AND deleted_at IS NULL",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(have), GR_DB_TEXT(in.v[0]),
                                          GR_DB_TEXT(in.v[1]), GR_DB_TEXT(in.v[2]),
                                          GR_DB_TEXT(in.v[3]), GR_DB_TEXT(in.v[4]),
                                          GR_DB_TEXT(in.v[5]), GR_DB_TEXT(now) },
                    9, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the profile changed concurrently");
    rc = user_publish_updated(req->db, req->arena, id, NULL);
    if (rc < 0)
        return rc;
    rc = user_profile_load(req, id, false, &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(user_profile_json(req->arena, rows, 0)));
    return 0;
}

/* True when @id is the caller's own user id. */
static bool is_self(const struct gr_req *req, const char *id)
{
    const char *self = user_self(req);
    return self != NULL && strcmp(self, id) == 0;
}

int profiles_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    int rc;

    if (is_self(req, id))
        rc = user_me(req, &rows);
    else if (gr_req_can(req, "users:read"))
        rc = user_profile_load(req, id, false, &rows);
    else
        rc = GR_ENOTFOUND; /* someone else's profile is not visible without users:read */
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(user_profile_json(req->arena, rows, 0)));
    return 0;
}

/* "%q%" in lower case with LIKE's '%', '_' and the escape '\' escaped (arena). */
static const char *like_pattern(struct gr_req *req, const char *q)
{
    size_t n = strlen(q);
    char *out = gr_arena_alloc(req->arena, 2 * n + 3);
    size_t k = 0;

    out[k++] = '%';
    for (size_t i = 0; i < n; i++) {
        char c = q[i];
        if (c == '%' || c == '_' || c == '\\')
            out[k++] = '\\';
        out[k++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[k++] = '%';
    out[k] = '\0';
    return out;
}

/* Code points of the UTF-8 string @s. */
static size_t chars_of(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

int profiles_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *email = gr_req_query(req, "email");
    const char *q = gr_req_query(req, "q");
    const char *cursor = gr_req_query(req, "cursor");
    struct gr_db_val created = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *scope, *email_norm = NULL, *pattern = NULL;
    size_t n;
    bool has_more;
    int limit = 20;
    json_t *data;
    int rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (email != NULL) {
        if (strlen(email) < 3 || strlen(email) > USER_EMAIL_MAX || strchr(email, '@') == NULL)
            gr_resp_field_error(req, resp, "query.email", "must be an email address");
        else
            email_norm = user_ascii_lower(gr_arena_strdup(req->arena, email));
    }
    if (q != NULL) {
        size_t qn = chars_of(q);
        if (qn < 1 || qn > USER_Q_MAX)
            gr_resp_field_error(req, resp, "query.q", "must be 1..%d characters", USER_Q_MAX);
        else
            pattern = like_pattern(req, q);
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "GET /api/v1/users\nemail=%s\nq=%s",
                            email_norm ? email_norm : "", q ? q : "");
    if (cursor != NULL && user_cursor_read(req, scope, cursor, &created, &kid) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT " PROFILE_COLS " FROM profiles p WHERE p.deleted_at IS NULL"
        " AND (CAST($1 AS TEXT) IS NULL OR p.email_norm = CAST($1 AS TEXT))"
        " AND (CAST($2 AS TEXT) IS NULL OR lower(COALESCE(p.first_name, '') || ' ' ||"
        " COALESCE(p.last_name, '') || ' ' || COALESCE(p.display_name, '') || ' ' ||"
        " COALESCE(p.email, '') || ' ' || COALESCE(p.username, '')) LIKE CAST($2 AS TEXT)"
        " ESCAPE '\\')"
        " AND (CAST($3 AS TEXT) IS NULL"
        " OR (p.created_at, p.user_id) < (CAST($3 AS TEXT), CAST($4 AS TEXT)))"
        " ORDER BY p.created_at DESC, p.user_id DESC LIMIT CAST($5 AS INTEGER)",
        (struct gr_db_val[]){ GR_DB_TEXT(email_norm), GR_DB_TEXT(pattern), created, kid,
                              GR_DB_INT(limit + 1) },
        5, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append(data, user_profile_json(req->arena, rows, i));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? user_cursor_key(req, gr_db_text(rows, n - 1, PCOL_CREATED),
                                                   gr_db_text(rows, n - 1, PCOL_ID))
                                 : NULL);
}

/*
 * The erasure itself, in the route's transaction: the profile keeps only its id and times
 * (a pseudonymous tombstone, so a late user.created cannot bring it back), everything else
 * personal goes, an erasure request is recorded and user.deleted is published.
 */
static int erase(struct gr_req *req, struct gr_resp *resp, const char *id)
{
    char now[GR_TIME_STR_LEN], rid[GR_ID_LEN];
    struct gr_db_rows *rows = NULL;
    long long changes = 0;
    json_t *data;
    struct gr_str text;
    int rc;

    user_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE profiles SET email = NULL, email_norm = NULL, username = NULL,"
                    " first_name = NULL, last_name = NULL, display_name = NULL,"
                    " avatar_file_id = NULL, locale = NULL, timezone = NULL,"
                    " version = version + 1, updated_at = $2, deleted_at = $2"
                    " WHERE user_id = $1 AND deleted_at IS NULL",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "the profile is already erased");
    rc = gr_db_exec(req->db, "DELETE FROM addresses WHERE user_id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM preferences WHERE user_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE privacy_requests SET archive = NULL, status = 'expired'"
                        " WHERE user_id = $1 AND kind = 'export' AND status <> 'expired'",
                        (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc < 0)
        return rc;
    gr_id_new(rid);
    rc = gr_db_exec(req->db,
                    "INSERT INTO privacy_requests (id, user_id, kind, status, created_at,"
                    " completed_at) VALUES ($1, $2, 'erasure', 'completed', $3, $3)",
                    (struct gr_db_val[]){ GR_DB_TEXT(rid), GR_DB_TEXT(id), GR_DB_TEXT(now) }, 3,
                    NULL);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT version FROM profiles WHERE user_id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    data = user_own(req->arena, json_pack("{s:s,s:s,s:I,s:s}", "id", id, "user_id", id, "version",
                                          (json_int_t)gr_db_int(rows, 0, 0), "deleted_at", now));
    rc = gr_json_dump(req->arena, data, &text);
    if (rc == 0)
        rc = gr_req_emit(req, "user.deleted", id, text.ptr);
    return rc;
}

int profiles_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    bool self = is_self(req, id);
    int rc;

    if (!self && !gr_req_can(req, "users:delete")) {
        /* Visible but not erasable is a 403; invisible is a 404 like any other profile. */
        if (!gr_req_can(req, "users:read"))
            return GR_ENOTFOUND;
        rc = user_profile_load(req, id, false, &rows);
        return rc < 0 ? rc
                      : gr_resp_problem(req, resp, GR_EFORBIDDEN, NULL,
                                        "permission 'users:delete' is required");
    }
    /* Erasing oneself before user.created arrived still leaves the tombstone. */
    rc = user_profile_load(req, id, self, &rows);
    if (rc < 0)
        return rc;
    rc = erase(req, resp, id);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 204, NULL);
    return 0;
}
