/*
 * subscriptions.c - durable subscriptions: create (idempotent by name, so a service binds its
 * subscription at every start-up; a pull subscription whose owner now asks for other filters,
 * ordering, ack_wait or max_deliver is updated in place, like a JetStream durable consumer),
 * list, get and delete. A subscription created with start "all" receives a pending delivery for
 * every stored event that matches its filters; later events reach it through the publish fan-out
 * (events.c).
 */
#include <string.h>

#include "eventbus.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/service.h"

#define SUB_COLS                                                                                   \
    "id, name, type_filters, mode, push_url, ordered, ack_wait_s, max_deliver, start, created_at"

enum {
    SC_ID,
    SC_NAME,
    SC_FILTERS,
    SC_MODE,
    SC_URL,
    SC_ORDERED,
    SC_ACK_WAIT,
    SC_MAX_DELIVER,
    SC_START,
    SC_CREATED
};

#define SQL_BACKFILL                                                                               \
    "INSERT INTO deliveries (subscription_id, seq, subject, attempts, state, deliver_after)"       \
    " SELECT $1, e.seq, e.subject, 0, 'pending', 0 FROM events e"                                  \
    " WHERE EXISTS (SELECT 1 FROM subscription_filters f WHERE f.subscription_id = $1"             \
    " AND ((f.is_prefix = 0 AND f.pattern = e.type) OR (f.is_prefix = 1"                           \
    " AND substr(e.type, 1, length(f.pattern)) = f.pattern)))"

static json_t *sub_json(const struct gr_db_rows *rows, size_t i)
{
    json_t *filters = json_loads(gr_db_text(rows, i, SC_FILTERS), 0, NULL);

    if (filters == NULL)
        filters = json_array();
    return json_pack("{s:s,s:s,s:o,s:s,s:s?,s:b,s:I,s:I,s:s,s:s}", "id", gr_db_text(rows, i, SC_ID),
                     "name", gr_db_text(rows, i, SC_NAME), "type_filters", filters, "mode",
                     gr_db_text(rows, i, SC_MODE), "push_url", gr_db_text(rows, i, SC_URL),
                     "ordered", gr_db_int(rows, i, SC_ORDERED) != 0, "ack_wait_s",
                     (json_int_t)gr_db_int(rows, i, SC_ACK_WAIT), "max_deliver",
                     (json_int_t)gr_db_int(rows, i, SC_MAX_DELIVER), "start",
                     gr_db_text(rows, i, SC_START), "created_at", gr_db_text(rows, i, SC_CREATED));
}

static bool name_valid(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

static bool url_valid(const char *s)
{
    size_t skip;

    if (strncmp(s, "http://", 7) == 0)
        skip = 7;
    else if (strncmp(s, "https://", 8) == 0)
        skip = 8;
    else
        return false;
    if (s[skip] == '\0' || s[skip] == '/')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

struct sub_in {
    const char *name, *mode, *push_url, *start, *filters_text;
    json_t *filters;
    bool ordered;
    long long ack_wait_s, max_deliver;
};

static void read_sub(struct gr_req *req, struct gr_resp *resp, struct sub_in *in)
{
    static const char *const allowed[] = { "name",        "type_filters", "mode",
                                           "push_url",    "ordered",      "ack_wait_s",
                                           "max_deliver", "start",        NULL };
    struct gr_json_rd r = eb_rd(req, resp);
    json_t *b = req->json;
    struct gr_str dump;
    bool present;

    memset(in, 0, sizeof(*in));
    in->mode = "pull";
    in->start = "all";
    in->ack_wait_s = 30;
    in->max_deliver = 5;
    if (gr_json_only(&r, b, "", allowed) < 0 && !json_is_object(b))
        return;
    (void)gr_json_str(&r, b, "", "name", GR_JSON_REQUIRED, 1, 64, &in->name, NULL);
    if (in->name != NULL && !name_valid(in->name))
        gr_resp_field_error(req, resp, "/name", "must match ^[a-z0-9][a-z0-9._-]{0,63}$");
    (void)gr_json_arr(&r, b, "", "type_filters", GR_JSON_REQUIRED, EB_FILTERS_MAX, &in->filters,
                      &present);
    if (in->filters != NULL) {
        size_t i;
        json_t *f;
        if (json_array_size(in->filters) == 0)
            gr_resp_field_error(req, resp, "/type_filters", "must have at least 1 item");
        json_array_foreach(in->filters, i, f)
        {
            bool prefix;
            size_t plen;
            if (!json_is_string(f) || !eb_filter_valid(json_string_value(f), &prefix, &plen))
                gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/type_filters", i),
                                    "must be an event type or a prefix ending in '*'");
        }
        if (gr_json_dump(req->arena, in->filters, &dump) == 0)
            in->filters_text = dump.ptr;
    }
    (void)gr_json_str(&r, b, "", "mode", 0, 1, 8, &in->mode, NULL);
    if (strcmp(in->mode, "pull") != 0 && strcmp(in->mode, "push") != 0)
        gr_resp_field_error(req, resp, "/mode", "must be pull or push");
    (void)gr_json_str(&r, b, "", "push_url", GR_JSON_NULLABLE, 1, EB_URL_MAX, &in->push_url, NULL);
    if (in->push_url != NULL && !url_valid(in->push_url))
        gr_resp_field_error(req, resp, "/push_url", "must be an http or https URL");
    if (strcmp(in->mode, "push") == 0 && in->push_url == NULL)
        gr_resp_field_error(req, resp, "/push_url", "is required in push mode");
    if (strcmp(in->mode, "pull") == 0 && in->push_url != NULL)
        gr_resp_field_error(req, resp, "/push_url", "is only allowed in push mode");
    (void)gr_json_bool(&r, b, "", "ordered", 0, &in->ordered, NULL);
    (void)gr_json_int(&r, b, "", "ack_wait_s", 0, 1, 3600, &in->ack_wait_s, NULL);
    (void)gr_json_int(&r, b, "", "max_deliver", 0, 1, 100, &in->max_deliver, NULL);
    (void)gr_json_str(&r, b, "", "start", 0, 1, 8, &in->start, NULL);
    if (strcmp(in->start, "all") != 0 && strcmp(in->start, "new") != 0)
        gr_resp_field_error(req, resp, "/start", "must be all or new");
}

/* Same delivery target: the mode and push URL, which an existing name can never change. */
static bool same_target(const struct sub_in *in, const struct gr_db_rows *rows)
{
    const char *url = gr_db_text(rows, 0, SC_URL);

    return strcmp(in->mode, gr_db_text(rows, 0, SC_MODE)) == 0 &&
           ((in->push_url == NULL && url == NULL) ||
            (in->push_url != NULL && url != NULL && strcmp(in->push_url, url) == 0));
}

static bool same_settings(const struct sub_in *in, const struct gr_db_rows *rows)
{
    return same_target(in, rows) &&
           strcmp(in->filters_text, gr_db_text(rows, 0, SC_FILTERS)) == 0 &&
           in->ordered == (gr_db_int(rows, 0, SC_ORDERED) != 0) &&
           in->ack_wait_s == gr_db_int(rows, 0, SC_ACK_WAIT) &&
           in->max_deliver == gr_db_int(rows, 0, SC_MAX_DELIVER);
}

static int insert_filters(struct gr_req *req, const char *id, json_t *filters);

/*
 * Updates the pull subscription @id to the settings @in: new filters, ordering, ack_wait and
 * max_deliver. Pending and in-flight deliveries of types it no longer matches are dropped;
 * events of newly matched types reach it from now on (no back-fill, as with a JetStream
 * consumer whose filter changes). Acked and dead deliveries stay as they are.
 */
static int update_sub(struct gr_req *req, const char *id, const struct sub_in *in)
{
    int rc;

    rc = gr_db_exec(req->db,
                    "UPDATE subscriptions SET type_filters = $2, ordered = $3, ack_wait_s = $4,"
                    " max_deliver = $5 WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(in->filters_text),
                                          GR_DB_INT(in->ordered), GR_DB_INT(in->ack_wait_s),
                                          GR_DB_INT(in->max_deliver) },
                    5, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM subscription_filters WHERE subscription_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc == 0)
        rc = insert_filters(req, id, in->filters);
    if (rc == 0)
        rc = gr_db_exec(
            req->db,
            "DELETE FROM deliveries WHERE subscription_id = $1 AND state IN ('pending', 'inflight')"
            " AND seq IN (SELECT e.seq FROM events e WHERE NOT EXISTS (SELECT 1 FROM"
            " subscription_filters f WHERE f.subscription_id = $1"
            " AND ((f.is_prefix = 0 AND f.pattern = e.type) OR (f.is_prefix = 1"
            " AND substr(e.type, 1, length(f.pattern)) = f.pattern))))",
            (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    return rc;
}

static int insert_filters(struct gr_req *req, const char *id, json_t *filters)
{
    size_t i;
    json_t *f;

    json_array_foreach(filters, i, f)
    {
        const char *s = json_string_value(f);
        bool prefix, dup = false;
        size_t plen;
        int rc;

        for (size_t j = 0; j < i; j++)
            dup = dup || strcmp(s, json_string_value(json_array_get(filters, j))) == 0;
        if (dup || !eb_filter_valid(s, &prefix, &plen))
            continue;
        rc = gr_db_exec(req->db,
                        "INSERT INTO subscription_filters (subscription_id, pattern, is_prefix)"
                        " VALUES ($1, $2, $3)",
                        (struct gr_db_val[]){ GR_DB_TEXT(id),
                                              GR_DB_TEXT(gr_arena_strndup(req->arena, s, plen)),
                                              GR_DB_INT(prefix) },
                        3, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int eb_subs_create(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct sub_in in;
    int rc;

    read_sub(req, resp, &in);
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the subscription is not valid");
    rc = gr_db_query(req->db, req->arena, "SELECT " SUB_COLS " FROM subscriptions WHERE name = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(in.name) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        const char *sid = gr_db_text(rows, 0, SC_ID);

        if (same_settings(&in, rows)) {
            gr_resp_json(resp, 200, sub_json(rows, 0));
            return 0;
        }
        if (!same_target(&in, rows) || strcmp(in.mode, "pull") != 0)
            return gr_resp_problem(req, resp, GR_ECONFLICT, "subscription_exists",
                                   "subscription '%s' exists with another mode or push_url",
                                   in.name);
        rc = update_sub(req, sid, &in);
        if (rc == 0)
            rc = gr_db_query(req->db, req->arena,
                             "SELECT " SUB_COLS " FROM subscriptions WHERE id = $1",
                             (struct gr_db_val[]){ GR_DB_TEXT(sid) }, 1, &rows);
        if (rc < 0)
            return rc;
        gr_resp_json(resp, 200, sub_json(rows, 0));
        return 0;
    }
    gr_id_new(id);
    eb_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO subscriptions (" SUB_COLS ")"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(in.name),
                                          GR_DB_TEXT(in.filters_text), GR_DB_TEXT(in.mode),
                                          GR_DB_TEXT(in.push_url), GR_DB_INT(in.ordered),
                                          GR_DB_INT(in.ack_wait_s), GR_DB_INT(in.max_deliver),
                                          GR_DB_TEXT(in.start), GR_DB_TEXT(now) },
                    10, NULL);
    if (rc == GR_ECONFLICT)
        return GR_EBUSY; /* the same name was created concurrently: answer as a re-bind */
    if (rc < 0)
        return rc;
    rc = insert_filters(req, id, in.filters);
    if (rc < 0)
        return rc;
    if (strcmp(in.start, "all") == 0) {
        rc = gr_db_exec(req->db, SQL_BACKFILL, (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
        if (rc < 0)
            return rc;
    }
    rc = gr_db_query(req->db, req->arena, "SELECT " SUB_COLS " FROM subscriptions WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location",
                   gr_arena_printf(req->arena, "/api/v1/event-subscriptions/%s", id));
    gr_resp_json(resp, 201, sub_json(rows, 0));
    return 0;
}

int eb_subs_list(struct gr_req *req, struct gr_resp *resp)
{
    static const char scope[] = "GET /api/v1/event-subscriptions";
    const char *cursor = gr_req_query(req, "cursor"), *after = NULL;
    struct gr_db_rows *rows = NULL;
    size_t nrows;
    bool has_more;
    json_t *data;
    int limit = 20, rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "invalid query parameters");
    if (cursor != NULL &&
        (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &after, NULL) < 0 ||
         !gr_id_valid(after, strlen(after))))
        return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
    if (after != NULL)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " SUB_COLS " FROM subscriptions WHERE id < $1"
                         " ORDER BY id DESC LIMIT $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(after), GR_DB_INT(limit + 1) }, 2, &rows);
    else
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " SUB_COLS " FROM subscriptions ORDER BY id DESC LIMIT $1",
                         (struct gr_db_val[]){ GR_DB_INT(limit + 1) }, 1, &rows);
    if (rc < 0)
        return rc;
    nrows = gr_db_nrows(rows);
    has_more = nrows > (size_t)limit;
    if (has_more)
        nrows = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < nrows; i++)
        json_array_append_new(data, sub_json(rows, i));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? gr_db_text(rows, nrows - 1, SC_ID) : NULL);
}

int eb_subs_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena, "SELECT " SUB_COLS " FROM subscriptions WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(gr_req_param(req, "id")) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such subscription");
    gr_resp_json(resp, 200, sub_json(rows, 0));
    return 0;
}

int eb_subs_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_val p[] = { GR_DB_TEXT(id) };
    long long n = 0;
    int rc;

    rc = gr_db_exec(req->db, "DELETE FROM deliveries WHERE subscription_id = $1", p, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM subscription_filters WHERE subscription_id = $1", p,
                        1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM subscriptions WHERE id = $1", p, 1, &n);
    if (rc < 0)
        return rc;
    if (n == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such subscription");
    gr_resp_json(resp, 204, NULL);
    return 0;
}
