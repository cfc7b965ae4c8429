/*
 * db_int.h - internals shared by db.c (URLs, per-thread connections, results, transactions,
 * migrations) and the two engine files db_sqlite.c and db_pg.c. Never included by services.
 */
#ifndef GR_DB_INT_H
#define GR_DB_INT_H

#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gr/db.h"

#define GR_DB__VFS "gr" /* db_vfs.c: unix, with a commit's WAL appends written at once */
/* Registers the "gr" VFS once (and turns off SQLite's allocation statistics); its name, or
 * NULL (the default VFS) if it could not be registered. */
const char *gr_db__vfs(void);
#define GR_DB__BATCH_RING 1024 /* results of recent batches, for members still waiting */

struct gr_db {
    int engine;
    uint64_t id;  /* unique per gr_db_open: guards thread-local caches against address reuse */
    char *target; /* SQLite file path or PostgreSQL URL; owned */
    struct gr_db_opts opts;
    pthread_mutex_t mu; /* guards conns */
    /*
     * SQLite group commit (db.c): a transaction of this process runs as a SAVEPOINT inside
     * one shared write transaction on `writer`. Writers queue on write_mu (handing the lock
     * over at once instead of sleeping in SQLite's busy handler); the last writer of a chain,
     * seeing nobody waiting, commits the batch, so one fsync serves many requests, and each
     * member returns from gr_db_commit only once its batch is durable.
     */
    pthread_mutex_t write_mu;
    struct gr_db_conn *writer;  /* guarded by write_mu */
    bool batch_open;            /* writer is inside BEGIN IMMEDIATE; guarded by write_mu */
    unsigned members;           /* members committed into the open batch; write_mu */
    unsigned members_avg16;     /* moving average of members per batch, x16; write_mu */
    atomic_llong commit_avg_ns; /* moving average of a batch's COMMIT (its fsync) */
    atomic_llong batch_t0;      /* monotonic ns when the open batch began */
    atomic_uint waiting;        /* threads queued on write_mu */
    atomic_uint pending;        /* transactions begun that have not run a statement yet */
    pthread_mutex_t commit_mu;  /* guards batch, done, done_rc */
    pthread_cond_t commit_cv;   /* broadcast when a batch ends */
    uint64_t batch;             /* id of the open (or next) batch, from 1 */
    uint64_t done;              /* id of the last batch that ended */
    int done_rc[GR_DB__BATCH_RING];
    struct gr_db_waiter *waiters; /* deferred members of the open batch; write_mu */
    /* The watchdog thread commits a batch with deferred members that nobody ends within
     * BATCH_WAIT_MS (the deferred members' threads are not waiting to do it). commit_mu. */
    pthread_t wd;
    pthread_cond_t wd_cv;
    bool wd_on, wd_stop, wd_armed;
    uint64_t wd_batch;
    struct gr_db_conn *conns; /* every thread's connection, for gr_db_close */
};

struct gr_db__stmt {
    uint64_t hash;
    char *sql; /* owned */
    sqlite3_stmt *st;
    uint64_t used; /* LRU tick */
};

struct gr_db__pgstmt {
    uint64_t hash;
    char *sql; /* owned */
    char name[24];
    uint64_t used; /* LRU tick */
};

struct gr_db_conn {
    struct gr_db *db;
    struct gr_db_conn *next;
    pthread_t owner;
    bool tx;          /* gr_db_begin succeeded and no commit/rollback since */
    bool holds_write; /* SQLite: this connection holds db->write_mu */
    bool lazy;        /* SQLite: transaction begun, write_mu not taken until its 1st statement */
    bool snap;        /* gr_db_read_begin succeeded and no gr_db_read_end since */
    struct gr_db_conn *via;    /* SQLite, in a transaction: the shared writer that runs it */
    int tx_err;                /* first error inside the open transaction, 0 if none */
    void (*on_commit)(void *); /* gr_db_on_commit hook of the open transaction */
    void *on_commit_arg;
    bool *committed; /* gr_db__flag_commit: set true when the open transaction commits */
    uint64_t rnd;    /* backoff jitter state */
    char errmsg[GR_DB_ERRMSG_MAX];
    char errcode[16]; /* SQLSTATE or SQLite extended code, for logs */
    /* SQLite */
    sqlite3 *lite;
    struct gr_db__stmt cache[GR_DB_STMT_CACHE];
    size_t ncache;
    uint64_t tick;
    /* PostgreSQL */
    PGconn *pg;
    struct gr_db__pgstmt pgcache[GR_DB_STMT_CACHE];
    size_t npgcache;
    uint64_t pgseq; /* names prepared statements "gr_<n>" */
};

struct gr_db_rows {
    size_t nrows, ncols;
    const char **colnames; /* ncols, arena */
    const char **cells;    /* nrows * ncols, arena; NULL is SQL NULL */
};

/*
 * Sets *@flag to true if and when the transaction open on @c commits (gr_db_commit returning
 * 0); a rollback or a failed commit leaves it alone. One flag per transaction; NULL clears it.
 * A deferred commit (gr_db_commit_deferred) does not set it.
 */
void gr_db__flag_commit(struct gr_db_conn *c, bool *flag);
/* The flag gr_db__flag_commit set on @c, or NULL. */
bool *gr_db__commit_flag(const struct gr_db_conn *c);

/* FNV-1a of the SQL text, the statement caches' key. */
uint64_t gr_db__hash(const char *s);
/* Sets c->errmsg / c->errcode (truncating). */
void gr_db__set_err(struct gr_db_conn *c, const char *code, const char *fmt, ...) GR_PRINTF(3, 4);

/*
 * Engine operations. run: one statement; rows into @a/@out when @out is non-NULL, changes into
 * @changes when non-NULL. script: several statements, no parameters (migrations). All return
 * 0 or a mapped GR_E* code with c->errmsg set.
 */
int gr_db__lite_open(struct gr_db_conn *c);
void gr_db__lite_close(struct gr_db_conn *c);
int gr_db__lite_run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                    const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
                    long long *changes);
int gr_db__lite_script(struct gr_db_conn *c, const char *sql);
int gr_db__lite_begin(struct gr_db_conn *c);
bool gr_db__lite_in_tx(const struct gr_db_conn *c);
/* Opens @path once to create it and switch it to WAL; message into @err. */
int gr_db__lite_prepare_file(const char *path, int busy_timeout_ms, char *err, size_t errlen);

int gr_db__pg_connect(struct gr_db_conn *c);
void gr_db__pg_close(struct gr_db_conn *c);
bool gr_db__pg_healthy(const struct gr_db_conn *c);
int gr_db__pg_run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                  const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
                  long long *changes);
int gr_db__pg_script(struct gr_db_conn *c, const char *sql);
bool gr_db__pg_in_tx(const struct gr_db_conn *c);
/* Validates a postgres:// URL; message into @err. */
int gr_db__pg_check_url(const char *url, char *err, size_t errlen);

#endif
