/*
 * addresses.c - the caller's addresses (GET|POST /users/me/addresses, PATCH|DELETE …/{id},
 * POST …/{id}/default). A user has at most USER_ADDR_MAX addresses and, as soon as there is
 * one, exactly one default: the partial unique index addresses_one_default (user_id WHERE
 * is_default = 1) makes two defaults impossible, and every switch clears the old default and
 * sets the new one in the route's transaction. The first address becomes the default; deleting
 * the default promotes the oldest remaining address. Countries are ISO 3166-1 alpha-2.
 */
#include <string.h>

#include "gr/service.h"
#include "user.h"

#define A "/api/v1/users/me/addresses"

/* Address fields in ADDRESS_COLS order from column 1, with their length limits. */
static const struct {
    const char *name;
    size_t min, max;
    bool required;
} fields[] = {
    { "label", 1, USER_ADDR_LABEL_MAX, false },   { "recipient", 1, USER_ADDR_FIELD_MAX, false },
    { "line1", 1, USER_ADDR_LINE_MAX, true },     { "line2", 1, USER_ADDR_LINE_MAX, false },
    { "city", 1, USER_ADDR_FIELD_MAX, true },     { "region", 1, USER_ADDR_FIELD_MAX, false },
    { "postal_code", 1, USER_POSTAL_MAX, false }, { "country", 1, 8, true },
    { "phone", 3, USER_PHONE_MAX, false },
};
#define NFIELDS   (sizeof(fields) / sizeof(fields[0]))
#define F_POSTAL  6
#define F_COUNTRY 7
#define F_PHONE   8

struct address_in {
    const char *v[NFIELDS]; /* NULL = absent */
    bool is_default;
};

/* Postal codes: letters, digits, spaces and '-'. */
static bool postal_ok(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == ' ' || c == '-'))
            return false;
    }
    return true;
}

/* Phone numbers: digits and + - ( ) . and spaces, with at least 3 digits. */
static bool phone_ok(const char *s)
{
    int digits = 0;

    for (; *s; s++) {
        char c = *s;
        if (c >= '0' && c <= '9')
            digits++;
        else if (strchr("+-(). ", c) == NULL)
            return false;
    }
    return digits >= 3;
}

/* Reads the address fields of @doc (a create body or a patched document) into @in. */
static void read_address(struct gr_req *req, struct gr_resp *resp, json_t *doc,
                         struct address_in *in)
{
    struct gr_json_rd r = user_rd(req, resp);

    memset(in, 0, sizeof(*in));
    for (size_t i = 0; i < NFIELDS; i++) {
        size_t before = resp->errs.n;

        (void)gr_json_str(&r, doc, "", fields[i].name,
                          fields[i].required ? GR_JSON_REQUIRED : GR_JSON_NULLABLE, fields[i].min,
                          fields[i].max, &in->v[i], NULL);
        if (resp->errs.n != before || in->v[i] == NULL)
            continue;
        if (i == F_COUNTRY) {
            char *cc = gr_arena_strdup(req->arena, in->v[i]);
            for (char *p = cc; *p; p++)
                if (*p >= 'a' && *p <= 'z')
                    *p = (char)(*p - 'a' + 'A');
            if (user_country_valid(cc))
                in->v[i] = cc;
            else
                gr_resp_field_error(req, resp, "/country",
                                    "must be an ISO 3166-1 alpha-2 country code such as 'US'");
        } else if (i == F_POSTAL && !postal_ok(in->v[i])) {
            gr_resp_field_error(req, resp, "/postal_code",
                                "must contain only letters, digits, spaces and '-'");
        } else if (i == F_PHONE && !phone_ok(in->v[i])) {
            gr_resp_field_error(req, resp, "/phone",
                                "must be at least 3 digits with only + - ( ) . and spaces");
        }
    }
}

/* The address @id of user @uid into *@rows (ADDRESS_COLS); GR_ENOTFOUND if it is not theirs. */
static int fetch_address(struct gr_req *req, const char *uid, const char *id,
                         struct gr_db_rows **rows)
{
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " ADDRESS_COLS " FROM addresses a WHERE a.id = $1 AND a.user_id = $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(uid) }, 2, rows);
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

/*
 * A write that hit addresses_one_default lost a race with another request of the same user
 * (PostgreSQL; SQLite runs writers one at a time): run the handler again, which then sees
 * the other request's default.
 */
static int default_raced(int rc)
{
    return rc == GR_ECONFLICT ? GR_EBUSY : rc;
}

/* Makes @id the only default address of @uid (the old default first, so the index holds). */
static int switch_default(struct gr_req *req, const char *uid, const char *id, const char *now)
{
    int rc;

    rc = gr_db_exec(req->db,
                    "UPDATE addresses SET is_default = 0, version = version + 1, updated_at = $2"
                    " WHERE user_id = $1 AND is_default = 1 AND id <> $3",
                    (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now), GR_DB_TEXT(id) }, 3,
                    NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE addresses SET is_default = 1, version = version + 1,"
                        " updated_at = $2 WHERE user_id = $1 AND id = $3 AND is_default = 0",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now), GR_DB_TEXT(id) }, 3,
                        NULL);
    return default_raced(rc);
}

int addresses_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor");
    const char *dflt = gr_req_query(req, "default");
    struct gr_db_val created = GR_DB_NULL, kid = GR_DB_NULL, only = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *uid, *scope;
    int limit = 20;
    size_t n;
    bool has_more;
    json_t *data;
    int rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (dflt != NULL) {
        if (strcmp(dflt, "true") == 0 || strcmp(dflt, "false") == 0)
            only = GR_DB_INT(strcmp(dflt, "true") == 0 ? 1 : 0);
        else
            gr_resp_field_error(req, resp, "query.default", "must be 'true' or 'false'");
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = user_me_peek(req, &rows);
    if (rc < 0)
        return rc;
    uid = user_self(req);
    scope = gr_arena_printf(req->arena, "GET " A "\n%s\ndefault=%s", uid, dflt ? dflt : "");
    if (cursor != NULL && user_cursor_read(req, scope, cursor, &created, &kid) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT " ADDRESS_COLS " FROM addresses a WHERE a.user_id = $1"
        " AND (CAST($2 AS INTEGER) IS NULL OR a.is_default = CAST($2 AS INTEGER))"
        " AND (CAST($3 AS TEXT) IS NULL"
        " OR (a.created_at, a.id) < (CAST($3 AS TEXT), CAST($4 AS TEXT)))"
        " ORDER BY a.created_at DESC, a.id DESC LIMIT CAST($5 AS INTEGER)",
        (struct gr_db_val[]){ GR_DB_TEXT(uid), only, created, kid, GR_DB_INT(limit + 1) }, 5,
        &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append(data, user_address_json(req->arena, rows, i));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? user_cursor_key(req, gr_db_text(rows, n - 1, ACOL_CREATED),
                                                   gr_db_text(rows, n - 1, ACOL_ID))
                                 : NULL);
}

int addresses_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "label", "recipient",  "line1",       "line2",
                                        "city",  "region",     "postal_code", "country",
                                        "phone", "is_default", NULL };
    struct gr_json_rd r = user_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    struct address_in in;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    const char *uid;
    long long count, defaults;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    read_address(req, resp, req->json, &in);
    (void)gr_json_bool(&r, req->json, "", "is_default", GR_JSON_OPTIONAL, &in.is_default, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT COUNT(*), COALESCE(SUM(is_default), 0) FROM addresses"
                     " WHERE user_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &rows);
    if (rc < 0)
        return rc;
    count = gr_db_int(rows, 0, 0);
    defaults = gr_db_int(rows, 0, 1);
    if (count >= USER_ADDR_MAX)
        return gr_resp_problem(req, resp, GR_EVALID, "address_limit",
                               "a user has at most %d addresses", USER_ADDR_MAX);
    if (defaults == 0)
        in.is_default = true; /* the first address (or the first after a lost race) */
    user_now(now);
    gr_id_new(id);
    rc = 0;
    if (in.is_default && defaults > 0)
        rc = gr_db_exec(req->db,
                        "UPDATE addresses SET is_default = 0, version = version + 1,"
                        " updated_at = $2 WHERE user_id = $1 AND is_default = 1",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now) }, 2, NULL);
    if (rc == 0)
        rc = gr_db_exec(
            req->db,
            "INSERT INTO addresses (id, user_id, label, recipient, line1, line2, city, region,"
            " postal_code, country, phone, is_default, version, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13)",
            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(uid), GR_DB_TEXT(in.v[0]),
                                  GR_DB_TEXT(in.v[1]), GR_DB_TEXT(in.v[2]), GR_DB_TEXT(in.v[3]),
                                  GR_DB_TEXT(in.v[4]), GR_DB_TEXT(in.v[5]), GR_DB_TEXT(in.v[6]),
                                  GR_DB_TEXT(in.v[7]), GR_DB_TEXT(in.v[8]),
                                  GR_DB_INT(in.is_default ? 1 : 0), GR_DB_TEXT(now) },
            13, NULL);
    rc = default_raced(rc);
    if (rc == 0)
        rc = fetch_address(req, uid, id, &rows);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location", gr_arena_printf(req->arena, A "/%s", id));
    gr_resp_json(resp, 201, json_incref(user_address_json(req->arena, rows, 0)));
    return 0;
}

/* The fields of address row 0 as an object, nulls left out (arena). */
static json_t *address_doc(struct gr_req *req, const struct gr_db_rows *rows)
{
    json_t *doc = user_own(req->arena, json_object());

    for (size_t i = 0; i < NFIELDS; i++) {
        const char *v = gr_db_text(rows, 0, 1 + i);
        if (v != NULL)
            json_object_set_new(doc, fields[i].name, json_string(v));
    }
    return doc;
}

/* The validated values as an object like address_doc's. */
static json_t *address_values(struct gr_req *req, const struct address_in *in)
{
    json_t *doc = user_own(req->arena, json_object());

    for (size_t i = 0; i < NFIELDS; i++)
        if (in->v[i] != NULL)
            json_object_set_new(doc, fields[i].name, json_string(in->v[i]));
    return doc;
}

int addresses_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "label",      "recipient",  "line1",       "line2",
                                        "city",       "region",     "postal_code", "country",
                                        "phone",      "version",    "id",          "is_default",
                                        "created_at", "updated_at", NULL };
    static const char *const ro[] = { "id", "is_default", "created_at", "updated_at", NULL };
    struct gr_json_rd r = user_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    struct address_in in;
    char now[GR_TIME_STR_LEN];
    const char *uid, *id = gr_req_param(req, "id");
    long long version = 0, have, changes = 0;
    bool has_version = false;
    json_t *before, *doc, *patch;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    rc = fetch_address(req, uid, id, &rows);
    if (rc < 0)
        return rc;
    have = gr_db_int(rows, 0, ACOL_VERSION);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    rc = user_read_only(req, resp, req->json, ro,
                        "is read-only: POST …/addresses/{id}/default changes the default");
    if (rc < 0)
        return rc;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &version,
                      &has_version);
    before = address_doc(req, rows);
    doc = user_own(req->arena, json_deep_copy(before));
    patch = user_own(req->arena, json_deep_copy(req->json));
    json_object_del(patch, "version");
    if (gr_json_merge_patch(doc, patch) < 0)
        return GR_EINTERNAL;
    read_address(req, resp, doc, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = user_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (json_equal(before, address_values(req, &in))) {
        gr_resp_json(resp, 200, json_incref(user_address_json(req->arena, rows, 0)));
        return 0;
    }
    user_now(now);
    rc = gr_db_exec(
        req->db,
        "UPDATE addresses SET label = $3, recipient = $4, line1 = $5, line2 = $6,"
        " city = $7, region = $8, postal_code = $9, country = $10, phone = $11,"
        " version = version + 1, updated_at = $12 WHERE id = $1 AND version = $2",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(have), GR_DB_TEXT(in.v[0]),
                              GR_DB_TEXT(in.v[1]), GR_DB_TEXT(in.v[2]), GR_DB_TEXT(in.v[3]),
                              GR_DB_TEXT(in.v[4]), GR_DB_TEXT(in.v[5]), GR_DB_TEXT(in.v[6]),
                              GR_DB_TEXT(in.v[7]), GR_DB_TEXT(in.v[8]), GR_DB_TEXT(now) },
        12, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the address changed concurrently");
    rc = fetch_address(req, uid, id, &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(user_address_json(req->arena, rows, 0)));
    return 0;
}

int addresses_delete(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    const char *uid, *id = gr_req_param(req, "id");
    char now[GR_TIME_STR_LEN];
    bool was_default;
    int rc;

    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    rc = fetch_address(req, uid, id, &rows);
    if (rc < 0)
        return rc;
    was_default = gr_db_int(rows, 0, ACOL_DEFAULT) != 0;
    rc = gr_db_exec(req->db, "DELETE FROM addresses WHERE id = $1 AND user_id = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(uid) }, 2, NULL);
    if (rc == 0 && was_default) {
        /* The oldest remaining address takes over, so a user with addresses keeps a default. */
        user_now(now);
        rc = gr_db_exec(req->db,
                        "UPDATE addresses SET is_default = 1, version = version + 1,"
                        " updated_at = $2 WHERE id = (SELECT id FROM addresses WHERE user_id = $1"
                        " ORDER BY created_at, id LIMIT 1)",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now) }, 2, NULL);
        rc = default_raced(rc);
    }
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 204, NULL);
    return 0;
}

int addresses_set_default(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    const char *uid, *id = gr_req_param(req, "id");
    char now[GR_TIME_STR_LEN];
    int rc;

    rc = user_no_body(req, resp);
    if (rc < 0)
        return rc;
    rc = user_me(req, &rows);
    if (rc < 0)
        return rc;
    uid = gr_db_text(rows, 0, PCOL_ID);
    rc = fetch_address(req, uid, id, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, ACOL_DEFAULT) == 0) {
        user_now(now);
        rc = switch_default(req, uid, id, now);
        if (rc == 0)
            rc = fetch_address(req, uid, id, &rows);
        if (rc < 0)
            return rc;
    }
    gr_resp_json(resp, 200, json_incref(user_address_json(req->arena, rows, 0)));
    return 0;
}
