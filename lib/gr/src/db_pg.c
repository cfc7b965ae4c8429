/*
 * db_pg.c - the PostgreSQL engine of gr_db, over libpq. Each thread's connection is made
 * lazily from the DATABASE_URL (libpq URI) with a connect timeout and UTF-8 client encoding.
 * Statements run through PQexecParams with text parameters, so `$1…$n` are PostgreSQL's own
 * placeholders and the server infers their types; results are copied into the caller's arena
 * and the PGresult is cleared before returning. SQLSTATEs are mapped to GR_E* codes here; the
 * error text kept for logs is the primary message only, never DETAIL (which quotes row values),
 * and a generic text for data exceptions (class 22), whose messages quote the bad input.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_int.h"
#include "gr/log.h"

int gr_db__pg_check_url(const char *url, char *err, size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &msg);

    if (o) {
        int rc = 0;

        /* libpq only checks the port when it connects; a typo must stop start-up instead. */
        for (PQconninfoOption *opt = o; opt->keyword && rc == 0; opt++) {
            const char *v = opt->val;
            bool ok = true;
            long port = 0;

            if (!v || strcmp(opt->keyword, "port") != 0)
                continue;
            for (const char *q = v; *q && ok; q++) {
                ok = *q >= '0' && *q <= '9' && q - v < 5;
                port = port * 10 + (*q - '0');
            }
            if (!ok || !*v || port < 1 || port > 65535) {
                snprintf(err, errlen, "DATABASE_URL: port must be a number in 1..65535");
                rc = GR_ECONFIG;
            }
        }
        PQconninfoFree(o);
        return rc;
    }
    snprintf(err, errlen, "DATABASE_URL: invalid postgres URL: %.*s",
             msg ? (int)strcspn(msg, "\n") : 13, msg ? msg : "out of memory");
    PQfreemem(msg);
    return GR_ECONFIG;
}

/* libpq prints NOTICEs (e.g. "relation already exists, skipping") to stderr by default. */
static void on_notice(void *arg, const char *message)
{
    (void)arg;
    gr_log_debug("db notice", "message", message);
}

int gr_db__pg_connect(struct gr_db_conn *c)
{
    /* URL values override these defaults: keywords before "dbname" are overridden by it. */
    static const char *const keys[] = { "connect_timeout", "client_encoding", "dbname", NULL };
    const char *vals[] = { "5", "UTF8", c->db->target, NULL };
    PGconn *pg;

    gr_db__pg_close(c);
    pg = PQconnectdbParams(keys, vals, 1);
    if (!pg) {
        gr_db__set_err(c, "connect", "out of memory");
        return GR_EUNAVAIL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        const char *m = PQerrorMessage(pg);

        gr_db__set_err(c, "connect", "%.*s", (int)strcspn(m, "\n"), m);
        PQfinish(pg);
        return GR_EUNAVAIL;
    }
    PQsetNoticeProcessor(pg, on_notice, NULL);
    c->pg = pg;
    return 0;
}

/* Forgets the cached statements (the server drops them with its session). */
static void cache_clear(struct gr_db_conn *c)
{
    for (size_t i = 0; i < c->npgcache; i++)
        gr_free(c->pgcache[i].sql);
    c->npgcache = 0;
}

void gr_db__pg_close(struct gr_db_conn *c)
{
    cache_clear(c);
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
}

bool gr_db__pg_healthy(const struct gr_db_conn *c)
{
    return c->pg && PQstatus(c->pg) == CONNECTION_OK;
}

bool gr_db__pg_in_tx(const struct gr_db_conn *c)
{
    PGTransactionStatusType t = c->pg ? PQtransactionStatus(c->pg) : PQTRANS_UNKNOWN;

    return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

static int map_state(const char *s)
{
    static const struct {
        const char *state;
        int code;
    } map[] = {
        { "23505", GR_ECONFLICT }, { "23503", GR_ECONFLICT }, { "23514", GR_EVALID },
        { "23502", GR_EVALID },    { "40001", GR_EBUSY },     { "40P01", GR_EBUSY },
        { "55P03", GR_EBUSY },     { "57P01", GR_EUNAVAIL },  { "57P02", GR_EUNAVAIL },
        { "57P03", GR_EUNAVAIL },  { "08P01", GR_EDB }, /* protocol violation: wrong parameter count
                                                         */
    };

    if (!s)
        return GR_EDB;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcmp(s, map[i].state) == 0)
            return map[i].code;
    }
    if (strncmp(s, "08", 2) == 0)
        return GR_EUNAVAIL;
    return GR_EDB;
}

/* Records the error of @res (NULL: the connection's) and returns its GR_E* code. */
static int pg_err(struct gr_db_conn *c, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (!state) {
        /* No SQLSTATE: libpq's own failure, usually a lost connection. */
        const char *m = res ? PQresultErrorMessage(res) : "";

        if (!*m)
            m = c->pg ? PQerrorMessage(c->pg) : "no connection";
        gr_db__set_err(c, "libpq", "%.*s", (int)strcspn(m, "\n"), m);
        return gr_db__pg_healthy(c) ? GR_EDB : GR_EUNAVAIL;
    }
    if (strncmp(state, "22", 2) == 0)
        gr_db__set_err(c, state, "invalid input value (data exception %s)", state);
    else
        gr_db__set_err(c, state, "%s", primary ? primary : "error");
    return map_state(state);
}

static int copy_rows(struct gr_db_conn *c, struct gr_arena *a, const PGresult *res,
                     struct gr_db_rows **out)
{
    struct gr_db_rows *r;
    int nrows = PQntuples(res), ncols = PQnfields(res);
    size_t ncells;

    if (nrows > GR_DB_MAX_ROWS) {
        gr_db__set_err(c, "rows", "result has more than %d rows", GR_DB_MAX_ROWS);
        return GR_ETOOBIG;
    }
    r = gr_arena_calloc(a, sizeof(*r));
    r->nrows = (size_t)nrows;
    r->ncols = (size_t)ncols;
    r->colnames = gr_arena_calloc(a, (r->ncols ? r->ncols : 1) * sizeof(char *));
    for (int j = 0; j < ncols; j++)
        r->colnames[j] = gr_arena_strdup(a, PQfname(res, j));
    ncells = r->nrows * r->ncols;
    r->cells = gr_arena_calloc(a, (ncells > 0 ? ncells : 1) * sizeof(char *));
    for (int i = 0; i < nrows; i++) {
        for (int j = 0; j < ncols; j++) {
            if (PQgetisnull(res, i, j))
                continue;
            r->cells[(size_t)i * r->ncols + (size_t)j] =
                gr_arena_strndup(a, PQgetvalue(res, i, j), (size_t)PQgetlength(res, i, j));
        }
    }
    *out = r;
    return 0;
}

static int take_result(struct gr_db_conn *c, struct gr_arena *a, PGresult *res,
                       struct gr_db_rows **out, long long *changes)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int rc;

    if (st == PGRES_EMPTY_QUERY) {
        gr_db__set_err(c, "empty", "empty statement");
        return GR_EDB;
    }
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        return pg_err(c, res);
    if (out) {
        rc = copy_rows(c, a, res, out);
        if (rc < 0)
            return rc;
    }
    if (changes) {
        const char *n = PQcmdTuples(res);

        *changes = *n ? strtoll(n, NULL, 10) : 0;
    }
    return 0;
}

static void cache_drop(struct gr_db_conn *c, struct gr_db__pgstmt *e, bool deallocate)
{
    if (deallocate) {
        /* The name is ours ("gr_<n>"), not data: DEALLOCATE takes no parameters. */
        char cmd[48];
        PGresult *res;

        snprintf(cmd, sizeof(cmd), "DEALLOCATE %s", e->name);
        res = PQexec(c->pg, cmd);
        PQclear(res);
    }
    gr_free(e->sql);
    *e = c->pgcache[--c->npgcache];
}

/*
 * The name of the server-side prepared statement for @sql, preparing it on a miss and evicting
 * the least recently used one when the cache is full.
 */
static int stmt_get(struct gr_db_conn *c, const char *sql, size_t nparams, const char **name)
{
    uint64_t hash = gr_db__hash(sql);
    struct gr_db__pgstmt *e;
    PGresult *res;
    char fresh[24];
    int rc;

    for (size_t i = 0; i < c->npgcache; i++) {
        e = &c->pgcache[i];
        if (e->hash == hash && strcmp(e->sql, sql) == 0) {
            e->used = ++c->tick;
            *name = e->name;
            return 0;
        }
    }
    snprintf(fresh, sizeof(fresh), "gr_%llu", (unsigned long long)++c->pgseq);
    res = PQprepare(c->pg, fresh, sql, (int)nparams, NULL);
    rc = take_result(c, NULL, res, NULL, NULL);
    PQclear(res);
    if (rc < 0)
        return rc;
    if (c->npgcache == GR_DB_STMT_CACHE) {
        e = &c->pgcache[0];
        for (size_t i = 1; i < c->npgcache; i++) {
            if (c->pgcache[i].used < e->used)
                e = &c->pgcache[i];
        }
        cache_drop(c, e, !gr_db__pg_in_tx(c) || PQtransactionStatus(c->pg) == PQTRANS_INTRANS);
    }
    e = &c->pgcache[c->npgcache++];
    e->hash = hash;
    e->sql = gr_xstrdup(sql);
    memcpy(e->name, fresh, sizeof(fresh));
    e->used = ++c->tick;
    *name = e->name;
    return 0;
}

/* True when @sql's cached statement went stale: a schema change altered its result type. */
static bool stale_plan(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return state && (strcmp(state, "0A000") == 0 || strcmp(state, "26000") == 0);
}

int gr_db__pg_run(struct gr_db_conn *c, struct gr_arena *a, const char *sql,
                  const struct gr_db_val *params, size_t nparams, struct gr_db_rows **out,
                  long long *changes)
{
    const char *vals[GR_DB_MAX_PARAMS];
    char ints[GR_DB_MAX_PARAMS][24];
    PGresult *res;
    int rc;

    for (size_t i = 0; i < nparams; i++) {
        const struct gr_db_val *v = &params[i];

        if (v->type == GR_DB_VTEXT) {
            vals[i] = v->s;
        } else if (v->type == GR_DB_VINT) {
            snprintf(ints[i], sizeof(ints[i]), "%lld", v->i);
            vals[i] = ints[i];
        } else if (v->type == GR_DB_VNULL) {
            vals[i] = NULL;
        } else {
            gr_db__set_err(c, "param", "parameter $%zu has an unknown type %d", i + 1, v->type);
            return GR_EDB;
        }
    }
    for (int attempt = 0;; attempt++) {
        const char *name;
        bool in_tx = gr_db__pg_in_tx(c);

        rc = stmt_get(c, sql, nparams, &name);
        if (rc < 0)
            return rc;
        res = PQexecPrepared(c->pg, name, (int)nparams, nparams ? vals : NULL, NULL, NULL, 0);
        if (attempt == 0 && !in_tx && PQresultStatus(res) == PGRES_FATAL_ERROR && stale_plan(res)) {
            /*
             * "cached plan must not change result type" after DDL, or the statement vanished
             * (DISCARD ALL): prepare again and retry once. Inside a transaction the error has
             * already failed it, so it is reported instead.
             */
            PQclear(res);
            for (size_t i = 0; i < c->npgcache; i++) {
                if (strcmp(c->pgcache[i].name, name) == 0) {
                    cache_drop(c, &c->pgcache[i], true);
                    break;
                }
            }
            continue;
        }
        break;
    }
    rc = take_result(c, a, res, out, changes);
    PQclear(res);
    return rc;
}

int gr_db__pg_script(struct gr_db_conn *c, const char *sql)
{
    PGresult *res = PQexec(c->pg, sql);
    int rc = take_result(c, NULL, res, NULL, NULL);

    PQclear(res);
    return rc;
}
