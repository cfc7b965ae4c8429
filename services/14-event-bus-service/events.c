/*
 * events.c - the event log: publishing one CloudEvents 1.0 structured event or a batch
 * (deduplicated on source + id, validated against registered schemas, stored with its fan-out
 * to the matching subscriptions in one transaction), the replay list by seq and lookup by seq.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "eventbus.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/service.h"

/* ---- storing ------------------------------------------------------------------------------- */

#define SQL_FIND "SELECT seq FROM events WHERE source = $1 AND id = $2"
#define SQL_INSERT                                                                                 \
    "INSERT INTO events (id, source, type, subject, time, data, envelope, created_at)"             \
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq"
/* One pending delivery per subscription with a matching filter, due at once. */
#define SQL_FANOUT                                                                                 \
    "INSERT INTO deliveries (subscription_id, seq, subject, attempts, state, deliver_after)"       \
    " SELECT s.id, CAST($1 AS BIGINT), CAST($2 AS TEXT), 0, 'pending', 0 FROM subscriptions s"     \
    " WHERE EXISTS (SELECT 1 FROM subscription_filters f WHERE f.subscription_id = s.id"           \
    " AND ((f.is_prefix = 0 AND f.pattern = CAST($3 AS TEXT)) OR (f.is_prefix = 1"                 \
    " AND substr(CAST($3 AS TEXT), 1, length(f.pattern)) = f.pattern)))"

int eb_event_store(struct gr_db_conn *db, struct gr_arena *a, const struct eb_event *ev,
                   long long *seq, bool *dup)
{
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    int rc;

    rc = gr_db_query(db, a, SQL_FIND,
                     (struct gr_db_val[]){ GR_DB_TEXT(ev->source), GR_DB_TEXT(ev->id) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        *seq = gr_db_int(rows, 0, 0);
        *dup = true;
        return 0;
    }
    eb_now(now);
    rc = gr_db_query(
        db, a, SQL_INSERT,
        (struct gr_db_val[]){ GR_DB_TEXT(ev->id), GR_DB_TEXT(ev->source), GR_DB_TEXT(ev->type),
                              GR_DB_TEXT(ev->subject), GR_DB_TEXT(ev->time ? ev->time : now),
                              GR_DB_TEXT(ev->data), GR_DB_TEXT(ev->envelope), GR_DB_TEXT(now) },
        8, &rows);
    /*
     * A concurrent publisher of the same (source, id) committed first (PostgreSQL): retry the
     * whole request, which then finds the stored event and answers it as a duplicate.
     */
    if (rc == GR_ECONFLICT)
        return GR_EBUSY;
    if (rc < 0)
        return rc;
    *seq = gr_db_int(rows, 0, 0);
    *dup = false;
    return gr_db_exec(
        db, SQL_FANOUT,
        (struct gr_db_val[]){ GR_DB_INT(*seq), GR_DB_TEXT(ev->subject), GR_DB_TEXT(ev->type) }, 3,
        NULL);
}

int eb_event_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type, const char *subject,
                  json_t *data)
{
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct gr_str env, dd;
    struct eb_event ev;
    long long seq;
    bool dup;
    json_t *e;

    gr_id_new(id);
    eb_now(now);
    e = eb_own(a, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:O}", "specversion", "1.0", "id", id,
                            "source", EB_SOURCE, "type", type, "subject", subject, "time", now,
                            "datacontenttype", "application/json", "data", data));
    if (gr_json_dump(a, e, &env) < 0 || gr_json_dump(a, data, &dd) < 0)
        return GR_EINTERNAL;
    ev = (struct eb_event){ .id = gr_arena_strdup(a, id),
                            .source = EB_SOURCE,
                            .type = type,
                            .subject = subject,
                            .time = gr_arena_strdup(a, now),
                            .data = dd.ptr,
                            .envelope = env.ptr };
    return eb_event_store(db, a, &ev, &seq, &dup);
}

json_t *eb_event_item(struct gr_arena *a, long long seq, const char *envelope)
{
    json_t *ev = json_loads(envelope, 0, NULL);

    if (ev == NULL)
        ev = json_object();
    return eb_own(a, json_pack("{s:I,s:o}", "seq", (json_int_t)seq, "event", ev));
}

/* ---- validation ---------------------------------------------------------------------------- */

static const char *const known_attrs[] = {
    "specversion",     "id",         "source",      "type", "subject", "time",
    "datacontenttype", "dataschema", "traceparent", "data", NULL
};

static bool is_known(const char *k)
{
    for (size_t i = 0; known_attrs[i]; i++)
        if (strcmp(known_attrs[i], k) == 0)
            return true;
    return false;
}

static bool ext_name_valid(const char *k)
{
    size_t n = strlen(k);

    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((k[i] >= 'a' && k[i] <= 'z') || (k[i] >= '0' && k[i] <= '9')))
            return false;
    return true;
}

/*
 * Reads the event object @obj at pointer @ptr into @ev; errors accumulate in @r. The envelope
 * is the object as sent, compact.
 */
static void read_event(struct gr_req *req, const struct gr_json_rd *r, json_t *obj, const char *ptr,
                       struct eb_event *ev)
{
    const char *spec = NULL, *ct = NULL, *schema = NULL, *tp = NULL, *key;
    bool present;
    json_t *v;
    struct gr_str dump;

    memset(ev, 0, sizeof(*ev));
    if (!json_is_object(obj)) {
        gr_errs_add(r->errs, r->a, ptr, "must be an object");
        return;
    }
    (void)gr_json_str(r, obj, ptr, "specversion", GR_JSON_REQUIRED, 1, 16, &spec, &present);
    if (spec != NULL && strcmp(spec, "1.0") != 0)
        gr_errs_addk(r->errs, r->a, ptr, "specversion", "must be \"1.0\"");
    (void)gr_json_str(r, obj, ptr, "id", GR_JSON_REQUIRED, 1, EB_ID_MAX, &ev->id, NULL);
    (void)gr_json_str(r, obj, ptr, "source", GR_JSON_REQUIRED, 1, EB_SOURCE_MAX, &ev->source, NULL);
    (void)gr_json_str(r, obj, ptr, "type", GR_JSON_REQUIRED, 1, EB_TYPE_MAX, &ev->type, NULL);
    if (ev->type != NULL && !eb_type_valid(ev->type)) {
        gr_errs_addk(r->errs, r->a, ptr, "type", "must match ^[a-z0-9]+(\\.[a-z0-9_]+)+$");
        ev->type = NULL;
    }
    (void)gr_json_str(r, obj, ptr, "subject", 0, 1, EB_SUBJECT_MAX, &ev->subject, NULL);
    (void)gr_json_str(r, obj, ptr, "time", 0, 1, 64, &ev->time, &present);
    if (ev->time != NULL) {
        int64_t ms;
        if (gr_time_parse(ev->time, &ms) < 0)
            gr_errs_addk(r->errs, r->a, ptr, "time", "must be an RFC 3339 date-time");
        else {
            char *t = gr_arena_alloc(r->a, GR_TIME_STR_LEN);
            gr_time_format(ms, t);
            ev->time = t;
        }
    }
    (void)gr_json_str(r, obj, ptr, "datacontenttype", 0, 1, 255, &ct, NULL);
    if (ct != NULL && strcmp(ct, "application/json") != 0)
        gr_errs_addk(r->errs, r->a, ptr, "datacontenttype", "must be application/json");
    (void)gr_json_str(r, obj, ptr, "dataschema", 0, 1, EB_URL_MAX, &schema, NULL);
    (void)gr_json_str(r, obj, ptr, "traceparent", 0, 1, 512, &tp, NULL);
    v = json_object_get(obj, "data");
    if (v != NULL) {
        if (gr_json_dump(r->a, v, &dump) < 0)
            gr_errs_addk(r->errs, r->a, ptr, "data", "cannot be serialised");
        else if (dump.len > EB_DATA_MAX)
            gr_errs_addk(r->errs, r->a, ptr, "data", "must be at most %d bytes", EB_DATA_MAX);
        else
            ev->data = dump.ptr;
    }
    json_object_foreach(obj, key, v)
    {
        if (is_known(key))
            continue;
        if (!ext_name_valid(key))
            gr_errs_addk(r->errs, r->a, ptr, key,
                         "is not a CloudEvents attribute (extension names match ^[a-z0-9]{1,20}$)");
        else if (!json_is_string(v) && !json_is_number(v) && !json_is_boolean(v))
            gr_errs_addk(r->errs, r->a, ptr, key, "must be a string, number or boolean");
    }
    if (gr_json_dump(r->a, obj, &dump) < 0)
        gr_errs_add(r->errs, r->a, ptr, "cannot be serialised");
    else
        ev->envelope = dump.ptr;
    (void)req;
}

/* ---- publish ------------------------------------------------------------------------------- */

enum media { MEDIA_BAD, MEDIA_ONE, MEDIA_BATCH };

static enum media media_of(const char *ct)
{
    size_t n;

    if (ct == NULL)
        return MEDIA_BAD;
    n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    if ((n == 16 && strncasecmp(ct, "application/json", n) == 0) ||
        (n == 28 && strncasecmp(ct, "application/cloudevents+json", n) == 0))
        return MEDIA_ONE;
    if (n == 34 && strncasecmp(ct, "application/cloudevents-batch+json", n) == 0)
        return MEDIA_BATCH;
    return MEDIA_BAD;
}

int eb_events_publish(struct gr_req *req, struct gr_resp *resp)
{
    enum media m = media_of(gr_req_header(req, "Content-Type"));
    struct gr_json_rd r = eb_rd(req, resp);
    struct eb_event *evs;
    json_t *doc = NULL, *out;
    size_t n;
    int rc;

    if (m == MEDIA_BAD)
        return gr_resp_problem(req, resp, GR_EMEDIA, NULL,
                               "use application/cloudevents+json, application/json or "
                               "application/cloudevents-batch+json");
    if (req->body.len == 0)
        return gr_resp_problem(req, resp, GR_EINVAL, NULL, "a JSON body is required");
    rc = gr_json_parse(req->arena, req->body.ptr, req->body.len, &doc, &resp->errs);
    if (rc < 0)
        return gr_resp_problem(req, resp, rc, NULL,
                               rc == GR_EINVAL ? "the body is not valid JSON"
                                               : "the body has invalid values");
    if (m == MEDIA_BATCH) {
        if (!json_is_array(doc)) {
            gr_resp_field_error(req, resp, "", "must be an array of events");
            return gr_resp_problem(req, resp, GR_EVALID, NULL, "the batch is not an array");
        }
        n = json_array_size(doc);
        if (n > EB_BATCH_MAX)
            return gr_resp_problem(req, resp, GR_ETOOBIG, "batch_too_large",
                                   "a batch holds at most %d events, not %zu", EB_BATCH_MAX, n);
        if (n == 0) {
            gr_resp_field_error(req, resp, "", "must hold at least one event");
            return gr_resp_problem(req, resp, GR_EVALID, NULL, "the batch is empty");
        }
    } else {
        n = 1;
    }
    evs = gr_arena_calloc(req->arena, n * sizeof(*evs));
    for (size_t i = 0; i < n; i++) {
        json_t *e = m == MEDIA_BATCH ? json_array_get(doc, i) : doc;
        const char *ptr = m == MEDIA_BATCH ? gr_json_ptr_idx(req->arena, "", i) : "";
        read_event(req, &r, e, ptr, &evs[i]);
    }
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the event is not valid");
    rc = gr_req_begin(req);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        json_t *e = m == MEDIA_BATCH ? json_array_get(doc, i) : doc;
        const char *ptr = m == MEDIA_BATCH ? gr_json_ptr_idx(req->arena, "", i) : "";
        json_t *data = json_object_get(e, "data");

        rc = eb_schema_check(req->db, req->arena, &resp->errs, evs[i].type,
                             data ? data : json_null(), gr_json_ptr_key(req->arena, ptr, "data"));
        if (rc < 0 && rc != GR_EVALID)
            return rc;
    }
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, "schema_violation",
                               "the event data does not match its schema");
    out = json_array();
    for (size_t i = 0; i < n; i++) {
        long long seq = 0;
        bool dup = false;

        rc = eb_event_store(req->db, req->arena, &evs[i], &seq, &dup);
        if (rc < 0) {
            json_decref(out);
            return rc;
        }
        json_array_append_new(out, json_pack("{s:I,s:s,s:b}", "seq", (json_int_t)seq, "id",
                                             evs[i].id, "duplicate", dup));
    }
    rc = gr_db_commit(req->db);
    if (rc < 0) {
        json_decref(out);
        return rc;
    }
    eb_wake(req->app);
    if (m == MEDIA_BATCH) {
        gr_resp_json(resp, 201, json_pack("{s:o}", "data", out));
    } else {
        json_t *one = json_incref(json_array_get(out, 0));
        bool dup = json_is_true(json_object_get(one, "duplicate"));

        json_decref(out);
        gr_resp_json(resp, dup ? 200 : 201, one);
    }
    return 0;
}

/* ---- list and get -------------------------------------------------------------------------- */

#define LIST_ALL "SELECT seq, envelope FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
#define LIST_EXACT                                                                                 \
    "SELECT seq, envelope FROM events WHERE seq > $1 AND type = $3 ORDER BY seq LIMIT $2"
#define LIST_PREFIX                                                                                \
    "SELECT seq, envelope FROM events WHERE seq > $1"                                              \
    " AND substr(type, 1, length(CAST($3 AS TEXT))) = $3 ORDER BY seq LIMIT $2"

/* Parses a decimal seq (digits only, no sign, at most 18 digits); false otherwise. */
static bool parse_seq(const char *s, long long *out)
{
    size_t n = strlen(s);
    long long v = 0;

    if (n == 0 || n > 18)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

int eb_events_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *type = gr_req_query(req, "type"), *cursor = gr_req_query(req, "cursor");
    const char *sql = LIST_ALL, *pattern = NULL, *scope;
    struct gr_db_rows *rows = NULL;
    long long after = 0;
    bool has_after = false, prefix = false, has_more;
    size_t plen = 0, nrows, nparams = 2;
    json_t *data;
    int limit = 20, rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (gr_req_query_int(req, resp, "after_seq", 0, 999999999999999999LL, &after, &has_after) < 0)
        after = 0;
    if (type != NULL) {
        if (!eb_filter_valid(type, &prefix, &plen)) {
            gr_resp_field_error(req, resp, "query.type",
                                "must be an event type or a prefix ending in '*'");
        } else {
            pattern = gr_arena_strndup(req->arena, type, plen);
            sql = !prefix ? LIST_EXACT : plen > 0 ? LIST_PREFIX : LIST_ALL;
            nparams = !prefix || plen > 0 ? 3 : 2;
        }
    }
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "invalid query parameters");
    scope = gr_arena_printf(req->arena, "GET /api/v1/events\ntype=%s\nafter=%lld", type ? type : "",
                            after);
    if (cursor != NULL) {
        const char *payload = NULL;
        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL) <
                0 ||
            !parse_seq(payload, &after))
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
    }
    rc = gr_db_query(
        req->db, req->arena, sql,
        (struct gr_db_val[]){ GR_DB_INT(after), GR_DB_INT(limit + 1), GR_DB_TEXT(pattern) },
        nparams, &rows);
    if (rc < 0)
        return rc;
    nrows = gr_db_nrows(rows);
    has_more = nrows > (size_t)limit;
    if (has_more)
        nrows = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < nrows; i++)
        json_array_append(data,
                          eb_event_item(req->arena, gr_db_int(rows, i, 0), gr_db_text(rows, i, 1)));
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? gr_db_text(rows, nrows - 1, 0) : NULL);
}

int eb_events_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    long long seq;
    int rc;

    if (!parse_seq(gr_req_param(req, "seq"), &seq))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such event");
    rc = gr_db_query(req->db, req->arena, "SELECT seq, envelope FROM events WHERE seq = $1",
                     (struct gr_db_val[]){ GR_DB_INT(seq) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such event");
    gr_resp_json(resp, 200, json_incref(eb_event_item(req->arena, seq, gr_db_text(rows, 0, 1))));
    return 0;
}
