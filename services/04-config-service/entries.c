/*
 * entries.c - the handlers: the merged view with long-poll watch, one key's GET, PUT
 * (compare-and-set on expected_revision), DELETE, history and rollback.
 *
 * Every write runs in its own transaction (gr_req_tx, retried on serialization failures):
 * it reads the key's entry, checks expected_revision, writes the entry and an append-only
 * revisions row, bumps the config index and adds config.changed to the outbox. Only after the
 * commit does it wake the long-polls (cfg_notify). On SQLite writers are serialized by the
 * write lock; on PostgreSQL concurrent writers conflict on the entry and the index row, and
 * the loser's retry sees the new revision (409).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfgsvc.h"
#include "gr/auth.h"
#include "gr/db.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"

static const char *const envs[] = { "default", "dev", "test", "staging", "prod", NULL };

/* ---- validation ------------------------------------------------------------------------ */

static bool service_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > CFG_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool env_ok(const char *s)
{
    for (size_t i = 0; envs[i]; i++)
        if (strcmp(s, envs[i]) == 0)
            return true;
    return false;
}

static bool key_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > CFG_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
            return false;
    return true;
}

/* The path's service, env and (when @want_key) key, validated: 422 with one error each. */
static int path_args(struct gr_req *req, struct gr_resp *resp, bool want_key, const char **svc,
                     const char **env, const char **key)
{
    *svc = gr_req_param(req, "service");
    *env = gr_req_param(req, "env");
    if (!*svc || !service_ok(*svc))
        gr_resp_field_error(req, resp, "path.service", "must match [a-z0-9-]{1,63}");
    if (!*env || !env_ok(*env))
        gr_resp_field_error(req, resp, "path.env",
                            "must be one of default, dev, test, staging, prod");
    if (want_key) {
        *key = gr_req_param(req, "key");
        if (!*key || !key_ok(*key))
            gr_resp_field_error(req, resp, "path.key", "must match [A-Za-z0-9_.-]{1,256}");
    }
    return resp->errs.n ? GR_EVALID : 0;
}

static const char *aad_of(struct gr_req *req, const char *svc, const char *env, const char *key)
{
    return gr_arena_printf(req->arena, "%s/%s/%s", svc, env, key);
}

static void set_index_header(struct gr_req *req, struct gr_resp *resp, long long idx)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%lld", idx);
    gr_resp_header(req, resp, "X-Config-Index", buf);
}

/* ---- reading values --------------------------------------------------------------------- */

/* The JSON value of a stored value: masked, opened or parsed. NULL on a damaged row. */
static json_t *value_of(struct gr_req *req, const char *aad, const char *stored, bool secret,
                        bool reveal)
{
    const char *text = stored;

    if (!stored)
        return json_null();
    if (secret) {
        if (!reveal)
            return json_string(CFG_MASK);
        if (cfg_open(req->app, req->arena, aad, stored, &text) < 0) {
            gr_log_error("a secret value does not open with the master key", "key", aad);
            return NULL;
        }
    }
    return json_loads(text, JSON_DECODE_ANY, NULL);
}

static int read_index(struct gr_req *req, long long *idx)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(req->db, req->arena, "SELECT value FROM config_index WHERE id = 1", NULL,
                         0, &rows);

    if (rc < 0)
        return rc;
    *idx = gr_db_int(rows, 0, 0);
    return 0;
}

/* ---- watch ---------------------------------------------------------------------------- */

void cfg_notify(struct cfg_app *app, long long idx)
{
    long long cur = atomic_load(&app->index);

    while (idx > cur) {
        if (atomic_compare_exchange_weak(&app->index, &cur, idx)) {
            gr_waitq_notify(app->changed);
            return;
        }
    }
}

/*
 * The long-poll, one run of it: 0 when the config index passed @after, the wait ended or a
 * drain began (answer now); GR_HTTP_WAIT when the request parks until the index moves (writes
 * of this process notify at once) or for at most a second: then one long-poll a second (not
 * each of them) re-reads the index from the database, for writes made by other instances, and
 * wakes the others when it moved. GR_ERATE (too_many_watches) when too many long-polls are
 * parked.
 */
static int wait_index(struct gr_req *req, struct gr_resp *resp, long long after, long long wait_ms)
{
    struct cfg_app *app = req->app;
    uint64_t seq = gr_waitq_seq(app->changed); /* before looking at the index */
    int64_t end = req->wait.start_ms + wait_ms, now = gr_time_mono_ms();
    long long last = atomic_load(&app->polled_ms);
    int rc;

    if (atomic_load(&app->index) > after || req->wait.reason == GR_WAKE_DRAIN || now >= end)
        return 0;
    if (req->wait.reason == GR_WAKE_TIMEOUT && now - last >= 1000 &&
        atomic_compare_exchange_strong(&app->polled_ms, &last, now)) {
        long long db_idx = 0;

        rc = read_index(req, &db_idx);
        if (rc < 0)
            return rc;
        cfg_notify(app, db_idx); /* another instance's write: wakes every long-poll here */
        if (db_idx > after)
            return 0;
    }
    rc = gr_req_wait(req, resp, app->changed, seq, end - now < 1000 ? end : now + 1000);
    if (rc == GR_ERATE)
        return gr_resp_problem(req, resp, GR_ERATE, "too_many_watches",
                               "too many long-polls in progress; retry");
    return rc;
}

/* "30s", "500ms", "2m" or plain seconds, 0..CFG_WAIT_MAX_MS; -1 when malformed. */
static long long parse_wait(const char *s)
{
    char *end;
    long long v, mul = 1000;

    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || v > CFG_WAIT_MAX_MS)
        return -1;
    if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0)
        mul = 60000;
    else if (*end && strcmp(end, "s") != 0)
        return -1;
    v *= mul;
    return v <= CFG_WAIT_MAX_MS ? v : -1;
}

/* ---- GET …/{service}/{env} -------------------------------------------------------------- */

/* Layer of a row in the merged view: 0 global/default … 3 {service}/{env}. */
static int layer_of(const char *rs, const char *re, const char *svc, const char *env)
{
    int l = 0;

    if (strcmp(svc, "global") != 0 && strcmp(rs, svc) == 0)
        l += 2;
    if (strcmp(env, "default") != 0 && strcmp(re, env) == 0)
        l += 1;
    return l;
}

int cfg_merged_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *svc, *env, *iq = gr_req_query(req, "index"), *wq = gr_req_query(req, "wait");
    long long after = 0, wait_ms = CFG_WAIT_DEF_MS, idx = 0;
    bool has_index = false, reveal = gr_req_can(req, "configs:secrets:read");
    struct gr_db_rows *rows = NULL;
    json_t *entries, *body;
    int rc;

    (void)path_args(req, resp, false, &svc, &env, NULL);
    if (gr_req_query_int(req, resp, "index", 0, GR_JSON_MAX_INT, &after, &has_index) < 0)
        has_index = false;
    if (wq && (wait_ms = parse_wait(wq)) < 0)
        gr_resp_field_error(req, resp, "query.wait",
                            "must be a duration like 30s, 500ms or 1m, at most 60s");
    if (resp->errs.n)
        return GR_EVALID;
    (void)iq;
    if (has_index && wait_ms > 0) {
        rc = wait_index(req, resp, after, wait_ms);
        if (rc != 0)
            return rc; /* GR_HTTP_WAIT: this handler runs again when the wait ends */
    }
    /* The index first: the entries read after it are at least as new, so a client that
     * polls again with it never misses a change. */
    rc = read_index(req, &idx);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT service, env, key, value, is_secret, revision FROM entries"
                         " WHERE service IN ($1, 'global') AND env IN ($2, 'default')",
                         (struct gr_db_val[]){ GR_DB_TEXT(svc), GR_DB_TEXT(env) }, 2, &rows);
    if (rc < 0)
        return rc;
    entries = json_object();
    for (int layer = 0; layer < 4; layer++) {
        for (size_t i = 0; i < gr_db_nrows(rows); i++) {
            const char *rs = gr_db_text(rows, i, 0), *re = gr_db_text(rows, i, 1);
            const char *k = gr_db_text(rows, i, 2);
            bool secret = gr_db_int(rows, i, 4) != 0;
            json_t *v;

            if (layer_of(rs, re, svc, env) != layer)
                continue;
            v = value_of(req, aad_of(req, rs, re, k), gr_db_text(rows, i, 3), secret, reveal);
            if (!v) {
                json_decref(entries);
                return GR_EINTERNAL;
            }
            json_object_set_new(entries, k,
                                json_pack("{s:o, s:I, s:b, s:s+++}", "value", v, "revision",
                                          (json_int_t)gr_db_int(rows, i, 5), "is_secret", secret,
                                          "source", rs, "/", re, ""));
        }
    }
    body = json_pack("{s:s, s:s, s:I, s:o}", "service", svc, "env", env, "index", (json_int_t)idx,
                     "entries", entries);
    set_index_header(req, resp, idx);
    gr_resp_json(resp, 200, body);
    return 0;
}

/* ---- GET …/{key} -------------------------------------------------------------------------- */

int cfg_entry_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *svc, *env, *key;
    struct gr_db_rows *rows = NULL;
    bool secret;
    json_t *v;
    int rc = path_args(req, resp, true, &svc, &env, &key);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT value, is_secret, revision, updated_at, updated_by FROM entries"
                     " WHERE service = $1 AND env = $2 AND key = $3",
                     (struct gr_db_val[]){ GR_DB_TEXT(svc), GR_DB_TEXT(env), GR_DB_TEXT(key) }, 3,
                     &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no key '%s' in %s/%s", key, svc,
                               env);
    secret = gr_db_int(rows, 0, 1) != 0;
    v = value_of(req, aad_of(req, svc, env, key), gr_db_text(rows, 0, 0), secret,
                 gr_req_can(req, "configs:secrets:read"));
    if (!v)
        return GR_EINTERNAL;
    gr_resp_json(resp, 200,
                 json_pack("{s:s, s:s, s:s, s:o, s:I, s:b, s:s, s:s?}", "service", svc, "env", env,
                           "key", key, "value", v, "revision", (json_int_t)gr_db_int(rows, 0, 2),
                           "is_secret", secret, "updated_at", gr_db_text(rows, 0, 3), "updated_by",
                           gr_db_text(rows, 0, 4)));
    return 0;
}

/* ---- writes ------------------------------------------------------------------------------- */

struct write {
    const char *svc, *env, *key, *actor;
    const char *stored; /* value as stored (JSON text or sealed); NULL for a deletion */
    bool secret;
    bool del;
    long long expected;   /* -1: unconditional */
    long long rb_rev;     /* rollback: the revision to restore (0: not a rollback) */
    struct gr_resp *resp; /* for problems */
    /* results */
    long long revision, index;
    bool created;
};

static int revision_conflict(struct gr_req *req, struct write *w, long long cur)
{
    if (w->expected == 0)
        return gr_resp_problem(req, w->resp, GR_ECONFLICT, "revision_conflict",
                               "key '%s' exists at revision %lld", w->key, cur);
    return gr_resp_problem(req, w->resp, GR_ECONFLICT, "revision_conflict",
                           "expected revision %lld, the key is at %lld%s", w->expected, cur,
                           cur == 0 ? " (absent)" : "");
}

/* Loads the value of revision w->rb_rev into w->stored / w->secret (rollback). */
static int load_rollback(struct gr_req *req, struct write *w)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(req->db, req->arena,
                         "SELECT value, is_secret, deleted FROM revisions"
                         " WHERE service = $1 AND env = $2 AND key = $3 AND revision = $4",
                         (struct gr_db_val[]){ GR_DB_TEXT(w->svc), GR_DB_TEXT(w->env),
                                               GR_DB_TEXT(w->key), GR_DB_INT(w->rb_rev) },
                         4, &rows);

    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        gr_resp_field_error(req, w->resp, "/revision", "no such revision of this key");
        return GR_EVALID;
    }
    if (gr_db_int(rows, 0, 2) != 0) {
        gr_resp_field_error(req, w->resp, "/revision", "is a deletion; nothing to restore");
        return GR_EVALID;
    }
    w->stored = gr_db_text(rows, 0, 0);
    w->secret = gr_db_int(rows, 0, 1) != 0;
    return 0;
}

static int do_write(struct gr_req *req, void *arg)
{
    struct write *w = arg;
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    long long cur = 0, last = 0;
    bool exists;
    json_t *data;
    struct gr_str text;
    int rc;
    const struct gr_db_val k3[] = { GR_DB_TEXT(w->svc), GR_DB_TEXT(w->env), GR_DB_TEXT(w->key) };

    w->revision = w->index = 0;
    w->created = false;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT revision FROM entries WHERE service = $1 AND env = $2 AND key = $3",
                     k3, 3, &rows);
    if (rc < 0)
        return rc;
    exists = gr_db_nrows(rows) > 0;
    cur = exists ? gr_db_int(rows, 0, 0) : 0;
    if (w->expected >= 0 && w->expected != cur)
        return revision_conflict(req, w, cur);
    rc = gr_db_query(req->db, req->arena,
                     "SELECT MAX(revision) FROM revisions WHERE service = $1 AND env = $2"
                     " AND key = $3",
                     k3, 3, &rows);
    if (rc < 0)
        return rc;
    last = gr_db_int(rows, 0, 0);
    if (w->rb_rev > 0 && last == 0)
        return gr_resp_problem(req, w->resp, GR_ENOTFOUND, NULL, "key '%s' has no history", w->key);
    if (w->del && !exists)
        return gr_resp_problem(req, w->resp, GR_ENOTFOUND, NULL, "no key '%s' in %s/%s", w->key,
                               w->svc, w->env);
    if (w->rb_rev > 0 && (rc = load_rollback(req, w)) < 0)
        return rc;
    w->revision = (last > cur ? last : cur) + 1;
    gr_time_format(gr_time_now_ms(), now);
    if (w->del)
        rc = gr_db_exec(req->db,
                        "DELETE FROM entries WHERE service = $1 AND env = $2 AND key = $3"
                        " AND revision = $4",
                        (struct gr_db_val[]){ k3[0], k3[1], k3[2], GR_DB_INT(cur) }, 4, NULL);
    else if (exists)
        rc = gr_db_exec(req->db,
                        "UPDATE entries SET value = $4, is_secret = $5, revision = $6,"
                        " updated_at = $7, updated_by = $8"
                        " WHERE service = $1 AND env = $2 AND key = $3",
                        (struct gr_db_val[]){ k3[0], k3[1], k3[2], GR_DB_TEXT(w->stored),
                                              GR_DB_INT(w->secret), GR_DB_INT(w->revision),
                                              GR_DB_TEXT(now), GR_DB_TEXT(w->actor) },
                        8, NULL);
    else
        rc = gr_db_exec(req->db,
                        "INSERT INTO entries (service, env, key, value, is_secret, revision,"
                        " updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        (struct gr_db_val[]){ k3[0], k3[1], k3[2], GR_DB_TEXT(w->stored),
                                              GR_DB_INT(w->secret), GR_DB_INT(w->revision),
                                              GR_DB_TEXT(now), GR_DB_TEXT(w->actor) },
                        8, NULL);
    if (rc == GR_ECONFLICT) /* a concurrent create won */
        return revision_conflict(req, w, cur);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO revisions (service, env, key, revision, value, is_secret,"
                        " deleted, created_at, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        (struct gr_db_val[]){ k3[0], k3[1], k3[2], GR_DB_INT(w->revision),
                                              GR_DB_TEXT(w->del ? NULL : w->stored),
                                              GR_DB_INT(w->del ? 0 : w->secret), GR_DB_INT(w->del),
                                              GR_DB_TEXT(now), GR_DB_TEXT(w->actor) },
                        9, NULL);
    if (rc == GR_ECONFLICT)
        return revision_conflict(req, w, cur);
    if (rc == 0)
        rc = gr_db_exec(req->db, "UPDATE config_index SET value = value + 1 WHERE id = 1", NULL, 0,
                        NULL);
    if (rc == 0)
        rc = read_index(req, &w->index);
    if (rc < 0)
        return rc;
    /* Never the value, sealed or not. */
    data = json_pack("{s:s, s:s, s:s, s:I, s:b, s:I}", "service", w->svc, "env", w->env, "key",
                     w->key, "revision", (json_int_t)w->revision, "deleted", w->del, "index",
                     (json_int_t)w->index);
    rc = data ? gr_json_dump(req->arena, data, &text) : GR_EINTERNAL;
    json_decref(data);
    if (rc == 0)
        rc = gr_req_emit(req, "config.changed",
                         gr_arena_printf(req->arena, "%s/%s", w->svc, w->env), text.ptr);
    w->created = !exists;
    return rc;
}

/* Runs @w in its own transaction, then wakes the long-polls. */
static int run_write(struct gr_req *req, struct write *w)
{
    int rc;

    w->actor = req->principal ? req->principal->sub : NULL;
    rc = gr_req_tx(req, do_write, w);
    if (rc < 0)
        return rc;
    cfg_notify(req->app, w->index);
    set_index_header(req, w->resp, w->index);
    return 0;
}

static void write_response(struct gr_resp *resp, struct write *w, json_t *plain, int status)
{
    json_t *v = plain;

    if (w->secret) { /* write responses never echo a secret */
        json_decref(plain);
        v = json_string(CFG_MASK);
    }

    gr_resp_json(resp, status,
                 json_pack("{s:s, s:s, s:s, s:o, s:I, s:b, s:I}", "service", w->svc, "env", w->env,
                           "key", w->key, "value", v, "revision", (json_int_t)w->revision,
                           "is_secret", w->secret, "index", (json_int_t)w->index));
}

int cfg_entry_put(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "value", "is_secret", "expected_revision", NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    struct write w = { .resp = resp, .expected = -1 };
    json_t *value;
    struct gr_str text;
    bool has_exp = false;
    int rc;

    (void)path_args(req, resp, true, &w.svc, &w.env, &w.key);
    (void)gr_json_only(&r, req->json, "", keys);
    value = json_is_object(req->json) ? json_object_get(req->json, "value") : NULL;
    if (json_is_object(req->json) && !value)
        gr_resp_field_error(req, resp, "/value", "is required");
    (void)gr_json_bool(&r, req->json, "", "is_secret", GR_JSON_OPTIONAL, &w.secret, NULL);
    (void)gr_json_int(&r, req->json, "", "expected_revision", GR_JSON_OPTIONAL, 0, GR_JSON_MAX_INT,
                      &w.expected, &has_exp);
    if (!has_exp)
        w.expected = -1;
    if (resp->errs.n)
        return GR_EVALID;
    rc = gr_json_dump(req->arena, value, &text);
    if (rc < 0)
        return rc;
    if (text.len > CFG_VALUE_MAX) {
        gr_resp_field_error(req, resp, "/value", "must be at most %d bytes of JSON", CFG_VALUE_MAX);
        return GR_EVALID;
    }
    w.stored = text.ptr;
    if (w.secret) {
        rc = cfg_seal(req->app, req->arena, aad_of(req, w.svc, w.env, w.key), text.ptr, text.len,
                      &w.stored);
        if (rc < 0)
            return rc;
    }
    rc = run_write(req, &w);
    if (rc < 0)
        return rc;
    write_response(resp, &w, json_incref(value), w.created ? 201 : 200);
    return 0;
}

int cfg_entry_delete(struct gr_req *req, struct gr_resp *resp)
{
    struct write w = { .resp = resp, .expected = -1, .del = true };
    bool has_exp = false;
    int rc;

    (void)path_args(req, resp, true, &w.svc, &w.env, &w.key);
    if (gr_req_query_int(req, resp, "expected_revision", 1, GR_JSON_MAX_INT, &w.expected,
                         &has_exp) < 0)
        has_exp = false;
    if (resp->errs.n)
        return GR_EVALID;
    if (!has_exp)
        w.expected = -1;
    rc = run_write(req, &w);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

int cfg_rollback(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "revision", "expected_revision", NULL };
    struct gr_json_rd r = { req->arena, &resp->errs };
    struct write w = { .resp = resp, .expected = -1 };
    bool has_exp = false;
    json_t *plain = NULL;
    int rc;

    (void)path_args(req, resp, true, &w.svc, &w.env, &w.key);
    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "revision", GR_JSON_REQUIRED, 1, GR_JSON_MAX_INT,
                      &w.rb_rev, NULL);
    (void)gr_json_int(&r, req->json, "", "expected_revision", GR_JSON_OPTIONAL, 0, GR_JSON_MAX_INT,
                      &w.expected, &has_exp);
    if (!has_exp)
        w.expected = -1;
    if (resp->errs.n)
        return GR_EVALID;
    rc = run_write(req, &w);
    if (rc < 0)
        return rc;
    if (!w.secret && !(plain = json_loads(w.stored, JSON_DECODE_ANY, NULL)))
        return GR_EINTERNAL;
    write_response(resp, &w, plain, 200);
    return 0;
}

/* ---- history -------------------------------------------------------------------------------- */

int cfg_history(struct gr_req *req, struct gr_resp *resp)
{
    const char *svc, *env, *key, *cur = gr_req_query(req, "cursor"), *scope, *last = NULL;
    long long before = GR_JSON_MAX_INT;
    struct gr_db_rows *rows = NULL;
    int limit = 20, rc;
    size_t n;
    json_t *data;

    (void)path_args(req, resp, true, &svc, &env, &key);
    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (resp->errs.n)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "history %s/%s/%s", svc, env, key);
    if (cur) {
        const char *p;
        char *end;

        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cur, &p, NULL) < 0)
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
        before = strtoll(p, &end, 10);
        if (*end || before < 1)
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT revision, is_secret, deleted, created_at, actor, value FROM revisions"
                     " WHERE service = $1 AND env = $2 AND key = $3 AND revision < $4"
                     " ORDER BY revision DESC LIMIT $5",
                     (struct gr_db_val[]){ GR_DB_TEXT(svc), GR_DB_TEXT(env), GR_DB_TEXT(key),
                                           GR_DB_INT(before), GR_DB_INT(limit + 1) },
                     5, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    if (n == 0 && !cur)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "key '%s' has no history", key);
    data = json_array();
    for (size_t i = 0; i < n && i < (size_t)limit; i++) {
        bool secret = gr_db_int(rows, i, 1) != 0, deleted = gr_db_int(rows, i, 2) != 0;
        /* Secrets are always masked here, whatever the caller's permissions. */
        json_t *v =
            deleted ? json_null() : value_of(req, NULL, gr_db_text(rows, i, 5), secret, false);

        if (!v) {
            json_decref(data);
            return GR_EINTERNAL;
        }
        json_array_append_new(data,
                              json_pack("{s:I, s:o, s:b, s:b, s:s, s:s?}", "revision",
                                        (json_int_t)gr_db_int(rows, i, 0), "value", v, "is_secret",
                                        secret, "deleted", deleted, "created_at",
                                        gr_db_text(rows, i, 3), "actor", gr_db_text(rows, i, 4)));
        last = gr_db_text(rows, i, 0);
    }
    return gr_resp_list(req, resp, data, n > (size_t)limit, scope, last);
}
