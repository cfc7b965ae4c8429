/*
 * gw_routes.c - the admin API (gateway:admin): CRUD on the `routes` table and the upstreams
 * view, plus gw_rebuild, which turns the route rows and the known instances into the data
 * plane's table document (gw.h) after every route or registry change.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "h1.h"

#define ROUTE_COLS                                                                                 \
    "id, prefix, service, auth, timeout_ms, retries, max_body, rate_policy, version,"              \
    " created_at, updated_at"
#define PREFIX_MAX  255
#define SERVICE_MAX 63
#define TIMEOUT_MAX 60000
#define RETRIES_MAX 5
#define BODY_MAX    (64LL << 20)
#define DEF_TIMEOUT 5000
#define DEF_RETRIES 2
#define DEF_BODY    1048576LL
#define LIST_SCOPE  "GET " GW_ROUTES_PREFIX "/routes"

static void decref(void *v)
{
    json_decref(v);
}

/* Hands @v to the request arena (released with it). */
static json_t *own(struct gr_req *req, json_t *v)
{
    if (v == NULL)
        GR_BUG("jansson allocation failed");
    gr_arena_defer(req->arena, decref, v);
    return v;
}

static json_t *route_json(const struct gr_db_rows *r, size_t i)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:I,s:s,s:s}", "id", gr_db_text(r, i, 0),
                     "prefix", gr_db_text(r, i, 1), "service", gr_db_text(r, i, 2), "auth",
                     gr_db_text(r, i, 3), "timeout_ms", (json_int_t)gr_db_int(r, i, 4), "retries",
                     (json_int_t)gr_db_int(r, i, 5), "max_body", (json_int_t)gr_db_int(r, i, 6),
                     "rate_policy", gr_db_text(r, i, 7) ? gr_db_text(r, i, 7) : "", "version",
                     (json_int_t)gr_db_int(r, i, 8), "created_at", gr_db_text(r, i, 9),
                     "updated_at", gr_db_text(r, i, 10));
}

static bool service_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > SERVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

/* NULL when @p is an acceptable route prefix, else the reason. */
static const char *prefix_problem(const char *p)
{
    static const char base[] = "/api/v1/";
    size_t n = strlen(p);

    if (strncmp(p, base, sizeof(base) - 1) != 0 || n == sizeof(base) - 1)
        return "must start with /api/v1/ and name a resource";
    if (n > PREFIX_MAX)
        return "must be at most 255 characters";
    if (strstr(p, "..") != NULL || strchr(p, '%') != NULL || strstr(p, "//") != NULL)
        return "must not contain '..', '%' or '//'";
    if (p[n - 1] == '/')
        return "must not end with '/'";
    if (strstr(p, "/./") != NULL || (n >= 2 && strcmp(p + n - 2, "/.") == 0))
        return "must not have a '.' segment";
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '-' || c == '_' || c == '.' || c == '~'))
            return "may hold only letters, digits, '/', '-', '_', '.' and '~'";
    }
    if (!h1_path_safe(p, n)) /* the data plane's own rule (table.c), so its load never fails */
        return "is not a safe path";
    if (strcmp(p, GW_ROUTES_PREFIX) == 0 ||
        strncmp(p, GW_ROUTES_PREFIX "/", sizeof(GW_ROUTES_PREFIX)) == 0)
        return "is the gateway's own admin prefix";
    return NULL;
}

struct route_in {
    const char *prefix, *service, *auth, *rate_policy;
    long long timeout_ms, retries, max_body, version;
    bool has_version;
};

/* Reads and validates a POST/PUT body (with @allow_version for PUT); errors go to resp->errs. */
static void read_route(struct gr_req *req, struct gr_resp *resp, bool allow_version,
                       struct route_in *in)
{
    static const char *const keys[] = { "prefix",  "service",  "auth",        "timeout_ms",
                                        "retries", "max_body", "rate_policy", NULL };
    static const char *const keys_v[] = { "prefix",      "service", "auth",
                                          "timeout_ms",  "retries", "max_body",
                                          "rate_policy", "version", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *why;

    memset(in, 0, sizeof(*in));
    in->auth = "jwt";
    in->rate_policy = "";
    in->timeout_ms = DEF_TIMEOUT;
    in->retries = DEF_RETRIES;
    in->max_body = DEF_BODY;
    (void)gr_json_only(&r, req->json, "", allow_version ? keys_v : keys);
    (void)gr_json_str(&r, req->json, "", "prefix", GR_JSON_REQUIRED, 1, 1024, &in->prefix, NULL);
    (void)gr_json_str(&r, req->json, "", "service", GR_JSON_REQUIRED, 1, 256, &in->service, NULL);
    (void)gr_json_str(&r, req->json, "", "auth", GR_JSON_OPTIONAL, 1, 16, &in->auth, NULL);
    (void)gr_json_int(&r, req->json, "", "timeout_ms", GR_JSON_OPTIONAL, 1, TIMEOUT_MAX,
                      &in->timeout_ms, NULL);
    (void)gr_json_int(&r, req->json, "", "retries", GR_JSON_OPTIONAL, 0, RETRIES_MAX, &in->retries,
                      NULL);
    (void)gr_json_int(&r, req->json, "", "max_body", GR_JSON_OPTIONAL, 1, BODY_MAX, &in->max_body,
                      NULL);
    (void)gr_json_str(&r, req->json, "", "rate_policy", GR_JSON_OPTIONAL, 0, GW_POLICY_MAX - 1,
                      &in->rate_policy, NULL);
    if (allow_version)
        (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT,
                          &in->version, &in->has_version);
    if (in->prefix != NULL && (why = prefix_problem(in->prefix)) != NULL)
        gr_resp_field_error(req, resp, "/prefix", "%s", why);
    if (in->service != NULL && !service_name_ok(in->service))
        gr_resp_field_error(req, resp, "/service", "must match [a-z0-9-]{1,63}");
    if (in->auth != NULL && strcmp(in->auth, "public") != 0 && strcmp(in->auth, "jwt") != 0)
        gr_resp_field_error(req, resp, "/auth", "must be 'public' or 'jwt'");
    for (const char *p = in->rate_policy; p != NULL && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_')) {
            gr_resp_field_error(req, resp, "/rate_policy", "must match [a-z0-9_-]{0,31}");
            break;
        }
}

static int prefix_taken(struct gr_req *req, struct gr_resp *resp, const char *prefix)
{
    gr_resp_field_error(req, resp, "/prefix", "is already routed");
    return gr_resp_problem(req, resp, GR_ECONFLICT, "prefix_taken",
                           "a route for prefix '%s' already exists", prefix);
}

static int fetch_route(struct gr_req *req, const char *id, struct gr_db_rows **rows)
{
    int rc;

    if (id == NULL || !gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena, "SELECT " ROUTE_COLS " FROM routes WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, rows);
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

/*
 * After a committed change: the table is rebuilt from the instances known now, and the watcher
 * re-reads the registry for the services the routes name now. A failed rebuild keeps the
 * previous table and is logged.
 */
static void rebuild_after(struct gr_req *req)
{
    int rc = gw_rebuild(req->app, req->db);

    if (rc < 0)
        gr_log_error("routing table rebuild failed", "code", gr_err_name(rc));
    gw_registry_refresh(req->app);
}

int gw_routes_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor");
    struct gr_db_val key = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *payload = NULL, *next = NULL, *bar;
    size_t n, len = 0;
    bool has_more;
    int limit = 20, rc;
    json_t *data;

    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    if (cursor != NULL) {
        /* payload: "<created_at>|<id>" */
        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, LIST_SCOPE, cursor, &payload,
                             &len) < 0 ||
            (bar = memchr(payload, '|', len)) == NULL ||
            !gr_id_valid(bar + 1, len - (size_t)(bar + 1 - payload)))
            return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                                   "the cursor is invalid for this list");
        key = GR_DB_TEXT(gr_arena_strndup(req->arena, payload, (size_t)(bar - payload)));
        kid = GR_DB_TEXT(bar + 1);
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " ROUTE_COLS " FROM routes WHERE CAST($1 AS TEXT) IS NULL"
                     " OR created_at < CAST($1 AS TEXT)"
                     " OR (created_at = CAST($1 AS TEXT) AND id < CAST($2 AS TEXT))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($3 AS INTEGER)",
                     (struct gr_db_val[]){ key, kid, GR_DB_INT(limit + 1) }, 3, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, route_json(rows, i));
    if (has_more)
        next = gr_arena_printf(req->arena, "%s|%s", gr_db_text(rows, n - 1, 9),
                               gr_db_text(rows, n - 1, 0));
    return gr_resp_list(req, resp, data, has_more, LIST_SCOPE, next);
}

int gw_routes_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc = fetch_route(req, gr_req_param(req, "id"), &rows);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, route_json(rows, 0));
    return 0;
}

int gw_routes_create(struct gr_req *req, struct gr_resp *resp)
{
    struct route_in in;
    struct gr_db_rows *rows = NULL;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    int rc;

    read_route(req, resp, false, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    /* The data plane's table holds GW_MAX_ROUTES routes (gw.h). */
    rc = gr_db_query(req->db, req->arena, "SELECT COUNT(*) FROM routes", NULL, 0, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, 0) >= GW_MAX_ROUTES)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "route_limit",
                               "the routing table holds at most %d routes", GW_MAX_ROUTES);
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_exec(
        req->db,
        "INSERT INTO routes (id, prefix, service, auth, timeout_ms, retries, max_body,"
        " rate_policy, version, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9)",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(in.prefix), GR_DB_TEXT(in.service),
                              GR_DB_TEXT(in.auth), GR_DB_INT(in.timeout_ms), GR_DB_INT(in.retries),
                              GR_DB_INT(in.max_body), GR_DB_TEXT(in.rate_policy), GR_DB_TEXT(now) },
        9, NULL);
    if (rc == GR_ECONFLICT)
        return prefix_taken(req, resp, in.prefix);
    if (rc < 0)
        return rc;
    rebuild_after(req);
    rc = fetch_route(req, id, &rows);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Location",
                   gr_arena_printf(req->arena, GW_ROUTES_PREFIX "/routes/%s", id));
    gr_resp_json(resp, 201, route_json(rows, 0));
    return 0;
}

int gw_routes_put(struct gr_req *req, struct gr_resp *resp)
{
    struct route_in in;
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    const char *id;
    long long have, changes = 0;
    int rc;

    rc = fetch_route(req, gr_req_param(req, "id"), &rows);
    if (rc < 0)
        return rc;
    id = gr_db_text(rows, 0, 0);
    have = gr_db_int(rows, 0, 8);
    read_route(req, resp, true, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (in.has_version && in.version != have)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "version %lld is stale: the current version is %lld", in.version,
                               have);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_exec(req->db,
                    "UPDATE routes SET prefix = $3, service = $4, auth = $5, timeout_ms = $6,"
                    " retries = $7, max_body = $8, rate_policy = $9, version = version + 1,"
                    " updated_at = $10 WHERE id = $1 AND version = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(have), GR_DB_TEXT(in.prefix),
                                          GR_DB_TEXT(in.service), GR_DB_TEXT(in.auth),
                                          GR_DB_INT(in.timeout_ms), GR_DB_INT(in.retries),
                                          GR_DB_INT(in.max_body), GR_DB_TEXT(in.rate_policy),
                                          GR_DB_TEXT(now) },
                    10, &changes);
    if (rc == GR_ECONFLICT)
        return prefix_taken(req, resp, in.prefix);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the route changed concurrently");
    rebuild_after(req);
    rc = fetch_route(req, id, &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, route_json(rows, 0));
    return 0;
}

int gw_routes_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    long long changes = 0;
    int rc;

    if (id == NULL || !gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_exec(req->db, "DELETE FROM routes WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return GR_ENOTFOUND;
    rebuild_after(req);
    gr_resp_json(resp, 204, NULL);
    return 0;
}

/* The breaker entry of @host:@port in @breakers (gw_breakers_json), or NULL. */
static json_t *breaker_of(json_t *breakers, const char *host, int port)
{
    for (size_t i = 0; i < json_array_size(breakers); i++) {
        json_t *b = json_array_get(breakers, i);
        const char *h = json_string_value(json_object_get(b, "host"));

        if (h != NULL && strcmp(h, host) == 0 &&
            json_integer_value(json_object_get(b, "port")) == port)
            return b;
    }
    return NULL;
}

static int by_service(const void *x, const void *y)
{
    const struct gw_route *const *a = x, *const *b = y;

    return strcmp((*a)->service, (*b)->service);
}

/* The instances of route @r as JSON, each with its breaker's state (closed when none yet). */
static json_t *instances_json(const struct gw_route *r, json_t *breakers)
{
    json_t *insts = json_array();

    for (size_t k = 0; k < r->ninst; k++) {
        const struct gw_instance *in = &r->inst[k];
        json_t *b = breaker_of(breakers, in->host, in->port);
        json_t *o = json_pack("{s:s,s:s,s:i}", "id", in->id, "host", in->host, "port", in->port);

        json_object_set_new(o, "state",
                            b ? json_incref(json_object_get(b, "state")) : json_string("closed"));
        json_object_set_new(o, "failures",
                            b ? json_incref(json_object_get(b, "failures")) : json_integer(0));
        json_object_set_new(o, "last_error",
                            b ? json_incref(json_object_get(b, "last_error")) : json_null());
        json_object_set_new(o, "opened_at",
                            b ? json_incref(json_object_get(b, "opened_at")) : json_null());
        json_array_append_new(insts, o);
    }
    return insts;
}

int gw_upstreams_list(struct gr_req *req, struct gr_resp *resp)
{
    struct gw_app *a = req->app;
    const char *only = gr_req_query(req, "service");
    struct gw_table *t;
    const struct gw_route **pick;
    json_t *breakers, *data, *reg, *body;
    size_t n = 0;

    if (only != NULL && !service_name_ok(only)) {
        gr_resp_field_error(req, resp, "query.service", "must match [a-z0-9-]{1,63}");
        return GR_EVALID;
    }
    breakers = own(req, json_array());
    gw_breakers_json(breakers);
    t = gw_table_get();
    pick = gr_arena_calloc(req->arena, ((t != NULL ? t->n : 0) + 1) * sizeof(*pick));
    for (size_t i = 0; t != NULL && i < t->n; i++) {
        const struct gw_route *r = &t->routes[i];
        bool dup = false;

        if (only != NULL && strcmp(only, r->service) != 0)
            continue;
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcmp(pick[k]->service, r->service) == 0;
        if (!dup)
            pick[n++] = r;
    }
    qsort(pick, n, sizeof(*pick), by_service);
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, json_pack("{s:s,s:o}", "service", pick[i]->service, "instances",
                                              instances_json(pick[i], breakers)));
    if (t != NULL)
        gw_table_put(t);
    pthread_mutex_lock(&a->mu);
    reg = json_pack("{s:s,s:I}", "source", a->source, "index", (json_int_t)a->reg_index);
    if (a->reg_error[0])
        json_object_set_new(reg, "last_error", json_string(a->reg_error));
    pthread_mutex_unlock(&a->mu);
    body =
        json_pack("{s:o,s:b,s:n,s:o}", "data", data, "has_more", 0, "next_cursor", "registry", reg);
    gr_resp_json(resp, 200, body);
    return 0;
}

/* ---- the table document ------------------------------------------------------------------ */

static const struct gw_svc_inst *svc_find(const struct gw_app *a, const char *name)
{
    for (size_t i = 0; i < a->nsvcs; i++)
        if (strcmp(a->svcs[i].name, name) == 0)
            return &a->svcs[i];
    return NULL;
}

int gw_rebuild(struct gw_app *a, struct gr_db_conn *c)
{
    struct gr_arena ar;
    struct gr_db_rows *rows = NULL;
    json_t *doc, *routes;
    char err[256] = "";
    struct gr_str txt;
    int rc;

    pthread_mutex_lock(&a->rebuild_mu);
    gr_arena_init(&ar);
    rc = gr_db_query(c, &ar,
                     "SELECT " ROUTE_COLS " FROM routes ORDER BY prefix LIMIT CAST($1 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_INT(GW_MAX_ROUTES) }, 1, &rows);
    if (rc < 0)
        goto out;
    routes = json_array();
    pthread_mutex_lock(&a->mu);
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const struct gw_svc_inst *s = svc_find(a, gr_db_text(rows, i, 2));
        json_t *insts = json_array();

        for (size_t k = 0; s != NULL && k < s->n && k < GW_MAX_INST; k++)
            json_array_append_new(insts, json_pack("{s:s,s:s,s:i}", "id", s->inst[k].id, "host",
                                                   s->inst[k].host, "port", s->inst[k].port));
        json_array_append_new(
            routes,
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:o}", "id", gr_db_text(rows, i, 0),
                      "prefix", gr_db_text(rows, i, 1), "service", gr_db_text(rows, i, 2), "auth",
                      gr_db_text(rows, i, 3), "timeout_ms", (json_int_t)gr_db_int(rows, i, 4),
                      "retries", (json_int_t)gr_db_int(rows, i, 5), "max_body",
                      (json_int_t)gr_db_int(rows, i, 6), "rate_policy",
                      gr_db_text(rows, i, 7) ? gr_db_text(rows, i, 7) : "", "instances", insts));
    }
    pthread_mutex_unlock(&a->mu);
    doc = json_pack("{s:o}", "routes", routes);
    rc = gr_json_dump(&ar, doc, &txt);
    json_decref(doc);
    if (rc < 0)
        goto out;
    rc = gw_table_load(txt.ptr, txt.len, err, sizeof(err));
    if (rc < 0)
        gr_log_error("routing table rejected", "error", err);
out:
    gr_arena_release(&ar);
    pthread_mutex_unlock(&a->rebuild_mu);
    return rc;
}
