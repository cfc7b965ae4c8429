/*
 * gr/db.h - one database API over SQLite and PostgreSQL (libpq), STYLE §6.
 *
 * SQL is written once with bound parameters `$1…$n` for both engines (R22): never build SQL by
 * concatenating strings. A struct gr_db is the shared, thread-safe handle of one database; each
 * thread has its own struct gr_db_conn from gr_db_conn() (created on first use, kept in a
 * thread-local cache, closed by gr_db_close). Results are fully materialised into the caller's
 * arena, so nothing is released by hand. Process-wide state: an atomic counter numbering
 * handles, and per-thread caches of (handle, connection) pairs; both are thread-safe.
 *
 * Transactions: gr_db_begin is BEGIN IMMEDIATE on SQLite (at the first statement) and
 * BEGIN ISOLATION LEVEL SERIALIZABLE on PostgreSQL, so read-modify-write code that is correct on
 * SQLite stays correct on PostgreSQL; a PostgreSQL serialization failure comes back as
 * GR_EBUSY. Both engines behave like PostgreSQL after an error inside a transaction: the
 * transaction is failed, further statements return GR_EDB, gr_db_commit rolls it back and
 * returns the first error. Call gr_db_rollback on every error path (it is always safe).
 *
 * Error codes: unique, primary key and foreign key violations give GR_ECONFLICT; check and
 * not-null violations give GR_EVALID; lock contention after the busy timeout, serialization
 * failures and deadlocks give GR_EBUSY; an unreachable server gives GR_EUNAVAIL; a malformed
 * URL gives GR_ECONFIG; everything else gives GR_EDB. Engine errors are logged at warn with
 * the first 80 characters of the SQL, never with parameter values (constraint violations, which
 * are client errors, at debug).
 */
#ifndef GR_DB_H
#define GR_DB_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/status.h"

#define GR_DB_MAX_PARAMS 256     /* parameters per statement */
#define GR_DB_MAX_ROWS   1000000 /* rows per result; more gives GR_ETOOBIG */
#define GR_DB_STMT_CACHE 64      /* prepared statements kept per connection (LRU) */
#define GR_DB_ERRMSG_MAX 256     /* bytes of the last engine message kept per connection */

enum gr_db_engine { GR_DB_SQLITE = 1, GR_DB_PG = 2 };

/*
 * One forward-only migration. Arrays end with an entry whose name is NULL. Both SQL texts are
 * required (scripts/embed.py fills both, from one portable file or per-engine variants); they
 * may hold several statements but no BEGIN/COMMIT.
 */
struct gr_migration {
    const char *name;       /* "0001_init"; borrowed */
    const char *sql_sqlite; /* borrowed */
    const char *sql_pg;     /* borrowed */
};

struct gr_db;      /* opaque, thread-safe handle: config + per-thread connections */
struct gr_db_conn; /* one connection, used by one thread at a time */
struct gr_db_rows; /* a fully materialised result, allocated in an arena */

struct gr_db_opts {
    bool sqlite_sync_full; /* synchronous=FULL (money/stock/order tables) else NORMAL */
    int busy_timeout_ms;   /* how long a writer waits for a lock; <= 0 means 5000 */
};

enum gr_db_vtype { GR_DB_VNULL, GR_DB_VTEXT, GR_DB_VINT };

/* A bound parameter value; build it with the macros below. Strings are borrowed for the call. */
struct gr_db_val {
    int type; /* enum gr_db_vtype */
    const char *s;
    long long i;
};

/* A function, not a ternary in the macro: gcc's -Waddress rejects `array ? … : …`. */
static inline struct gr_db_val gr_db__val_text(const char *s)
{
    struct gr_db_val v = { .type = s ? GR_DB_VTEXT : GR_DB_VNULL, .s = s, .i = 0 };
    return v;
}

#define GR_DB_TEXT(x) gr_db__val_text(x) /* NULL gives SQL NULL */
#define GR_DB_INT(x)  ((struct gr_db_val){ .type = GR_DB_VINT, .i = (x) })
#define GR_DB_NULL    ((struct gr_db_val){ .type = GR_DB_VNULL })

/**
 * Opens the database named by @url:
 *   "sqlite:///abs/path.db", "sqlite://relative/path.db" (relative to the working directory),
 *   "postgres://…" or "postgresql://…" (a libpq URI, checked with PQconninfoParse).
 * For SQLite the parent directory is created (mkdir -p), the file is opened once and switched
 * to WAL. For PostgreSQL nothing is connected yet: connections are made lazily per thread, and
 * gr_db_ping tells whether the server is reachable.
 * @opts may be NULL (defaults). On success *@out is the handle (free it with gr_db_close).
 * Errors: GR_ECONFIG for a malformed URL or an SQLite file that cannot be created, with one
 * line in @err (@errlen bytes, may be 0) naming the problem, e.g.
 * "DATABASE_URL: unknown scheme 'mysql'".
 */
GR_MUST_CHECK int gr_db_open(const char *url, const struct gr_db_opts *opts, struct gr_db **out,
                             char *err, size_t errlen);

/** Closes every thread's connection and frees @db. Call after all threads stopped using it. */
void gr_db_close(struct gr_db *db);

/** GR_DB_SQLITE or GR_DB_PG. */
int gr_db_engine(const struct gr_db *db);

/**
 * The calling thread's connection to @db in *@out (borrowed: valid until gr_db_close, no
 * release call). Created on first use; a broken PostgreSQL connection outside a transaction is
 * reconnected here. A thread's connection stays open after the thread exits, until
 * gr_db_close (or a new thread that is given the same pthread_t takes it over), so use
 * long-lived threads (a pool). Errors: GR_EUNAVAIL when the server cannot be reached (logged
 * at warn).
 */
GR_MUST_CHECK int gr_db_conn(struct gr_db *db, struct gr_db_conn **out);

/**
 * Runs one statement with @nparams bound parameters (`$1…$n`; every one of them must appear in
 * the SQL, and $k may appear several times) and materialises its rows into @a: *@out and all
 * strings it returns are arena memory. Several statements in one @sql give GR_EDB.
 * Both engines prepare each distinct SQL text once per connection and keep it (PostgreSQL:
 * named server-side statements, so a pooler in front must keep sessions, e.g. pgbouncer in
 * session mode); write SQL as constant texts. On PostgreSQL a statement that fails because the
 * connection broke is retried once on a new connection when no transaction was open.
 * Errors: see the file comment; GR_ETOOBIG beyond GR_DB_MAX_ROWS rows.
 */
GR_MUST_CHECK int gr_db_query(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                              const struct gr_db_val *params, size_t nparams,
                              struct gr_db_rows **out);

/**
 * Like gr_db_query for statements whose rows are not needed (INSERT, UPDATE, DDL). *@changes
 * (may be NULL) receives the number of rows inserted, updated or deleted.
 */
GR_MUST_CHECK int gr_db_exec(struct gr_db_conn *c, const char *sql, const struct gr_db_val *params,
                             size_t nparams, long long *changes);

/** Number of rows of a result. */
size_t gr_db_nrows(const struct gr_db_rows *r);
/** Number of columns of a result. */
size_t gr_db_ncols(const struct gr_db_rows *r);
/** Name of column @col (arena; NULL when out of range). */
const char *gr_db_colname(const struct gr_db_rows *r, size_t col);
/**
 * Value at @row, @col as text (arena): NULL for SQL NULL or out of range; integers as decimal
 * text; PostgreSQL booleans as "t"/"f".
 */
const char *gr_db_text(const struct gr_db_rows *r, size_t row, size_t col);
/** Value as an integer: 0 for NULL, out of range or non-numeric text; "t"/"f" give 1/0. */
long long gr_db_int(const struct gr_db_rows *r, size_t row, size_t col);
/** True for SQL NULL (and out of range). */
bool gr_db_isnull(const struct gr_db_rows *r, size_t row, size_t col);
/**
 * Rows built in memory rather than read (arena; every cell NULL until set): lets code that
 * renders query results render a row it is about to insert, without reading it back.
 * @colnames may be NULL (gr_db_colname then gives NULL).
 */
struct gr_db_rows *gr_db_rows_new(struct gr_arena *a, size_t nrows, size_t ncols);
/** Sets cell @row, @col (in range) to @text, borrowed: it must outlive the rows; NULL is NULL. */
void gr_db_rows_set(struct gr_db_rows *r, size_t row, size_t col, const char *text);

/**
 * Opens a transaction. SQLite: the write lock (BEGIN IMMEDIATE of the shared batch, retried
 * with jittered backoff until the busy timeout) is taken at the transaction's first statement,
 * so work before it does not delay other writers; that statement returns GR_EBUSY when the
 * lock could not be had in time. PostgreSQL: BEGIN ISOLATION LEVEL SERIALIZABLE. A
 * transaction already open gives GR_EINTERNAL (a bug in the caller).
 */
GR_MUST_CHECK int gr_db_begin(struct gr_db_conn *c);
/**
 * gr_db_begin at READ COMMITTED on PostgreSQL (SQLite: gr_db_begin; it runs one writer at a
 * time). For a transaction whose correctness rests on unique keys, row locks (FOR UPDATE) and
 * conditional writes (`UPDATE … WHERE status = $n`, checking the rows changed) rather than on
 * one snapshot of what it read: e.g. one that inserts new rows and reads them back. It takes no
 * predicate locks, so it neither fails nor makes others fail with false serialization
 * conflicts (SERIALIZABLE locks whole index pages: rows with neighbouring keys, like UUIDv7 ids
 * made at the same moment, collide).
 */
GR_MUST_CHECK int gr_db_begin_read_committed(struct gr_db_conn *c);
/**
 * Opens a read snapshot on @c: every statement until gr_db_read_end sees the database as of
 * one moment, so a reader that renders one object from several statements (a row, then its
 * children) never shows a write half-applied (the parent's version from before it, the
 * children from after). SQLite: BEGIN DEFERRED on @c's own handle, outside the write batch
 * (WAL: the snapshot is taken at the first read; writers are not held up); PostgreSQL: BEGIN
 * ISOLATION LEVEL REPEATABLE READ READ ONLY. Only reads: a write fails (GR_EINTERNAL on
 * SQLite, GR_EDB on PostgreSQL). Inside a transaction or a snapshot: GR_EINTERNAL.
 */
GR_MUST_CHECK int gr_db_read_begin(struct gr_db_conn *c);
/** Ends the snapshot gr_db_read_begin opened; 0 when none is open (always safe to call). */
int gr_db_read_end(struct gr_db_conn *c);
/** Is a read snapshot open on @c? */
bool gr_db_in_read(const struct gr_db_conn *c);
/**
 * Commits. On any failure the transaction is rolled back, so none is open afterwards. When a
 * statement failed inside the transaction, nothing is committed and that statement's error is
 * returned. Serialization failures at commit give GR_EBUSY.
 */
GR_MUST_CHECK int gr_db_commit(struct gr_db_conn *c);
/** gr_db_commit_deferred's answer when the commit completes later, through the waiter. */
#define GR_DB_DEFERRED 1

/**
 * A commit that completes later (gr_db_commit_deferred). Owned by the caller, untouched by it
 * until done runs; next and the fields after it belong to gr.
 */
struct gr_db_waiter {
    /* Called once, under the batch lock and before the commit can complete, when the commit
     * is deferred (the HTTP layer suspends its connection here); must not touch the database. */
    void (*arm)(void *arg);
    /* Called once, from whichever thread ends the batch, with no lock held: 0 when the
     * transaction is durable (after its gr_db_on_commit hook ran), else the error. */
    void (*done)(void *arg, int rc);
    void *arg;
    struct gr_db_waiter *next;
    int rc;
    void (*hook)(void *);
    void *hook_arg;
};

/**
 * Commits like gr_db_commit, but where the caller would wait for a group commit (an SQLite
 * transaction whose batch other writers are still adding to) returns GR_DB_DEFERRED at once
 * after calling @w->arm; @w->done reports the outcome when the batch ends, within ~2 ms even
 * when no other writer finishes it. The thread is free meanwhile, so the batch grows with
 * the requests in flight rather than with the threads. Otherwise (PostgreSQL, a failed or
 * statement-less transaction, a batch committed right here) the result is returned at once
 * and @w is not used. The connection has no open transaction afterwards in every case; its
 * writes are not visible to other connections until done reports 0.
 */
GR_MUST_CHECK int gr_db_commit_deferred(struct gr_db_conn *c, struct gr_db_waiter *w);
/** Rolls back; safe (and 0) when no transaction is open. */
int gr_db_rollback(struct gr_db_conn *c);
/**
 * One savepoint level inside the open transaction: gr_db_savepoint marks the point,
 * gr_db_savepoint_release keeps the work done since, gr_db_savepoint_rollback undoes it and
 * clears the transaction's failed state so that it goes on (a statement that failed after
 * the savepoint no longer fails the commit). Not nestable.
 */
GR_MUST_CHECK int gr_db_savepoint(struct gr_db_conn *c);
GR_MUST_CHECK int gr_db_savepoint_release(struct gr_db_conn *c);
GR_MUST_CHECK int gr_db_savepoint_rollback(struct gr_db_conn *c);
/**
 * Runs @fn(@arg) once after the open transaction on @c commits successfully (durably, for an
 * SQLite batch); dropped on rollback. One hook per transaction: a second call replaces it.
 */
void gr_db_on_commit(struct gr_db_conn *c, void (*fn)(void *), void *arg);
/** True while a transaction is open (also a failed one that still needs its rollback). */
bool gr_db_in_tx(const struct gr_db_conn *c);
/** The last engine error message, for logs; never contains parameter values; "" if none. */
const char *gr_db_errmsg(const struct gr_db_conn *c);

/** Runs "SELECT 1" on the calling thread's connection: 0, or GR_EUNAVAIL and friends. */
GR_MUST_CHECK int gr_db_ping(struct gr_db *db);

/**
 * Applies, in order, each migration of @m not yet recorded for @service in
 * schema_migrations(service, name, applied_at), each in its own transaction together with its
 * record, logging "migration applied" for each. On PostgreSQL every step holds
 * pg_advisory_xact_lock, so instances starting together apply each migration once.
 * Errors: GR_ECONFIG when the database records a migration of @service that @m does not
 * contain (forward-only) or @m repeats a name; GR_EDB when a migration fails (it leaves neither
 * its record nor any of its schema); GR_EUNAVAIL / GR_EBUSY.
 */
GR_MUST_CHECK int gr_db_migrate(struct gr_db *db, const char *service,
                                const struct gr_migration *m);

#endif
