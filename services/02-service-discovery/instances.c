/*
 * instances.c - the registry's HTTP API: register (idempotent on service+address+port),
 * heartbeat, deregister, the service list, passing instances (with blocking queries on the
 * registry index) and the Prometheus HTTP SD document.
 *
 * Writes run their transaction through gr_req_tx rather than GR_R_TX so that the blocking
 * readers of this process are woken right after the commit (registry_notify).
 */
#include <limits.h>
#include <string.h>
#include <time.h>

#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "registry.h"

#define INST_COLS                                                                                  \
    "i.id, i.service, i.address, i.port, i.tags, i.status, i.last_heartbeat_at, i.status_since,"   \
    " i.created_at, i.updated_at, c.kind, c.ttl_s, c.deregister_after_s"
#define INST_FROM " FROM instances i JOIN checks c ON c.instance_id = i.id"

/* ---- shared helpers ---------------------------------------------------------------------- */

static void decref(void *v)
{
    json_decref(v);
}

/* Hands @v's release to the request arena and returns it. */
static json_t *own(struct gr_req *req, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(req->arena, decref, v);
    return v;
}

/* Instance row @i (INST_COLS) as a new JSON object. */
static json_t *inst_json(const struct gr_db_rows *rows, size_t i)
{
    const char *tags_txt = gr_db_text(rows, i, 4);
    json_t *tags = json_loads(tags_txt ? tags_txt : "[]", 0, NULL);

    if (!json_is_array(tags)) {
        json_decref(tags);
        tags = json_array();
    }
    return json_pack("{s:s,s:s,s:s,s:I,s:o,s:s,s:s,s:s,s:s,s:s,s:{s:s,s:I,s:I}}", "id",
                     gr_db_text(rows, i, 0), "service", gr_db_text(rows, i, 1), "address",
                     gr_db_text(rows, i, 2), "port", (json_int_t)gr_db_int(rows, i, 3), "tags",
                     tags, "status", gr_db_text(rows, i, 5), "last_heartbeat_at",
                     gr_db_text(rows, i, 6), "status_since", gr_db_text(rows, i, 7), "created_at",
                     gr_db_text(rows, i, 8), "updated_at", gr_db_text(rows, i, 9), "check", "kind",
                     gr_db_text(rows, i, 10), "ttl_s", (json_int_t)gr_db_int(rows, i, 11),
                     "deregister_after_s", (json_int_t)gr_db_int(rows, i, 12));
}

static int fetch_instance(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                          struct gr_db_rows **rows)
{
    int rc = gr_db_query(db, a, "SELECT " INST_COLS INST_FROM " WHERE i.id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, rows);

    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

int registry_bump(struct gr_db_conn *db)
{
    return gr_db_exec(db, "UPDATE registry_index SET idx = idx + 1 WHERE id = 1", NULL, 0, NULL);
}

int registry_index(struct gr_db_conn *db, struct gr_arena *a, int64_t *idx)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(db, a, "SELECT idx FROM registry_index WHERE id = 1", NULL, 0, &rows);

    if (rc < 0)
        return rc;
    *idx = gr_db_nrows(rows) == 1 ? gr_db_int(rows, 0, 0) : 1;
    return 0;
}

void registry_notify(struct registry *r)
{
    if (r == NULL)
        return;
    gr_waitq_notify(r->changed);
}

int registry_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type, const char *id,
                  const char *old_status)
{
    struct gr_db_rows *rows = NULL;
    int64_t idx = 0;
    struct gr_str txt;
    json_t *d;
    int rc;

    rc = fetch_instance(db, a, id, &rows);
    if (rc == 0)
        rc = registry_index(db, a, &idx);
    if (rc < 0)
        return rc;
    d = inst_json(rows, 0);
    if (d == NULL)
        return GR_EINTERNAL;
    json_object_set_new(d, "version", json_integer((json_int_t)idx));
    if (old_status != NULL)
        json_object_set_new(d, "previous_status", json_string(old_status));
    rc = gr_json_dump(a, d, &txt);
    json_decref(d);
    if (rc < 0)
        return rc;
    return gr_bus_emit(db, REG_SOURCE, type, id, txt.ptr, NULL, NULL);
}

static void set_index_header(struct gr_req *req, struct gr_resp *resp, int64_t idx)
{
    char b[32];

    (void)snprintf(b, sizeof(b), "%lld", (long long)idx);
    gr_resp_header(req, resp, "X-Registry-Index", b);
}

static int index_header(struct gr_req *req, struct gr_resp *resp)
{
    int64_t idx = 0;
    int rc = registry_index(req->db, req->arena, &idx);

    if (rc < 0)
        return rc;
    set_index_header(req, resp, idx);
    return 0;
}

static bool service_name_valid(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > REG_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

/* ---- register ---------------------------------------------------------------------------- */

struct reg_in {
    const char *service, *address, *kind, *tags;
    long long port, ttl_s, dereg_s;
    const char *now;
    char id[GR_ID_LEN];
    int status; /* 201 created, 200 re-registered */
};

static void read_register(struct gr_req *req, struct gr_resp *resp, struct reg_in *in)
{
    static const char *const keys[] = { "service", "address", "port", "tags", "check", NULL };
    static const char *const ckeys[] = { "kind", "ttl_s", "deregister_after_s", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    json_t *tags = NULL, *check = NULL, *arr;
    bool present = false;

    in->kind = "ttl";
    in->ttl_s = REG_TTL_DEFAULT;
    in->dereg_s = REG_DEREG_DEFAULT;
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return;
    (void)gr_json_str(&r, req->json, "", "service", GR_JSON_REQUIRED, 1, REG_SERVICE_MAX,
                      &in->service, &present);
    if (in->service != NULL && !service_name_valid(in->service))
        gr_resp_field_error(req, resp, "/service", "must match [a-z0-9-]{1,63}");
    (void)gr_json_str(&r, req->json, "", "address", GR_JSON_REQUIRED, 1, REG_ADDRESS_MAX,
                      &in->address, NULL);
    if (in->address != NULL && strpbrk(in->address, " /\t\r\n") != NULL)
        gr_resp_field_error(req, resp, "/address", "must be a host name or IP address");
    (void)gr_json_int(&r, req->json, "", "port", GR_JSON_REQUIRED, 1, 65535, &in->port, NULL);
    (void)gr_json_arr(&r, req->json, "", "tags", GR_JSON_OPTIONAL, REG_TAGS_MAX, &tags, NULL);
    arr = json_array();
    for (size_t i = 0; tags != NULL && i < json_array_size(tags); i++) {
        json_t *t = json_array_get(tags, i);
        size_t n = json_is_string(t) ? json_string_length(t) : 0;

        if (n < 1 || n > REG_TAG_MAX)
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/tags", i),
                                "must be a string of 1 to %d characters", REG_TAG_MAX);
        else
            json_array_append(arr, t);
    }
    in->tags = "[]";
    {
        struct gr_str txt;

        if (gr_json_dump(req->arena, arr, &txt) == 0)
            in->tags = txt.ptr;
        json_decref(arr);
    }
    (void)gr_json_obj(&r, req->json, "", "check", GR_JSON_OPTIONAL, &check, NULL);
    if (check != NULL) {
        (void)gr_json_only(&r, check, "/check", ckeys);
        (void)gr_json_str(&r, check, "/check", "kind", GR_JSON_OPTIONAL, 1, 8, &in->kind, NULL);
        if (in->kind == NULL)
            in->kind = "ttl";
        if (strcmp(in->kind, "ttl") != 0 && strcmp(in->kind, "http") != 0)
            gr_resp_field_error(req, resp, "/check/kind", "must be 'ttl' or 'http'");
        (void)gr_json_int(&r, check, "/check", "ttl_s", GR_JSON_OPTIONAL, 1, REG_TTL_MAX,
                          &in->ttl_s, NULL);
        (void)gr_json_int(&r, check, "/check", "deregister_after_s", GR_JSON_OPTIONAL, 1, 604800,
                          &in->dereg_s, NULL);
    }
}

static int register_tx(struct gr_req *req, void *arg)
{
    struct reg_in *in = arg;
    struct gr_db_rows *rows = NULL;
    const char *old;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, status FROM instances WHERE service = $1 AND address = $2"
                     " AND port = $3",
                     (struct gr_db_val[]){ GR_DB_TEXT(in->service), GR_DB_TEXT(in->address),
                                           GR_DB_INT(in->port) },
                     3, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1) {
        (void)snprintf(in->id, sizeof(in->id), "%s", gr_db_text(rows, 0, 0));
        old = gr_db_text(rows, 0, 1);
        in->status = 200;
        rc = gr_db_exec(
            req->db,
            "UPDATE instances SET tags = $2, last_heartbeat_at = $3, updated_at = $3,"
            " failures = 0, status_since = CASE WHEN status = 'passing'"
            " THEN status_since ELSE $3 END, status = 'passing' WHERE id = $1",
            (struct gr_db_val[]){ GR_DB_TEXT(in->id), GR_DB_TEXT(in->tags), GR_DB_TEXT(in->now) },
            3, NULL);
        if (rc == 0)
            rc = gr_db_exec(req->db,
                            "UPDATE checks SET kind = $2, ttl_s = $3, deregister_after_s = $4"
                            " WHERE instance_id = $1",
                            (struct gr_db_val[]){ GR_DB_TEXT(in->id), GR_DB_TEXT(in->kind),
                                                  GR_DB_INT(in->ttl_s), GR_DB_INT(in->dereg_s) },
                            4, NULL);
        if (rc == 0)
            rc = registry_bump(req->db);
        if (rc == 0 && strcmp(old, "passing") != 0)
            rc =
                registry_emit(req->db, req->arena, "registry.instance.status_changed", in->id, old);
        return rc;
    }
    gr_id_new(in->id);
    in->status = 201;
    rc = gr_db_exec(req->db,
                    "INSERT INTO instances (id, service, address, port, tags, status,"
                    " last_heartbeat_at, status_since, failures, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, 'passing', $6, $6, 0, $6, $6)",
                    (struct gr_db_val[]){ GR_DB_TEXT(in->id), GR_DB_TEXT(in->service),
                                          GR_DB_TEXT(in->address), GR_DB_INT(in->port),
                                          GR_DB_TEXT(in->tags), GR_DB_TEXT(in->now) },
                    6, NULL);
    if (rc == GR_ECONFLICT)
        return GR_EBUSY; /* a concurrent registration of the same triple: run again */
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO checks (instance_id, kind, ttl_s, deregister_after_s)"
                        " VALUES ($1, $2, $3, $4)",
                        (struct gr_db_val[]){ GR_DB_TEXT(in->id), GR_DB_TEXT(in->kind),
                                              GR_DB_INT(in->ttl_s), GR_DB_INT(in->dereg_s) },
                        4, NULL);
    if (rc == 0)
        rc = registry_bump(req->db);
    if (rc == 0)
        rc = registry_emit(req->db, req->arena, "registry.instance.registered", in->id, NULL);
    return rc;
}

/* Responds with instance @id and the index header. */
static int respond_instance(struct gr_req *req, struct gr_resp *resp, const char *id, int status)
{
    struct gr_db_rows *rows = NULL;
    int rc = fetch_instance(req->db, req->arena, id, &rows);

    if (rc == 0)
        rc = index_header(req, resp);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, status, inst_json(rows, 0));
    return 0;
}

int instances_register(struct gr_req *req, struct gr_resp *resp)
{
    struct reg_in in;
    char now[GR_TIME_STR_LEN];
    int rc;

    memset(&in, 0, sizeof(in));
    read_register(req, resp, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    gr_time_format(gr_time_now_ms(), now);
    in.now = now;
    rc = gr_req_tx(req, register_tx, &in);
    if (rc < 0)
        return rc;
    registry_notify(req->app);
    if (in.status == 201)
        gr_resp_header(req, resp, "Location",
                       gr_arena_printf(req->arena, "/api/v1/registry/instances/%s", in.id));
    return respond_instance(req, resp, in.id, in.status);
}

int instances_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    return respond_instance(req, resp, id, 200);
}

/* ---- heartbeat and deregister ------------------------------------------------------------ */

struct id_in {
    const char *id, *now;
    bool changed;
};

static int heartbeat_tx(struct gr_req *req, void *arg)
{
    struct id_in *in = arg;
    struct gr_db_rows *rows = NULL;
    const char *old;
    int rc;

    rc = gr_db_query(req->db, req->arena, "SELECT status FROM instances WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(in->id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    old = gr_db_text(rows, 0, 0);
    in->changed = strcmp(old, "passing") != 0;
    rc = gr_db_exec(req->db,
                    "UPDATE instances SET last_heartbeat_at = $2, updated_at = $2, failures = 0,"
                    " status_since = CASE WHEN status = 'passing' THEN status_since ELSE $2 END,"
                    " status = 'passing' WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(in->id), GR_DB_TEXT(in->now) }, 2, NULL);
    if (rc == 0 && in->changed)
        rc = registry_bump(req->db);
    if (rc == 0 && in->changed)
        rc = registry_emit(req->db, req->arena, "registry.instance.status_changed", in->id, old);
    return rc;
}

int instances_heartbeat(struct gr_req *req, struct gr_resp *resp)
{
    struct id_in in = { .id = gr_req_param(req, "id") };
    char now[GR_TIME_STR_LEN];
    int rc;

    if (!gr_id_valid(in.id, strlen(in.id)))
        return GR_ENOTFOUND;
    gr_time_format(gr_time_now_ms(), now);
    in.now = now;
    rc = gr_req_tx(req, heartbeat_tx, &in);
    if (rc < 0)
        return rc;
    if (in.changed)
        registry_notify(req->app);
    return respond_instance(req, resp, in.id, 200);
}

static int deregister_tx(struct gr_req *req, void *arg)
{
    struct id_in *in = arg;
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena, "SELECT id FROM instances WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(in->id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_ENOTFOUND;
    rc = registry_bump(req->db);
    if (rc == 0)
        rc = registry_emit(req->db, req->arena, "registry.instance.deregistered", in->id, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM checks WHERE instance_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(in->id) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM instances WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(in->id) }, 1, NULL);
    return rc;
}

int instances_deregister(struct gr_req *req, struct gr_resp *resp)
{
    struct id_in in = { .id = gr_req_param(req, "id") };
    int rc;

    if (!gr_id_valid(in.id, strlen(in.id)))
        return GR_ENOTFOUND;
    rc = gr_req_tx(req, deregister_tx, &in);
    if (rc < 0)
        return rc;
    registry_notify(req->app);
    rc = index_header(req, resp);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 204, NULL);
    return 0;
}

/* ---- blocking queries -------------------------------------------------------------------- */

/* "30s", "500ms", "1m" into milliseconds; -1 when malformed. */
static long long parse_wait(const char *s)
{
    long long v = 0;
    size_t i = 0;

    if (s[0] < '0' || s[0] > '9')
        return -1;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        if (v > 1000000)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (strcmp(s + i, "ms") == 0)
        return v;
    if (strcmp(s + i, "s") == 0 || s[i] == '\0')
        return v * 1000;
    if (strcmp(s + i, "m") == 0)
        return v * 60000;
    return -1;
}

/*
 * Validates index/wait and sets X-Registry-Index to the index the response shows: 0 to answer
 * now; GR_HTTP_WAIT when the request parks until the index exceeds index (a local write
 * notifies at once), until the wait ends or the service drains, for a second at a time: then
 * one parked query a second (not each of them) re-reads the index, for another replica's
 * writes, and wakes the others when it moved.
 */
static int block(struct gr_req *req, struct gr_resp *resp)
{
    struct registry *r = req->app;
    const char *ws = gr_req_query(req, "wait");
    long long want = 0, wait_ms = 30000;
    bool has_index = false;
    int64_t idx = 0, end, now;
    long long last, seen;
    bool poller = false;
    uint64_t seq;
    int rc;

    if (gr_req_query_int(req, resp, "index", 0, GR_JSON_MAX_INT, &want, &has_index) < 0)
        has_index = false;
    if (ws != NULL) {
        wait_ms = parse_wait(ws);
        if (wait_ms < 0 || wait_ms > REG_WAIT_MAX_MS)
            gr_resp_field_error(req, resp, "query.wait",
                                "must be a duration like 30s or 500ms, at most 60s");
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    seq = gr_waitq_seq(r->changed); /* before reading the index */
    end = req->wait.start_ms + wait_ms;
    now = gr_time_mono_ms();
    if (has_index && req->wait.reason == GR_WAKE_TIMEOUT && now < end) {
        last = atomic_load(&r->polled_ms);
        poller = now - last >= 1000 && atomic_compare_exchange_strong(&r->polled_ms, &last, now);
        if (!poller && atomic_load(&r->seen_idx) <= want) /* read < 1 s ago, no change */
            return gr_req_wait(req, resp, r->changed, seq, end - now < 1000 ? end : now + 1000);
    }
    rc = registry_index(req->db, req->arena, &idx);
    if (rc < 0)
        return rc;
    seen = atomic_load(&r->seen_idx);
    while (idx > seen && !atomic_compare_exchange_weak(&r->seen_idx, &seen, idx))
        ;
    if (poller && idx > seen)
        gr_waitq_notify(r->changed); /* another replica's write: the others look again */
    if (has_index && idx <= want && now < end && req->wait.reason != GR_WAKE_DRAIN)
        return gr_req_wait(req, resp, r->changed, seq, end - now < 1000 ? end : now + 1000);
    set_index_header(req, resp, idx);
    return 0;
}

static json_t *list_body(json_t *data)
{
    return json_pack("{s:o,s:b,s:n}", "data", data, "has_more", 0, "next_cursor");
}

static bool has_tag(const char *tags_txt, const char *tag)
{
    json_t *tags = json_loads(tags_txt ? tags_txt : "[]", 0, NULL);
    bool found = false;

    for (size_t i = 0; json_is_array(tags) && i < json_array_size(tags); i++) {
        const char *t = json_string_value(json_array_get(tags, i));

        if (t != NULL && strcmp(t, tag) == 0)
            found = true;
    }
    json_decref(tags);
    return found;
}

int services_list(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    json_t *data, *cur = NULL;
    const char *cur_name = NULL;
    int rc;

    rc = block(req, resp);
    if (rc != 0)
        return rc; /* GR_HTTP_WAIT: runs again when the wait ends */
    rc = gr_db_query(req->db, req->arena,
                     "SELECT service, status, tags FROM instances ORDER BY service, id", NULL, 0,
                     &rows);
    if (rc < 0)
        return rc;
    data = own(req, json_array());
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *name = gr_db_text(rows, i, 0);
        json_t *tags = json_loads(gr_db_text(rows, i, 2), 0, NULL), *all;

        if (cur_name == NULL || strcmp(cur_name, name) != 0) {
            cur = json_pack("{s:s,s:i,s:i,s:[]}", "name", name, "instances", 0, "total", 0, "tags");
            json_array_append_new(data, cur);
            cur_name = name;
        }
        json_object_set_new(cur, "total",
                            json_integer(json_integer_value(json_object_get(cur, "total")) + 1));
        if (strcmp(gr_db_text(rows, i, 1), "passing") == 0)
            json_object_set_new(
                cur, "instances",
                json_integer(json_integer_value(json_object_get(cur, "instances")) + 1));
        all = json_object_get(cur, "tags");
        for (size_t k = 0; json_is_array(tags) && k < json_array_size(tags); k++) {
            json_t *t = json_array_get(tags, k);
            bool dup = false;

            for (size_t m = 0; m < json_array_size(all); m++)
                if (json_equal(json_array_get(all, m), t))
                    dup = true;
            if (!dup)
                json_array_append(all, t);
        }
        json_decref(tags);
    }
    gr_resp_json(resp, 200, list_body(json_incref(data)));
    return 0;
}

int services_instances(struct gr_req *req, struct gr_resp *resp)
{
    const char *name = gr_req_param(req, "name");
    const char *tag = gr_req_query(req, "tag");
    struct gr_db_rows *rows = NULL;
    json_t *data;
    int rc;

    if (!service_name_valid(name))
        return GR_ENOTFOUND;
    rc = block(req, resp);
    if (rc != 0)
        return rc; /* GR_HTTP_WAIT: runs again when the wait ends */
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " INST_COLS INST_FROM
                     " WHERE i.service = $1 AND i.status = 'passing' ORDER BY i.created_at, i.id",
                     (struct gr_db_val[]){ GR_DB_TEXT(name) }, 1, &rows);
    if (rc < 0)
        return rc;
    data = own(req, json_array());
    for (size_t i = 0; i < gr_db_nrows(rows); i++)
        if (tag == NULL || has_tag(gr_db_text(rows, i, 4), tag))
            json_array_append_new(data, inst_json(rows, i));
    gr_resp_json(resp, 200, list_body(json_incref(data)));
    return 0;
}

int prometheus_targets(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    json_t *out;
    int rc;

    rc = index_header(req, resp);
    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, service, address, port FROM instances WHERE status = 'passing'"
                     " ORDER BY service, created_at, id",
                     NULL, 0, &rows);
    if (rc < 0)
        return rc;
    out = own(req, json_array());
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *addr = gr_db_text(rows, i, 2);
        long long port = gr_db_int(rows, i, 3);
        const char *target = strchr(addr, ':') != NULL
                                 ? gr_arena_printf(req->arena, "[%s]:%lld", addr, port)
                                 : gr_arena_printf(req->arena, "%s:%lld", addr, port);

        json_array_append_new(out, json_pack("{s:[s],s:{s:s,s:s,s:s}}", "targets", target, "labels",
                                             "job", gr_db_text(rows, i, 1), "__metrics_path__",
                                             "/metrics", "instance_id", gr_db_text(rows, i, 0)));
    }
    gr_resp_json(resp, 200, json_incref(out));
    return 0;
}
