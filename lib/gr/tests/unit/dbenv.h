/*
 * dbenv.h - the per-test database of the db-backed unit tests (test_db.c, test_bus.c): a fresh
 * SQLite file in a temporary directory, or a fresh PostgreSQL database on GR_TEST_PG_URL
 * created per test with a unique name and dropped afterwards. Included by one test file each;
 * include it after cmocka.h.
 */
#ifndef GR_TEST_DBENV_H
#define GR_TEST_DBENV_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gr/db.h"

struct env {
    int engine;
    char url[600];
    char dir[128];   /* SQLite: temporary directory */
    char dbname[64]; /* PostgreSQL: the per-test database */
    struct gr_db *db;
    struct gr_db_conn *c;
    struct gr_arena a;
};

static int engine_sqlite = GR_DB_SQLITE;
static int engine_pg = GR_DB_PG;
static const char *pg_base;    /* GR_TEST_PG_URL */
static struct gr_db *pg_admin; /* connection to pg_base, for CREATE/DROP DATABASE */
static int pg_seq;

/* pg_base with its database name replaced by @name. */
static void pg_url_for(const char *name, char *out, size_t n)
{
    const char *hostpart = strstr(pg_base, "://");
    const char *slash, *query;

    hostpart = hostpart ? hostpart + 3 : pg_base;
    slash = strchr(hostpart, '/');
    query = strchr(hostpart, '?');
    if (!slash || (query && slash > query))
        slash = query ? query : hostpart + strlen(hostpart);
    snprintf(out, n, "%.*s/%s%s", (int)(slash - pg_base), pg_base, name, query ? query : "");
}

static int admin_exec(const char *sql)
{
    struct gr_db_conn *c;
    int rc = gr_db_conn(pg_admin, &c);

    if (rc == 0)
        rc = gr_db_exec(c, sql, NULL, 0, NULL);
    return rc;
}

static int setup(void **state)
{
    struct env *e = gr_xcalloc(1, sizeof(*e));
    char err[256];

    e->engine = *(int *)*state;
    gr_arena_init(&e->a);
    if (e->engine == GR_DB_SQLITE) {
        snprintf(e->dir, sizeof(e->dir), "/tmp/gr_test_db_XXXXXX");
        if (!mkdtemp(e->dir))
            return -1;
        /* sub/ does not exist yet: gr_db_open must create it. */
        snprintf(e->url, sizeof(e->url), "sqlite://%s/sub/t.db", e->dir);
    } else {
        char sql[128];

        snprintf(e->dbname, sizeof(e->dbname), "grt_%d_%d", (int)getpid(), ++pg_seq);
        /* Identifiers cannot be bound; this name is made here from digits only. */
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", e->dbname);
        if (admin_exec(sql) != 0)
            return -1;
        pg_url_for(e->dbname, e->url, sizeof(e->url));
    }
    if (gr_db_open(e->url, NULL, &e->db, err, sizeof(err)) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    if (gr_db_conn(e->db, &e->c) != 0)
        return -1;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    char path[300];

    gr_db_close(e->db);
    gr_arena_release(&e->a);
    if (e->engine == GR_DB_SQLITE) {
        static const char *const files[] = { "sub/t.db", "sub/t.db-wal", "sub/t.db-shm" };

        for (size_t i = 0; i < 3; i++) {
            snprintf(path, sizeof(path), "%s/%s", e->dir, files[i]);
            unlink(path);
        }
        snprintf(path, sizeof(path), "%s/sub", e->dir);
        rmdir(path);
        rmdir(e->dir);
    } else {
        char sql[128];

        snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", e->dbname);
        if (admin_exec(sql) != 0)
            fprintf(stderr, "teardown: cannot drop %s\n", e->dbname);
    }
    gr_free(e);
    return 0;
}

static inline void exec_ok(struct env *e, const char *sql)
{
    int rc = gr_db_exec(e->c, sql, NULL, 0, NULL);

    if (rc != 0)
        fprintf(stderr, "exec_ok: %s: %s\n", sql, gr_db_errmsg(e->c));
    assert_int_equal(rc, 0);
}

static inline long long count_rows(struct env *e, const char *sql)
{
    struct gr_db_rows *r;

    assert_int_equal(gr_db_query(e->c, &e->a, sql, NULL, 0, &r), 0);
    assert_int_equal(gr_db_nrows(r), 1);
    return gr_db_int(r, 0, 0);
}

/* Runs @group on PostgreSQL when GR_TEST_PG_URL is set; the number of failures. */
static int run_pg_group(const char *name, const struct CMUnitTest *tests, size_t n)
{
    char err[256];
    int failed;

    pg_base = getenv("GR_TEST_PG_URL");
    if (!pg_base || !*pg_base) {
        fprintf(stderr, "GR_TEST_PG_URL not set: PostgreSQL tests skipped\n");
        return 0;
    }
    if (gr_db_open(pg_base, NULL, &pg_admin, err, sizeof(err)) != 0 || gr_db_ping(pg_admin) != 0) {
        fprintf(stderr, "GR_TEST_PG_URL unusable: %s\n", err);
        return 1;
    }
    failed = _cmocka_run_group_tests(name, tests, n, NULL, NULL);
    gr_db_close(pg_admin);
    return failed;
}

#endif
