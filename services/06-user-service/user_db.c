/*
 * user_db.c - what the profile, address, preference and export handlers share: the caller's
 * own profile (created on first use when user.created has not arrived yet), rows as JSON,
 * optimistic versions, read-only fields, list cursors and the user.updated event. Everything
 * a function here allocates belongs to the request (or consumer) arena.
 */
#include <string.h>
#include <strings.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/service.h"
#include "user.h"

static void decref(void *v)
{
    json_decref(v);
}

json_t *user_own(struct gr_arena *a, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(a, decref, v);
    return v;
}

void user_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

struct gr_json_rd user_rd(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    return r;
}

const char *user_self(const struct gr_req *req)
{
    const char *sub = req->principal ? req->principal->sub : NULL;

    if (sub == NULL || !gr_id_valid(sub, strlen(sub)))
        return NULL;
    return sub;
}

char *user_ascii_lower(char *s)
{
    for (char *p = s; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return s;
}

static int select_profile(struct gr_req *req, const char *user_id, struct gr_db_rows **rows)
{
    return gr_db_query(req->db, req->arena,
                       "SELECT " PROFILE_COLS " FROM profiles p WHERE p.user_id = $1",
                       (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, rows);
}

/*
 * Inserts the empty profile of @user_id unless one exists (user.created may be applying the
 * same insert right now: the primary key lets one of them win; on PostgreSQL the loser's
 * serialization failure is a GR_EBUSY that the core answers by running the handler again).
 */
static int create_profile(struct gr_req *req, const char *user_id)
{
    bool own_tx = !gr_db_in_tx(req->db);
    char now[GR_TIME_STR_LEN];
    int rc = 0;

    if (own_tx)
        rc = gr_req_begin(req);
    if (rc < 0)
        return rc;
    user_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO profiles (user_id, source_version, version, created_at,"
                    " updated_at) VALUES ($1, 0, 1, $2, $2) ON CONFLICT (user_id) DO NOTHING",
                    (struct gr_db_val[]){ GR_DB_TEXT(user_id), GR_DB_TEXT(now) }, 2, NULL);
    if (own_tx) {
        if (rc == 0)
            rc = gr_db_commit(req->db);
        else
            (void)gr_db_rollback(req->db);
    }
    return rc;
}

int user_profile_load(struct gr_req *req, const char *user_id, bool create,
                      struct gr_db_rows **rows)
{
    int rc;

    if (user_id == NULL || !gr_id_valid(user_id, strlen(user_id)))
        return GR_ENOTFOUND;
    rc = select_profile(req, user_id, rows);
    if (rc == 0 && gr_db_nrows(*rows) == 0 && create) {
        rc = create_profile(req, user_id);
        if (rc == 0)
            rc = select_profile(req, user_id, rows);
    }
    if (rc < 0)
        return rc;
    if (gr_db_nrows(*rows) != 1 || !gr_db_isnull(*rows, 0, PCOL_DELETED))
        return GR_ENOTFOUND;
    return 0;
}

int user_me(struct gr_req *req, struct gr_db_rows **rows)
{
    return user_profile_load(req, user_self(req), true, rows);
}

int user_me_peek(struct gr_req *req, struct gr_db_rows **rows)
{
    const char *self = user_self(req);
    int rc;

    if (self == NULL)
        return GR_ENOTFOUND;
    rc = select_profile(req, self, rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(*rows) == 1 && !gr_db_isnull(*rows, 0, PCOL_DELETED))
        return GR_ENOTFOUND;
    return 0;
}

/* A new reference: the text at @col, or JSON null. */
static json_t *text_or_null(const struct gr_db_rows *rows, size_t i, size_t col)
{
    const char *s = gr_db_text(rows, i, col);
    return s != NULL ? json_string(s) : json_null();
}

json_t *user_profile_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i)
{
    static const char *const names[] = {
        "id",           "email",          "username", "first_name", "last_name",
        "display_name", "avatar_file_id", "locale",   "timezone"
    };
    json_t *p = user_own(a, json_object());

    for (size_t c = 0; c < sizeof(names) / sizeof(names[0]); c++)
        json_object_set_new(p, names[c], text_or_null(rows, i, c));
    json_object_set_new(p, "version", json_integer(gr_db_int(rows, i, PCOL_VERSION)));
    json_object_set_new(p, "created_at", text_or_null(rows, i, PCOL_CREATED));
    json_object_set_new(p, "updated_at", text_or_null(rows, i, PCOL_CREATED + 1));
    return p;
}

json_t *user_address_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i)
{
    static const char *const names[] = { "id",   "label",  "recipient",   "line1",   "line2",
                                         "city", "region", "postal_code", "country", "phone" };
    json_t *o = user_own(a, json_object());

    for (size_t c = 0; c < sizeof(names) / sizeof(names[0]); c++)
        json_object_set_new(o, names[c], text_or_null(rows, i, c));
    json_object_set_new(o, "is_default", json_boolean(gr_db_int(rows, i, ACOL_DEFAULT) != 0));
    json_object_set_new(o, "version", json_integer(gr_db_int(rows, i, ACOL_VERSION)));
    json_object_set_new(o, "created_at", text_or_null(rows, i, ACOL_CREATED));
    json_object_set_new(o, "updated_at", text_or_null(rows, i, ACOL_CREATED + 1));
    return o;
}

int user_check_version(struct gr_req *req, struct gr_resp *resp, bool present, long long want,
                       long long have)
{
    if (!present || want == have)
        return 0;
    return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                           "version %lld is stale: the current version is %lld", want, have);
}

int user_publish_updated(struct gr_db_conn *db, struct gr_arena *a, const char *user_id,
                         const char *traceparent)
{
    struct gr_db_rows *rows = NULL;
    struct gr_str text;
    int rc;

    rc = gr_db_query(db, a, "SELECT " PROFILE_COLS " FROM profiles p WHERE p.user_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    rc = gr_json_dump(a, user_profile_json(a, rows, 0), &text);
    if (rc < 0)
        return rc;
    return gr_bus_emit(db, USER_SOURCE, "user.updated", user_id, text.ptr, traceparent, NULL);
}

int user_cursor_read(struct gr_req *req, const char *scope, const char *cursor,
                     struct gr_db_val *created, struct gr_db_val *id)
{
    const char *payload = NULL, *bar;
    size_t len = 0;

    if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, &len) < 0)
        return GR_EINVAL;
    bar = memchr(payload, '|', len);
    if (bar == NULL || bar == payload || strlen(payload) != len ||
        !gr_id_valid(bar + 1, len - (size_t)(bar + 1 - payload)))
        return GR_EINVAL;
    *created = GR_DB_TEXT(gr_arena_strndup(req->arena, payload, (size_t)(bar - payload)));
    *id = GR_DB_TEXT(bar + 1);
    return 0;
}

const char *user_cursor_key(struct gr_req *req, const char *created, const char *id)
{
    return gr_arena_printf(req->arena, "%s|%s", created, id);
}

void user_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                    const char **out, bool *present)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;

    if (present != NULL)
        *present = v != NULL;
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return;
    if (!json_is_string(v) || !gr_id_valid(json_string_value(v), json_string_length(v))) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be a UUID");
        return;
    }
    *out = json_string_value(v);
}

int user_read_only(struct gr_req *req, struct gr_resp *resp, json_t *obj, const char *const *ro,
                   const char *why)
{
    bool found = false;

    if (!json_is_object(obj))
        return 0;
    for (size_t i = 0; ro[i] != NULL; i++) {
        if (json_object_get(obj, ro[i]) == NULL)
            continue;
        gr_resp_field_error(req, resp, gr_json_ptr_key(req->arena, "", ro[i]), "%s", why);
        found = true;
    }
    if (!found)
        return 0;
    return gr_resp_problem(req, resp, GR_EVALID, "read_only_field", "%s", why);
}

int user_no_body(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = user_rd(req, resp);
    const char *ct = gr_req_header(req, "Content-Type");
    json_t *doc = NULL;
    size_t i = 0;
    int rc;

    while (i < req->body.len && (req->body.ptr[i] == ' ' || req->body.ptr[i] == '\t' ||
                                 req->body.ptr[i] == '\r' || req->body.ptr[i] == '\n'))
        i++;
    if (i == req->body.len)
        return 0;
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0 ||
        (ct[16] != '\0' && ct[16] != ';' && ct[16] != ' '))
        return gr_resp_problem(req, resp, GR_EMEDIA, NULL, "use application/json or no body");
    rc = gr_json_parse(req->arena, req->body.ptr, req->body.len, &doc, &resp->errs);
    if (rc < 0)
        return gr_resp_problem(req, resp, rc, NULL, "the body is not valid JSON");
    return gr_json_only(&r, doc, "", NULL) < 0 ? GR_EVALID : 0;
}
