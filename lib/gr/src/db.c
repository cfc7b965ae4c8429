/*
 * db.c - the engine-independent half of gr_db: DATABASE_URL parsing, the handle, per-thread
 * connections, statement dispatch with error logging, transactions and migrations. The
 * engines live in db_sqlite.c and db_pg.c behind the gr_db__* calls of db_int.h.
 *
 * Per-thread connections: each thread keeps a small _Thread_local array of (db, id, conn)
 * slots. A miss looks in the handle's list of connections (under its mutex) for one owned by
 * the calling thread, else creates one; the list is what gr_db_close walks to close every
 * thread's connection. The id, taken from a process-wide atomic counter, makes a slot left by
 * a closed handle useless to a new handle allocated at the same address. Stale slots are only
 * compared by address, never dereferenced.
 *
 * Transactions are tracked here (c->tx, c->tx_err) rather than read back from the engine, so
 * both engines share PostgreSQL's rule that an error fails the whole transaction, and a
 * PostgreSQL connection lost inside a transaction is never silently replaced by a new one
 * in autocommit mode.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "db_int.h"
#include "gr/log.h"

#define TL_SLOTS         8
#define MIGRATE_LOCK_KEY 0x67726d6967726174LL /* "grmigrat" */
#define LOG_SQL_MAX      80

struct tl_slot {
    const struct gr_db *db;
    uint64_t id;
    struct gr_db_conn *conn;
};

static atomic_uint_fast64_t next_db_id = 1;
static _Thread_local struct tl_slot tl_cache[TL_SLOTS];
static _Thread_local unsigned tl_victim;

static void set_msg(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);
static void set_msg(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

uint64_t gr_db__hash(const char *s)
{
    uint64_t h = 14695981039346656037ULL;

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

void gr_db__set_err(struct gr_db_conn *c, const char *code, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
    va_end(ap);
    n = strlen(c->errmsg);
    while (n > 0 && (c->errmsg[n - 1] == '\n' || c->errmsg[n - 1] == ' '))
        c->errmsg[--n] = '\0';
    snprintf(c->errcode, sizeof(c->errcode), "%s", code);
}

/* ---- URL and handle -------------------------------------------------------------------- */

static int parse_sqlite_path(const char *path, char *err, size_t errlen)
{
    size_t n = strlen(path);

    if (n == 0 || strcmp(path, "/") == 0) {
        set_msg(err, errlen, "DATABASE_URL: sqlite path is empty");
        return GR_ECONFIG;
    }
    if (n >= PATH_MAX) {
        set_msg(err, errlen, "DATABASE_URL: sqlite path is longer than %d bytes", PATH_MAX - 1);
        return GR_ECONFIG;
    }
    if (strpbrk(path, "?#")) {
        set_msg(err, errlen, "DATABASE_URL: sqlite URL options ('?…') are not supported");
        return GR_ECONFIG;
    }
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0) {
        set_msg(err, errlen,
                "DATABASE_URL: in-memory sqlite is not supported (connections are per thread)");
        return GR_ECONFIG;
    }
    if (path[n - 1] == '/') {
        set_msg(err, errlen, "DATABASE_URL: sqlite path '%s' names a directory", path);
        return GR_ECONFIG;
    }
    return 0;
}

/* Splits @url into an engine and its target (file path or the URL itself). */
static int parse_url(const char *url, int *engine, const char **target, char *err, size_t errlen)
{
    const char *sep;
    size_t slen;

    if (!url || !*url) {
        set_msg(err, errlen, "DATABASE_URL: empty");
        return GR_ECONFIG;
    }
    sep = strstr(url, "://");
    if (!sep) {
        /* Do not echo the URL: without a scheme we cannot tell where a password would be. */
        set_msg(err, errlen, "DATABASE_URL: no scheme (expected sqlite:// or postgres://)");
        return GR_ECONFIG;
    }
    slen = (size_t)(sep - url);
    if (slen == 6 && strncmp(url, "sqlite", 6) == 0) {
        *engine = GR_DB_SQLITE;
        *target = sep + 3;
        return parse_sqlite_path(*target, err, errlen);
    }
    if ((slen == 8 && strncmp(url, "postgres", 8) == 0) ||
        (slen == 10 && strncmp(url, "postgresql", 10) == 0)) {
        *engine = GR_DB_PG;
        *target = url;
        return gr_db__pg_check_url(url, err, errlen);
    }
    set_msg(err, errlen, "DATABASE_URL: unknown scheme '%.*s' (expected sqlite or postgres)",
            (int)(slen > 32 ? 32 : slen), url);
    return GR_ECONFIG;
}

/* mkdir -p of the directories leading to the file @path. */
static int make_parents(const char *path, char *err, size_t errlen)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);

    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            set_msg(err, errlen, "DATABASE_URL: cannot create directory '%s': %s", buf,
                    strerror(errno));
            return GR_ECONFIG;
        }
        *p = '/';
    }
    return 0;
}

int gr_db_open(const char *url, const struct gr_db_opts *opts, struct gr_db **out, char *err,
               size_t errlen)
{
    struct gr_db_opts o = { .sqlite_sync_full = false, .busy_timeout_ms = 5000 };
    struct gr_db *db;
    const char *target = NULL;
    int engine = 0;
    int rc;

    *out = NULL;
    set_msg(err, errlen, "%s", "");
    if (opts)
        o = *opts;
    if (o.busy_timeout_ms <= 0)
        o.busy_timeout_ms = 5000;
    rc = parse_url(url, &engine, &target, err, errlen);
    if (rc < 0)
        return rc;
    if (engine == GR_DB_SQLITE) {
        char *msg = gr_xmalloc(512);

        rc = make_parents(target, msg, 512);
        if (rc == 0)
            rc = gr_db__lite_prepare_file(target, o.busy_timeout_ms, msg, 512);
        if (rc < 0)
            set_msg(err, errlen, "%s", msg);
        gr_free(msg);
        if (rc < 0)
            return rc;
    }
    db = gr_xcalloc(1, sizeof(*db));
    db->engine = engine;
    db->id = atomic_fetch_add(&next_db_id, 1);
    db->target = gr_xstrdup(target);
    db->opts = o;
    pthread_mutex_init(&db->mu, NULL);
    pthread_mutex_init(&db->write_mu, NULL);
    pthread_mutex_init(&db->commit_mu, NULL);
    {
        pthread_condattr_t ca;

        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&db->commit_cv, &ca);
        pthread_cond_init(&db->wd_cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    db->batch = 1;
    *out = db;
    return 0;
}

void gr_db_close(struct gr_db *db)
{
    struct gr_db_conn *c, *next;

    if (!db)
        return;
    pthread_mutex_lock(&db->commit_mu);
    db->wd_stop = true;
    pthread_cond_signal(&db->wd_cv);
    pthread_mutex_unlock(&db->commit_mu);
    if (db->wd_on)
        pthread_join(db->wd, NULL);
    pthread_mutex_lock(&db->mu);
    for (c = db->conns; c; c = next) {
        next = c->next;
        if (db->engine == GR_DB_SQLITE)
            gr_db__lite_close(c);
        else
            gr_db__pg_close(c);
        gr_free(c);
    }
    db->conns = NULL;
    pthread_mutex_unlock(&db->mu);
    if (db->writer) {
        gr_db__lite_close(db->writer);
        gr_free(db->writer);
    }
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->write_mu);
    pthread_mutex_destroy(&db->commit_mu);
    pthread_cond_destroy(&db->commit_cv);
    pthread_cond_destroy(&db->wd_cv);
    gr_free(db->target);
    gr_free(db);
}

int gr_db_engine(const struct gr_db *db)
{
    return db->engine;
}

/* ---- per-thread connections ------------------------------------------------------------ */

static struct gr_db_conn *find_or_create(struct gr_db *db)
{
    pthread_t self = pthread_self();
    struct gr_db_conn *c;

    pthread_mutex_lock(&db->mu);
    for (c = db->conns; c; c = c->next) {
        /* Also adopts the connection of an exited thread whose id was reused. */
        if (pthread_equal(c->owner, self))
            break;
    }
    if (!c) {
        c = gr_xcalloc(1, sizeof(*c));
        c->db = db;
        c->owner = self;
        c->rnd = ((uint64_t)(uintptr_t)c ^ (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL) | 1;
        c->next = db->conns;
        db->conns = c;
    }
    pthread_mutex_unlock(&db->mu);
    return c;
}

static void cache_put(struct gr_db *db, struct gr_db_conn *c)
{
    unsigned slot = TL_SLOTS;

    for (unsigned i = 0; i < TL_SLOTS; i++) {
        if (tl_cache[i].db == db || tl_cache[i].db == NULL) {
            slot = i;
            break;
        }
    }
    if (slot == TL_SLOTS)
        slot = tl_victim++ % TL_SLOTS;
    tl_cache[slot].db = db;
    tl_cache[slot].id = db->id;
    tl_cache[slot].conn = c;
}

/* Opens the engine connection if needed; reconnects a broken PG one outside a transaction. */
static int ensure_open(struct gr_db_conn *c)
{
    int rc = 0;

    if (c->db->engine == GR_DB_SQLITE) {
        if (!c->lite)
            rc = gr_db__lite_open(c);
    } else if (!gr_db__pg_healthy(c)) {
        if (c->tx) {
            gr_db__set_err(c, "libpq", "connection lost inside a transaction");
            return GR_EUNAVAIL;
        }
        rc = gr_db__pg_connect(c);
    }
    if (rc < 0)
        gr_log_warn("db connect failed", "error", c->errmsg);
    return rc;
}

int gr_db_conn(struct gr_db *db, struct gr_db_conn **out)
{
    struct gr_db_conn *c = NULL;
    int rc;

    *out = NULL;
    for (unsigned i = 0; i < TL_SLOTS; i++) {
        if (tl_cache[i].db == db && tl_cache[i].id == db->id) {
            c = tl_cache[i].conn;
            break;
        }
    }
    if (!c) {
        c = find_or_create(db);
        cache_put(db, c);
    }
    /* Inside a transaction hand out the connection as it is, so the caller can roll back. */
    if (!c->tx) {
        rc = ensure_open(c);
        if (rc < 0)
            return rc;
    }
    *out = c;
    return 0;
}

/* ---- statements ------------------------------------------------------------------------ */

static void log_failure(const struct gr_db_conn *c, const char *sql, int rc)
{
    char head[LOG_SQL_MAX + 1];
    size_t n = strnlen(sql, LOG_SQL_MAX);

    /* Cut on a UTF-8 boundary so the log line stays valid JSON text. */
    if (sql[n] != '\0') {
        while (n > 0 && ((unsigned char)sql[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(head, sql, n);
    head[n] = '\0';
    gr_log(rc == GR_ECONFLICT || rc == GR_EVALID ? GR_LOG_DEBUG : GR_LOG_WARN,
           "db statement failed", "error", c->errmsg, "code", c->errcode, "status", gr_err_name(rc),
           "sql", head, (char *)NULL);
}

static int engine_run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                      const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
                      long long *changes)
{
    if (c->db->engine == GR_DB_SQLITE)
        return gr_db__lite_run(c, a, sql, params, nparams, out, changes);
    return gr_db__pg_run(c, a, sql, params, nparams, out, changes);
}

static void copy_err(struct gr_db_conn *dst, const struct gr_db_conn *src)
{
    memcpy(dst->errmsg, src->errmsg, sizeof(dst->errmsg));
    memcpy(dst->errcode, src->errcode, sizeof(dst->errcode));
}

static int lite_acquire(struct gr_db_conn *c);

static int run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
               const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
               long long *changes)
{
    int rc;

    GR_ASSERT(c && sql && (a || !out));
    if (out)
        *out = NULL;
    if (changes)
        *changes = 0;
    if (nparams > GR_DB_MAX_PARAMS || (nparams && !params)) {
        gr_db__set_err(c, "param", "%zu parameters (at most %d)", nparams, GR_DB_MAX_PARAMS);
        rc = GR_EDB;
        goto out;
    }
    if (c->tx && c->tx_err) {
        gr_db__set_err(c, "txfail", "current transaction failed earlier; roll it back");
        rc = GR_EDB;
        goto out;
    }
    if (c->lazy) {
        rc = lite_acquire(c);
        if (rc < 0)
            return rc; /* logged, and the transaction marked failed, by lite_acquire */
    }
    if (c->via) {
        /* SQLite transaction: its statements run on the shared writer (group commit). */
        rc = engine_run(c->via, a, sql, params, nparams, out, changes);
        if (rc < 0)
            copy_err(c, c->via);
        goto out;
    }
    rc = ensure_open(c);
    if (rc < 0) {
        if (c->tx && !c->tx_err)
            c->tx_err = rc;
        return rc;
    }
    rc = engine_run(c, a, sql, params, nparams, out, changes);
    if (rc == GR_EUNAVAIL && c->db->engine == GR_DB_PG && !c->tx && !c->snap &&
        !gr_db__pg_healthy(c)) {
        /* The server dropped an idle connection (restart, failover): retry once. */
        gr_log_info("db connection lost, reconnecting", "error", c->errmsg);
        rc = ensure_open(c);
        if (rc == 0)
            rc = engine_run(c, a, sql, params, nparams, out, changes);
    }
out:
    if (rc < 0) {
        log_failure(c, sql, rc);
        if (c->tx && !c->tx_err)
            c->tx_err = rc;
    }
    return rc;
}

int gr_db_query(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out)
{
    return run(c, a, sql, params, nparams, out, NULL);
}

int gr_db_exec(struct gr_db_conn *c, const char *sql, const struct gr_db_val *params,
               size_t nparams, long long *changes)
{
    return run(c, NULL, sql, params, nparams, NULL, changes);
}

/* ---- results --------------------------------------------------------------------------- */

size_t gr_db_nrows(const struct gr_db_rows *r)
{
    return r ? r->nrows : 0;
}

size_t gr_db_ncols(const struct gr_db_rows *r)
{
    return r ? r->ncols : 0;
}

const char *gr_db_colname(const struct gr_db_rows *r, size_t col)
{
    return r && col < r->ncols ? r->colnames[col] : NULL;
}

const char *gr_db_text(const struct gr_db_rows *r, size_t row, size_t col)
{
    if (!r || row >= r->nrows || col >= r->ncols)
        return NULL;
    return r->cells[row * r->ncols + col];
}

long long gr_db_int(const struct gr_db_rows *r, size_t row, size_t col)
{
    const char *s = gr_db_text(r, row, col);
    char *end;
    long long v;

    if (!s)
        return 0;
    if (strcmp(s, "t") == 0)
        return 1;
    if (strcmp(s, "f") == 0)
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || errno == ERANGE)
        return 0;
    return v;
}

bool gr_db_isnull(const struct gr_db_rows *r, size_t row, size_t col)
{
    return gr_db_text(r, row, col) == NULL;
}

struct gr_db_rows *gr_db_rows_new(struct gr_arena *a, size_t nrows, size_t ncols)
{
    struct gr_db_rows *r = gr_arena_calloc(a, sizeof(*r));

    GR_ASSERT(nrows <= SIZE_MAX / (ncols ? ncols : 1) / sizeof(char *));
    r->nrows = nrows;
    r->ncols = ncols;
    r->colnames = gr_arena_calloc(a, (ncols + 1) * sizeof(char *));
    r->cells = gr_arena_calloc(a, (nrows * ncols + 1) * sizeof(char *));
    return r;
}

void gr_db_rows_set(struct gr_db_rows *r, size_t row, size_t col, const char *text)
{
    GR_ASSERT(r && row < r->nrows && col < r->ncols);
    r->cells[row * r->ncols + col] = text;
}

/* ---- transactions ---------------------------------------------------------------------- */

static bool engine_in_tx(const struct gr_db_conn *c)
{
    if (c->db->engine == GR_DB_SQLITE)
        return gr_db__lite_in_tx(c);
    return gr_db__pg_in_tx(c);
}

/* ---- SQLite group commit ---------------------------------------------------------------- */

#define BATCH_MAX     64 /* members of one batch at most, to bound the wait of the first */
#define BATCH_WAIT_MS 2  /* a member waits this long for others before committing itself */
/*
 * Linger (synchronous=FULL only, where every commit is an fsync): while batches have had more
 * than one member lately (LINGER_AVG16, members x16, moving average over ~8 batches), a member
 * that finds nobody queued does not commit at once but leaves the batch open for about as long
 * as a COMMIT takes on this disk (moving average, between LINGER_MIN_NS and LINGER_MAX_NS)
 * after it began, so the requests arriving meanwhile share its fsync. A lone writer (tests, a
 * quiet service) never lingers: its batches have one member.
 */
#define LINGER_MIN_NS (100 * 1000LL)
#define LINGER_MAX_NS (1000 * 1000LL)
#define LINGER_AVG16  20

/* Deferred members of batches ended by this thread, told by unlock_write. */
static _Thread_local struct gr_db_waiter *tl_fire;

/*
 * Records the end of the open batch with @rc and wakes its members; its deferred members
 * are told once write_mu is released (unlock_write). write_mu held.
 */
static void batch_end(struct gr_db *db, int rc)
{
    struct gr_db_waiter *w = db->waiters;

    while (w) {
        struct gr_db_waiter *next = w->next;

        w->rc = rc;
        w->next = tl_fire;
        tl_fire = w;
        w = next;
    }
    db->waiters = NULL;
    /* members x16, moving average with weight 1/8 (unsigned: add before subtracting) */
    db->members_avg16 = db->members_avg16 + db->members * 2 - db->members_avg16 / 8;
    pthread_mutex_lock(&db->commit_mu);
    db->done_rc[db->batch % GR_DB__BATCH_RING] = rc;
    db->done = db->batch;
    if (db->wd_armed && db->wd_batch == db->batch)
        db->wd_armed = false;
    db->batch++;
    pthread_cond_broadcast(&db->commit_cv);
    pthread_mutex_unlock(&db->commit_mu);
    db->batch_open = false;
    db->members = 0;
}

/* Releases write_mu, then tells the deferred members of the batches this thread ended. */
static void unlock_write(struct gr_db *db)
{
    struct gr_db_waiter *w = tl_fire;

    tl_fire = NULL;
    pthread_mutex_unlock(&db->write_mu);
    while (w) {
        struct gr_db_waiter *next = w->next; /* w may be gone once done returns */

        if (w->rc == 0 && w->hook)
            w->hook(w->hook_arg);
        w->done(w->arg, w->rc);
        w = next;
    }
}

static int64_t mono_ns(void);

/* Commits the open batch (one fsync with synchronous=FULL; its duration feeds linger_ns).
 * write_mu held. */
static int batch_commit(struct gr_db *db)
{
    struct gr_db_conn *w = db->writer;
    int64_t t0 = mono_ns();
    int rc = gr_db__lite_run(w, NULL, "COMMIT", NULL, 0, NULL, NULL);
    int64_t avg = atomic_load(&db->commit_avg_ns);

    /* weight 1/8 */
    atomic_store(&db->commit_avg_ns, avg + (mono_ns() - t0 - avg) / 8);

    if (rc < 0) {
        log_failure(w, "COMMIT", rc);
        if (gr_db__lite_in_tx(w))
            (void)gr_db__lite_run(w, NULL, "ROLLBACK", NULL, 0, NULL, NULL);
    }
    batch_end(db, rc);
    return rc;
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Nobody queued for write_mu and no begun transaction that may still join. */
static bool idle(struct gr_db *db)
{
    return atomic_load(&db->waiting) == 0 && atomic_load(&db->pending) == 0;
}

static int64_t batch_age_ns(struct gr_db *db)
{
    return mono_ns() - atomic_load(&db->batch_t0);
}

/* How long a batch stays open for more members (see LINGER_MIN_NS). */
static int64_t linger_ns(struct gr_db *db)
{
    int64_t v = atomic_load(&db->commit_avg_ns);

    return v < LINGER_MIN_NS ? LINGER_MIN_NS : v > LINGER_MAX_NS ? LINGER_MAX_NS : v;
}

/*
 * True while the open batch should stay open for more members. Only a batch with members
 * lingers: they are waiting for it (or their watchdog is armed), so one of them ends it; a
 * batch left without any (its only transactions rolled back) is ended at once, as it holds
 * the database's write lock against other processes. write_mu.
 */
static bool lingers(struct gr_db *db)
{
    return db->opts.sqlite_sync_full && db->members > 0 && db->members_avg16 >= LINGER_AVG16 &&
           batch_age_ns(db) < linger_ns(db);
}

/*
 * Waits until batch @mine has ended and returns its result. The batch is normally committed
 * by a later member or by a begun transaction that ends without a statement; one that does
 * neither in time (a handler busy elsewhere before its first statement) does not hold us up:
 * after BATCH_WAIT_MS we commit the batch ourselves. Only the batch's first member (@lead)
 * wakes when a lingering batch's linger ends, to commit it: the others sleep until it has
 * (the whole batch waking at one deadline would only queue for write_mu).
 */
static int await_batch(struct gr_db *db, uint64_t mine, bool lead)
{
    int rc;

    pthread_mutex_lock(&db->commit_mu);
    while (db->done < mine) {
        int64_t now = mono_ns();
        int64_t dl = now + BATCH_WAIT_MS * 1000000LL;
        int64_t lg = atomic_load(&db->batch_t0) + linger_ns(db);
        struct timespec ts;

        if (lead && db->batch == mine && lg > now && lg < dl)
            dl = lg; /* a lingering batch is committed when its linger ends */
        ts.tv_sec = (time_t)(dl / 1000000000LL);
        ts.tv_nsec = (long)(dl % 1000000000LL);
        if (pthread_cond_timedwait(&db->commit_cv, &db->commit_mu, &ts) != ETIMEDOUT ||
            db->done >= mine)
            continue;
        pthread_mutex_unlock(&db->commit_mu);
        pthread_mutex_lock(&db->write_mu);
        if (db->batch == mine && db->batch_open) {
            if ((idle(db) && !lingers(db)) || batch_age_ns(db) >= BATCH_WAIT_MS * 1000000LL) {
                if (gr_db__lite_in_tx(db->writer))
                    (void)batch_commit(db);
                else
                    batch_end(db, GR_EDB);
            }
        }
        unlock_write(db);
        pthread_mutex_lock(&db->commit_mu);
    }
    rc = db->done_rc[mine % GR_DB__BATCH_RING];
    pthread_mutex_unlock(&db->commit_mu);
    return rc;
}

static void wd_arm(struct gr_db *db, uint64_t batch);
static int after_end(struct gr_db_conn *c, int rc);

/*
 * Ends @c's membership (write_mu held, released here). The batch is committed now when no
 * writer is queued behind us or it is full; otherwise the next writer carries it on and we
 * wait until it ends, or, given a waiter @w, return GR_DB_DEFERRED and let @w be told.
 * @joined: our work was merged into the batch and must be awaited.
 */
static int member_end(struct gr_db_conn *c, bool joined, struct gr_db_waiter *w)
{
    struct gr_db *db = c->db;
    uint64_t mine = db->batch;
    bool ended = false, lead = false;
    int rc = 0;

    c->via = NULL;
    c->tx = false;
    c->tx_err = 0;
    if (joined)
        lead = ++db->members == 1;
    if (db->batch_open) {
        if (!gr_db__lite_in_tx(db->writer)) {
            /* SQLite rolled the whole transaction back (I/O error, disk full): all fail. */
            gr_log_error("db batch lost: sqlite rolled back the shared transaction");
            batch_end(db, GR_EDB);
            rc = GR_EDB;
            ended = true;
        } else if ((idle(db) && !lingers(db)) || db->members >= BATCH_MAX) {
            rc = batch_commit(db);
            ended = true;
        }
    }
    c->holds_write = false;
    if (joined && !ended && w) {
        w->hook = c->on_commit;
        w->hook_arg = c->on_commit_arg;
        c->on_commit = NULL;
        c->on_commit_arg = NULL;
        c->committed = NULL; /* not told: its owner reads the outcome back */
        w->rc = 0;
        w->next = db->waiters;
        db->waiters = w;
        w->arm(w->arg);
        wd_arm(db, mine);
        unlock_write(db);
        return GR_DB_DEFERRED;
    }
    unlock_write(db);
    if (!joined)
        return 0;
    if (!ended)
        rc = await_batch(db, mine, lead);
    if (rc < 0)
        copy_err(c, db->writer);
    return rc;
}

/* Ends a lazy transaction's pending state (counted in db->pending). */
static void lazy_done(struct gr_db_conn *c)
{
    if (c->lazy) {
        c->lazy = false;
        atomic_fetch_sub(&c->db->pending, 1);
    }
}

/*
 * Commits the open batch when nobody is queued for write_mu and no begun transaction may
 * still join it: called by a transaction that ends without having run a statement, which a
 * finished member may have been waiting for.
 */
static void commit_if_idle(struct gr_db *db)
{
    if (atomic_load(&db->pending) != 0 || atomic_load(&db->waiting) != 0)
        return;
    pthread_mutex_lock(&db->write_mu);
    if (db->batch_open && idle(db)) {
        if (gr_db__lite_in_tx(db->writer))
            (void)batch_commit(db);
        else
            batch_end(db, GR_EDB);
    }
    unlock_write(db);
}

/*
 * SQLite: takes write_mu and opens @c's savepoint in the shared batch, at the transaction's
 * first statement (gr_db_begin only marks it begun, so a handler validating its input does
 * not hold up the writers queued behind it). On failure the transaction stays open and
 * failed, as after any failed statement.
 */
static int lite_acquire(struct gr_db_conn *c)
{
    struct gr_db *db = c->db;
    struct gr_db_conn *w;
    int rc;

    /* Queued before leaving pending, so a finishing member never sees both counts at 0. */
    atomic_fetch_add(&db->waiting, 1);
    lazy_done(c);
    pthread_mutex_lock(&db->write_mu);
    atomic_fetch_sub(&db->waiting, 1);
    c->holds_write = true;
    if (!db->writer) {
        db->writer = gr_xcalloc(1, sizeof(*db->writer));
        db->writer->db = db;
        db->writer->owner = pthread_self();
        db->writer->rnd = ((uint64_t)(uintptr_t)db->writer * 0x9e3779b97f4a7c15ULL) | 1;
    }
    w = db->writer;
    rc = ensure_open(w);
    if (rc == 0 && !db->batch_open) {
        rc = gr_db__lite_begin(w);
        if (rc == 0) {
            db->batch_open = true;
            atomic_store(&db->batch_t0, mono_ns());
        }
    }
    if (rc == 0)
        rc = gr_db__lite_run(w, NULL, "SAVEPOINT gr_member", NULL, 0, NULL, NULL);
    if (rc < 0) {
        copy_err(c, w);
        log_failure(c, "BEGIN IMMEDIATE", rc);
        (void)member_end(c, false, NULL);
        c->tx = true; /* still open, failed: gr_db_commit or gr_db_rollback ends it */
        c->tx_err = rc;
        return rc;
    }
    c->via = w;
    return 0;
}

/* SQLite gr_db_begin: the transaction starts pending; lite_acquire joins the batch. */
static int lite_begin(struct gr_db_conn *c)
{
    atomic_fetch_add(&c->db->pending, 1);
    c->lazy = true;
    c->tx = true;
    c->tx_err = 0;
    return 0;
}

/* Ends a transaction that never ran a statement. */
static int lite_end_lazy(struct gr_db_conn *c)
{
    lazy_done(c);
    c->tx = false;
    c->tx_err = 0;
    commit_if_idle(c->db);
    return 0;
}

static int lite_rollback(struct gr_db_conn *c)
{
    struct gr_db_conn *w = c->via;
    int rc = 0;

    if (c->lazy)
        return lite_end_lazy(c);
    if (!c->holds_write) {
        c->tx = false;
        c->tx_err = 0;
        return 0;
    }
    if (w && gr_db__lite_in_tx(w)) {
        rc = gr_db__lite_run(w, NULL, "ROLLBACK TO gr_member", NULL, 0, NULL, NULL);
        if (rc == 0)
            rc = gr_db__lite_run(w, NULL, "RELEASE gr_member", NULL, 0, NULL, NULL);
        if (rc < 0)
            log_failure(w, "ROLLBACK TO", rc);
    }
    (void)member_end(c, false, NULL);
    return rc;
}

static int lite_commit(struct gr_db_conn *c)
{
    int rc;

    if (c->lazy)
        return lite_end_lazy(c);
    if (c->tx_err) {
        rc = c->tx_err;
        (void)lite_rollback(c);
        return rc;
    }
    rc = gr_db__lite_run(c->via, NULL, "RELEASE gr_member", NULL, 0, NULL, NULL);
    if (rc < 0) {
        copy_err(c, c->via);
        log_failure(c, "RELEASE", rc);
        (void)lite_rollback(c);
        return rc;
    }
    return member_end(c, true, NULL);
}

/* ---- deferred commits: the watchdog ------------------------------------------------------ */

static void *watchdog(void *arg)
{
    struct gr_db *db = arg;

    pthread_mutex_lock(&db->commit_mu);
    while (!db->wd_stop) {
        uint64_t b = db->wd_batch;
        int64_t dl = atomic_load(&db->batch_t0) +
                     (db->opts.sqlite_sync_full ? linger_ns(db) : BATCH_WAIT_MS * 1000000LL);
        struct timespec ts;

        if (!db->wd_armed || db->done >= b) {
            db->wd_armed = false;
            pthread_cond_wait(&db->wd_cv, &db->commit_mu);
            continue;
        }
        if (mono_ns() < dl) {
            ts.tv_sec = (time_t)(dl / 1000000000LL);
            ts.tv_nsec = (long)(dl % 1000000000LL);
            (void)pthread_cond_timedwait(&db->wd_cv, &db->commit_mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&db->commit_mu);
        pthread_mutex_lock(&db->write_mu);
        if (db->batch == b && db->batch_open) {
            if (gr_db__lite_in_tx(db->writer))
                (void)batch_commit(db);
            else
                batch_end(db, GR_EDB);
        }
        unlock_write(db);
        pthread_mutex_lock(&db->commit_mu);
    }
    pthread_mutex_unlock(&db->commit_mu);
    return NULL;
}

/* Has the watchdog end batch @batch in BATCH_WAIT_MS unless somebody else does. write_mu held. */
static void wd_arm(struct gr_db *db, uint64_t batch)
{
    pthread_mutex_lock(&db->commit_mu);
    if (!db->wd_on) {
        if (pthread_create(&db->wd, NULL, watchdog, db) != 0)
            GR_BUG("cannot start the group commit watchdog");
        db->wd_on = true;
    }
    if (!db->wd_armed || db->wd_batch != batch) {
        db->wd_armed = true;
        db->wd_batch = batch;
        pthread_cond_signal(&db->wd_cv);
    }
    pthread_mutex_unlock(&db->commit_mu);
}

int gr_db_commit_deferred(struct gr_db_conn *c, struct gr_db_waiter *w)
{
    int rc;

    GR_ASSERT(w && w->arm && w->done);
    if (!c->tx || c->db->engine != GR_DB_SQLITE || c->lazy || c->tx_err || !c->holds_write)
        return gr_db_commit(c);
    rc = gr_db__lite_run(c->via, NULL, "RELEASE gr_member", NULL, 0, NULL, NULL);
    if (rc < 0) {
        copy_err(c, c->via);
        log_failure(c, "RELEASE", rc);
        (void)lite_rollback(c);
        return after_end(c, rc);
    }
    rc = member_end(c, true, w);
    return rc == GR_DB_DEFERRED ? rc : after_end(c, rc);
}

/* ---- transactions ----------------------------------------------------------------------- */

/* @pg_sql: the PostgreSQL BEGIN statement (its isolation level). */
static int begin_tx(struct gr_db_conn *c, const char *pg_sql)
{
    int rc;

    if (c->tx || c->snap) {
        gr_db__set_err(c, "nested", "transaction already open");
        gr_log_error("db begin inside a transaction");
        return GR_EINTERNAL;
    }
    if (c->db->engine == GR_DB_SQLITE)
        return lite_begin(c);
    rc = run(c, NULL, pg_sql, NULL, 0, NULL, NULL);
    if (rc == 0) {
        c->tx = true;
        c->tx_err = 0;
    }
    return rc;
}

int gr_db_begin(struct gr_db_conn *c)
{
    return begin_tx(c, "BEGIN ISOLATION LEVEL SERIALIZABLE");
}

int gr_db_begin_read_committed(struct gr_db_conn *c)
{
    return begin_tx(c, "BEGIN ISOLATION LEVEL READ COMMITTED");
}

int gr_db_read_begin(struct gr_db_conn *c)
{
    int rc;

    if (c->tx || c->snap) {
        gr_db__set_err(c, "nested", "transaction already open");
        gr_log_error("db read snapshot inside a transaction");
        return GR_EINTERNAL;
    }
    /* SQLite: the connection's own handle, outside the write batch; WAL gives the snapshot at
     * the first read. PostgreSQL: one snapshot for every statement, no predicate locks. */
    rc = run(c, NULL,
             c->db->engine == GR_DB_SQLITE ? "BEGIN DEFERRED"
                                           : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
             NULL, 0, NULL, NULL);
    if (rc == 0)
        c->snap = true;
    return rc;
}

int gr_db_read_end(struct gr_db_conn *c)
{
    int rc = 0;

    if (!c->snap)
        return 0;
    c->snap = false;
    if (engine_in_tx(c)) {
        rc = engine_run(c, NULL, "ROLLBACK", NULL, 0, NULL, NULL);
        if (rc < 0)
            log_failure(c, "ROLLBACK", rc);
    }
    return rc;
}

bool gr_db_in_read(const struct gr_db_conn *c)
{
    return c->snap;
}

int gr_db_rollback(struct gr_db_conn *c)
{
    int rc = 0;

    c->on_commit = NULL;
    c->on_commit_arg = NULL;
    c->committed = NULL;
    if (c->db->engine == GR_DB_SQLITE)
        return lite_rollback(c);
    c->tx = false;
    c->tx_err = 0;
    if (engine_in_tx(c)) {
        rc = engine_run(c, NULL, "ROLLBACK", NULL, 0, NULL, NULL);
        if (rc < 0)
            log_failure(c, "ROLLBACK", rc);
    }
    return rc;
}

int gr_db_savepoint(struct gr_db_conn *c)
{
    if (!c->tx)
        return GR_EINTERNAL;
    return run(c, NULL, "SAVEPOINT gr_sp", NULL, 0, NULL, NULL);
}

int gr_db_savepoint_release(struct gr_db_conn *c)
{
    if (!c->tx)
        return GR_EINTERNAL;
    return run(c, NULL, "RELEASE SAVEPOINT gr_sp", NULL, 0, NULL, NULL);
}

int gr_db_savepoint_rollback(struct gr_db_conn *c)
{
    int err = c->tx_err, rc;

    if (!c->tx || c->lazy)
        return GR_EINTERNAL;
    c->tx_err = 0; /* the statements below must run */
    rc = run(c, NULL, "ROLLBACK TO SAVEPOINT gr_sp", NULL, 0, NULL, NULL);
    if (rc == 0)
        rc = run(c, NULL, "RELEASE SAVEPOINT gr_sp", NULL, 0, NULL, NULL);
    if (rc < 0 && c->tx && !c->tx_err)
        c->tx_err = err ? err : rc;
    return rc;
}

void gr_db_on_commit(struct gr_db_conn *c, void (*fn)(void *), void *arg)
{
    c->on_commit = fn;
    c->on_commit_arg = arg;
}

void gr_db__flag_commit(struct gr_db_conn *c, bool *flag)
{
    c->committed = flag;
}

bool *gr_db__commit_flag(const struct gr_db_conn *c)
{
    return c->committed;
}

/* Takes the commit hook and flag off @c; runs the hook and sets the flag when @rc is success. */
static int after_end(struct gr_db_conn *c, int rc)
{
    void (*fn)(void *) = c->on_commit;
    void *arg = c->on_commit_arg;
    bool *flag = c->committed;

    c->on_commit = NULL;
    c->on_commit_arg = NULL;
    c->committed = NULL;
    if (rc == 0 && flag)
        *flag = true;
    if (rc == 0 && fn)
        fn(arg);
    return rc;
}

static int commit_tx(struct gr_db_conn *c);

int gr_db_commit(struct gr_db_conn *c)
{
    return after_end(c, commit_tx(c));
}

static int commit_tx(struct gr_db_conn *c)
{
    int rc;

    if (!c->tx) {
        gr_db__set_err(c, "notx", "no transaction open");
        gr_log_error("db commit without a transaction");
        return GR_EINTERNAL;
    }
    if (c->db->engine == GR_DB_SQLITE)
        return lite_commit(c);
    if (c->tx_err) {
        rc = c->tx_err;
        gr_log_debug("db commit of a failed transaction, rolled back");
        goto fail;
    }
    if (!gr_db__pg_healthy(c)) {
        gr_db__set_err(c, "libpq", "connection lost inside a transaction");
        rc = GR_EUNAVAIL;
        log_failure(c, "COMMIT", rc);
        goto fail;
    }
    rc = engine_run(c, NULL, "COMMIT", NULL, 0, NULL, NULL);
    if (rc < 0) {
        log_failure(c, "COMMIT", rc);
        goto fail;
    }
    c->tx = false;
    c->tx_err = 0;
    return 0;
fail:
    (void)gr_db_rollback(c);
    return rc;
}

bool gr_db_in_tx(const struct gr_db_conn *c)
{
    return c->tx;
}

const char *gr_db_errmsg(const struct gr_db_conn *c)
{
    return c->errmsg;
}

int gr_db_ping(struct gr_db *db)
{
    struct gr_db_conn *c;
    int rc;

    rc = gr_db_conn(db, &c);
    if (rc < 0)
        return rc;
    return gr_db_exec(c, "SELECT 1", NULL, 0, NULL);
}

/* ---- migrations ------------------------------------------------------------------------ */

static const char create_sql[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                 "service TEXT NOT NULL, name TEXT NOT NULL, "
                                 "applied_at TEXT NOT NULL, PRIMARY KEY (service, name))";

static void now_rfc3339(char out[64])
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Opens a migration transaction; on PostgreSQL it also takes the migration lock. READ
 * COMMITTED there, because a SERIALIZABLE snapshot would be taken by the lock statement itself,
 * before the wait, and would not show what the instance we waited for has just recorded.
 */
static int migrate_begin(struct gr_db_conn *c)
{
    struct gr_db_val key = GR_DB_INT(MIGRATE_LOCK_KEY);
    int rc = begin_tx(c, "BEGIN ISOLATION LEVEL READ COMMITTED");

    if (rc == 0 && c->db->engine == GR_DB_PG)
        rc = gr_db_exec(c, "SELECT pg_advisory_xact_lock(CAST($1 AS BIGINT))", &key, 1, NULL);
    return rc;
}

static bool in_list(const struct gr_migration *m, const char *name)
{
    for (size_t i = 0; m[i].name; i++) {
        if (strcmp(m[i].name, name) == 0)
            return true;
    }
    return false;
}

/* Applies @m unless another instance recorded it first. */
static int migrate_one(struct gr_db_conn *c, struct gr_arena *a, const char *service,
                       const struct gr_migration *m)
{
    struct gr_db_val p[3] = { GR_DB_TEXT(service), GR_DB_TEXT(m->name), GR_DB_NULL };
    const char *sql = c->db->engine == GR_DB_SQLITE ? m->sql_sqlite : m->sql_pg;
    struct gr_db_rows *r;
    char stamp[64], ms[24];
    int64_t t0 = mono_ms();
    int rc;

    if (!sql) {
        gr_log_error("migration has no sql for this engine", "service", service, "name", m->name);
        return GR_ECONFIG;
    }
    rc = migrate_begin(c);
    if (rc < 0)
        goto out;
    rc = gr_db_query(c, a, "SELECT 1 FROM schema_migrations WHERE service = $1 AND name = $2", p, 2,
                     &r);
    if (rc < 0 || gr_db_nrows(r) > 0)
        goto out;
    if (c->db->engine == GR_DB_SQLITE) {
        rc = gr_db__lite_script(c->via, sql);
        if (rc < 0)
            copy_err(c, c->via);
    } else {
        rc = gr_db__pg_script(c, sql);
    }
    if (rc < 0) {
        gr_log_error("migration failed", "service", service, "name", m->name, "error", c->errmsg,
                     "code", c->errcode);
        if (rc != GR_EUNAVAIL && rc != GR_EBUSY)
            rc = GR_EDB;
        goto out;
    }
    now_rfc3339(stamp);
    p[2] = GR_DB_TEXT(stamp);
    rc = gr_db_exec(c,
                    "INSERT INTO schema_migrations (service, name, applied_at) "
                    "VALUES ($1, $2, $3)",
                    p, 3, NULL);
    if (rc < 0)
        goto out;
    rc = gr_db_commit(c);
    if (rc < 0)
        goto out;
    snprintf(ms, sizeof(ms), "%lld", (long long)(mono_ms() - t0));
    gr_log_info("migration applied", "service", service, "name", m->name, "ms", ms);
out:
    if (gr_db_in_tx(c))
        (void)gr_db_rollback(c);
    return rc;
}

int gr_db_migrate(struct gr_db *db, const char *service, const struct gr_migration *m)
{
    static const struct gr_migration none[] = { { NULL, NULL, NULL } };
    struct gr_db_val p[1] = { GR_DB_TEXT(service) };
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_db_conn *c = NULL;
    struct gr_db_rows *r;
    int rc;

    if (!m)
        m = none;
    for (size_t i = 0; m[i].name; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(m[i].name, m[j].name) == 0) {
                gr_log_error("migration listed twice", "service", service, "name", m[i].name);
                return GR_ECONFIG;
            }
        }
    }
    rc = gr_db_conn(db, &c);
    if (rc < 0)
        goto out;
    rc = migrate_begin(c);
    if (rc < 0)
        goto out;
    rc = gr_db_exec(c, create_sql, NULL, 0, NULL);
    if (rc < 0)
        goto out;
    rc = gr_db_query(c, &a, "SELECT name FROM schema_migrations WHERE service = $1", p, 1, &r);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < gr_db_nrows(r); i++) {
        const char *name = gr_db_text(r, i, 0);

        if (!in_list(m, name)) {
            gr_log_error("database has a migration this build does not know", "service", service,
                         "name", name);
            rc = GR_ECONFIG;
            goto out;
        }
    }
    rc = gr_db_commit(c);
    if (rc < 0)
        goto out;
    for (size_t i = 0; m[i].name; i++) {
        bool done = false;

        for (size_t j = 0; j < gr_db_nrows(r) && !done; j++)
            done = strcmp(gr_db_text(r, j, 0), m[i].name) == 0;
        if (done)
            continue;
        rc = migrate_one(c, &a, service, &m[i]);
        if (rc < 0)
            goto out;
    }
out:
    if (c && gr_db_in_tx(c))
        (void)gr_db_rollback(c);
    gr_arena_release(&a);
    return rc;
}
