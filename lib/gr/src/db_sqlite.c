/*
 * db_sqlite.c - the SQLite engine of gr_db. Each thread's connection is opened in
 * multi-thread mode (one thread at a time, no SQLite mutexes) with WAL, foreign keys on, a
 * busy timeout and the synchronous level the service asked for. Statements are prepared once
 * per connection and kept in a small LRU cache keyed by their SQL text; parameters `$1…$n` are
 * bound by name, so one SQL text works on both engines. Extended result codes are mapped to
 * GR_E* codes here; db.c does the logging and the transaction bookkeeping.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "db_int.h"
#include "gr/log.h"

static int map_code(int ext)
{
    switch (ext) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return GR_ECONFLICT;
    case SQLITE_CONSTRAINT_CHECK:
    case SQLITE_CONSTRAINT_NOTNULL:
        return GR_EVALID;
    default:
        break;
    }
    switch (ext & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return GR_EBUSY;
    case SQLITE_CANTOPEN:
        return GR_EUNAVAIL;
    default:
        return GR_EDB;
    }
}

/* Records the connection's current error and returns its GR_E* code. */
static int lite_err(struct gr_db_conn *c, int rc)
{
    char code[16];
    int ext = c->lite ? sqlite3_extended_errcode(c->lite) : rc;

    /* A failed step reports its code directly; the handle may already hold a later one. */
    if ((ext & 0xff) != (rc & 0xff))
        ext = rc;
    snprintf(code, sizeof(code), "%d", ext);
    gr_db__set_err(c, code, "%s", c->lite ? sqlite3_errmsg(c->lite) : sqlite3_errstr(rc));
    return map_code(ext);
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int busy_ms(const struct gr_db_conn *c)
{
    return c->db->opts.busy_timeout_ms > 0 ? c->db->opts.busy_timeout_ms : 5000;
}

int gr_db__lite_prepare_file(const char *path, int busy_timeout_ms, char *err, size_t errlen)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    const unsigned char *mode;
    int rc = 0;

    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, gr_db__vfs()) !=
        SQLITE_OK) {
        snprintf(err, errlen, "DATABASE_URL: cannot open sqlite database '%s': %s", path,
                 h ? sqlite3_errmsg(h) : "out of memory");
        rc = GR_ECONFIG;
        goto out;
    }
    sqlite3_busy_timeout(h, busy_timeout_ms);
    /* WAL is a property of the file, so setting it once here covers every connection. */
    if (sqlite3_prepare_v2(h, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, errlen, "DATABASE_URL: cannot use sqlite database '%s': %s", path,
                 sqlite3_errmsg(h));
        rc = GR_ECONFIG;
        goto out;
    }
    mode = sqlite3_column_text(st, 0);
    if (!mode || strcmp((const char *)mode, "wal") != 0)
        gr_log_warn("sqlite database not in wal mode", "path", path, "mode",
                    mode ? (const char *)mode : "?");
out:
    sqlite3_finalize(st);
    sqlite3_close_v2(h);
    return rc;
}

int gr_db__lite_open(struct gr_db_conn *c)
{
    sqlite3 *h = NULL;
    char *msg = NULL;
    const char *pragmas =
        c->db->opts.sqlite_sync_full
            ? "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY;"
            : "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;";
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc;

    rc = sqlite3_open_v2(c->db->target, &h, flags, gr_db__vfs());
    if (rc != SQLITE_OK) {
        gr_db__set_err(c, "open", "cannot open '%s': %s", c->db->target,
                       h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
        sqlite3_close_v2(h);
        return GR_EUNAVAIL;
    }
    sqlite3_extended_result_codes(h, 1);
    sqlite3_busy_timeout(h, busy_ms(c));
    rc = sqlite3_exec(h, pragmas, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        gr_db__set_err(c, "open", "cannot configure '%s': %s", c->db->target,
                       msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        sqlite3_close_v2(h);
        return GR_EUNAVAIL;
    }
    c->lite = h;
    return 0;
}

void gr_db__lite_close(struct gr_db_conn *c)
{
    for (size_t i = 0; i < c->ncache; i++) {
        sqlite3_finalize(c->cache[i].st);
        gr_free(c->cache[i].sql);
    }
    c->ncache = 0;
    sqlite3_close_v2(c->lite);
    c->lite = NULL;
}

/* True when @tail holds another statement (not just spaces, semicolons or comments). */
static bool has_more(sqlite3 *h, const char *tail)
{
    sqlite3_stmt *st = NULL;

    tail += strspn(tail, " \t\r\n;");
    if (!*tail)
        return false;
    if (sqlite3_prepare_v2(h, tail, -1, &st, NULL) != SQLITE_OK)
        return true;
    sqlite3_finalize(st);
    return st != NULL;
}

/* The cached prepared statement for @sql, preparing (and maybe evicting) on a miss. */
static int stmt_get(struct gr_db_conn *c, const char *sql, sqlite3_stmt **out)
{
    uint64_t hash = gr_db__hash(sql);
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    struct gr_db__stmt *slot;
    int rc;

    for (size_t i = 0; i < c->ncache; i++) {
        if (c->cache[i].hash == hash && strcmp(c->cache[i].sql, sql) == 0) {
            c->cache[i].used = ++c->tick;
            *out = c->cache[i].st;
            return 0;
        }
    }
    rc = sqlite3_prepare_v3(c->lite, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    if (rc != SQLITE_OK)
        return lite_err(c, rc);
    if (!st) {
        gr_db__set_err(c, "empty", "empty statement");
        return GR_EDB;
    }
    if (tail && has_more(c->lite, tail)) {
        sqlite3_finalize(st);
        gr_db__set_err(c, "multi", "several statements in one call");
        return GR_EDB;
    }
    if (c->ncache < GR_DB_STMT_CACHE) {
        slot = &c->cache[c->ncache++];
    } else {
        slot = &c->cache[0];
        for (size_t i = 1; i < c->ncache; i++) {
            if (c->cache[i].used < slot->used)
                slot = &c->cache[i];
        }
        sqlite3_finalize(slot->st);
        gr_free(slot->sql);
    }
    slot->hash = hash;
    slot->sql = gr_xstrdup(sql);
    slot->st = st;
    slot->used = ++c->tick;
    *out = st;
    return 0;
}

/* Parses "$<n>" into n (1-based); 0 for any other parameter syntax. */
static size_t param_number(const char *name)
{
    size_t n = 0;

    if (!name || name[0] != '$' || name[1] < '1' || name[1] > '9')
        return 0;
    for (const char *p = name + 1; *p; p++) {
        if (*p < '0' || *p > '9' || n > GR_DB_MAX_PARAMS)
            return 0;
        n = n * 10 + (size_t)(*p - '0');
    }
    return n;
}

static int bind_params(struct gr_db_conn *c, sqlite3_stmt *st, const struct gr_db_val *params,
                       size_t nparams)
{
    unsigned char seen[GR_DB_MAX_PARAMS] = { 0 };
    int count = sqlite3_bind_parameter_count(st);
    int rc = SQLITE_OK;

    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        size_t k = param_number(name);
        const struct gr_db_val *v;

        if (k == 0 || k > nparams) {
            gr_db__set_err(c, "param", "parameter '%s' has no value (%zu given)", name ? name : "?",
                           nparams);
            return GR_EDB;
        }
        seen[k - 1] = 1;
        v = &params[k - 1];
        if (v->type == GR_DB_VTEXT && v->s)
            rc = sqlite3_bind_text(st, i, v->s, -1, SQLITE_STATIC);
        else if (v->type == GR_DB_VINT)
            rc = sqlite3_bind_int64(st, i, v->i);
        else if (v->type == GR_DB_VNULL || v->type == GR_DB_VTEXT)
            rc = sqlite3_bind_null(st, i);
        else {
            gr_db__set_err(c, "param", "parameter $%zu has an unknown type %d", k, v->type);
            return GR_EDB;
        }
        if (rc != SQLITE_OK)
            return lite_err(c, rc);
    }
    for (size_t k = 0; k < nparams; k++) {
        if (!seen[k]) {
            gr_db__set_err(c, "param", "parameter $%zu is not used by the statement", k + 1);
            return GR_EDB;
        }
    }
    return 0;
}

/* Steps @st to the end, copying every row into @a. Returns the final step code. */
static int collect(struct gr_db_conn *c, struct gr_arena *a, sqlite3_stmt *st,
                   struct gr_db_rows **out, int *step)
{
    struct gr_db_rows *r = gr_arena_calloc(a, sizeof(*r));
    size_t cap = 0;
    int rc;

    /* Step first: after a schema change the step re-prepares, and "*" may expand differently. */
    rc = sqlite3_step(st);
    r->ncols = (size_t)sqlite3_column_count(st);
    r->colnames = gr_arena_calloc(a, (r->ncols ? r->ncols : 1) * sizeof(char *));
    for (size_t i = 0; i < r->ncols; i++)
        r->colnames[i] = gr_arena_strdup(a, sqlite3_column_name(st, (int)i));
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        const char **row;

        if (r->nrows == GR_DB_MAX_ROWS) {
            gr_db__set_err(c, "rows", "result has more than %d rows", GR_DB_MAX_ROWS);
            return GR_ETOOBIG;
        }
        if (r->ncols && (r->nrows + 1) * r->ncols > cap) {
            size_t ncap = cap ? cap * 2 : 16 * r->ncols;
            const char **cells = gr_arena_alloc(a, ncap * sizeof(char *));

            if (cap)
                memcpy(cells, r->cells, r->nrows * r->ncols * sizeof(char *));
            r->cells = cells;
            cap = ncap;
        }
        row = r->cells + r->nrows * r->ncols;
        for (size_t i = 0; i < r->ncols; i++) {
            int col = (int)i;

            /* sqlite3_column_text() is NULL exactly for SQL NULL (or out of memory inside
             * SQLite, which then also reads as NULL), so one call gives value and nullness. */
            const char *t = (const char *)sqlite3_column_text(st, col);

            row[i] = t ? gr_arena_strndup(a, t, (size_t)sqlite3_column_bytes(st, col)) : NULL;
        }
        r->nrows++;
    }
    *step = rc;
    *out = r;
    return 0;
}

int gr_db__lite_run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                    const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
                    long long *changes)
{
    sqlite3_stmt *st = NULL;
    int step;
    int rc;

    rc = stmt_get(c, sql, &st);
    if (rc < 0)
        return rc;
    if (c->snap && !sqlite3_stmt_readonly(st)) {
        gr_db__set_err(c, "readonly", "a write inside a read snapshot");
        return GR_EINTERNAL;
    }
    rc = bind_params(c, st, params, nparams);
    if (rc < 0)
        goto out;
    if (out) {
        rc = collect(c, a, st, out, &step);
        if (rc < 0)
            goto out;
    } else {
        do {
            step = sqlite3_step(st);
        } while (step == SQLITE_ROW);
    }
    if (step != SQLITE_DONE) {
        rc = lite_err(c, step);
        if (out)
            *out = NULL;
        goto out;
    }
    if (changes)
        *changes = (long long)sqlite3_changes64(c->lite);
out:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int gr_db__lite_script(struct gr_db_conn *c, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(c->lite, sql, NULL, NULL, &msg);

    if (rc == SQLITE_OK)
        return 0;
    sqlite3_free(msg); /* sqlite3_errmsg still holds the same text */
    return lite_err(c, rc);
}

/* Sleeps about @delay_us (jittered to 50-100%), at most @left_ms. */
static void backoff(struct gr_db_conn *c, long delay_us, int64_t left_ms)
{
    long us;
    struct timespec ts;

    c->rnd ^= c->rnd << 13;
    c->rnd ^= c->rnd >> 7;
    c->rnd ^= c->rnd << 17;
    us = delay_us / 2 + (long)(c->rnd % (uint64_t)(delay_us / 2 + 1));
    if (us > left_ms * 1000)
        us = (long)left_ms * 1000;
    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (us % 1000000) * 1000;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/*
 * BEGIN IMMEDIATE takes the write lock up front. In WAL mode SQLite can report SQLITE_BUSY
 * for it without (fully) running the busy handler, e.g. while another connection runs a
 * checkpoint or recovers the wal-index, so retry with jittered exponential backoff until the
 * busy timeout has passed.
 */
int gr_db__lite_begin(struct gr_db_conn *c)
{
    int64_t deadline = mono_ms() + busy_ms(c);
    long delay_us = 500;
    int64_t left;
    int rc;

    for (;;) {
        rc = gr_db__lite_run(c, NULL, "BEGIN IMMEDIATE", NULL, 0, NULL, NULL);
        if (rc != GR_EBUSY)
            break;
        left = deadline - mono_ms();
        if (left <= 0)
            break;
        backoff(c, delay_us, left);
        if (delay_us < 64000)
            delay_us *= 2;
    }
    return rc;
}

bool gr_db__lite_in_tx(const struct gr_db_conn *c)
{
    return c->lite && !sqlite3_get_autocommit(c->lite);
}
