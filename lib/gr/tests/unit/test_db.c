/*
 * test_db.c - unit tests of gr_db against real engines: every test runs on a fresh SQLite file
 * and, when GR_TEST_PG_URL names a PostgreSQL server (scripts/pg.sh start), on a fresh
 * PostgreSQL database too (created per test with a unique name, dropped afterwards).
 *
 *   scripts/pg.sh start /tmp/pg && GR_TEST_PG_URL=$(cat /tmp/pg/url) ./test_db
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h> /* after setjmp.h, stdarg.h and stddef.h, which it needs */

#include "../../src/db_int.h"
#include "dbenv.h"
#include "gr/arena.h"
#include "gr/db.h"
#include "gr/log.h"

#define NTHREADS 50
#define NTX      20

/* ---- parameters and results ------------------------------------------------------------ */

static void test_params(void **state)
{
    struct env *e = *state;
    const char *quoted = "O'Reilly \"q\" ; DROP TABLE items; -- \\ %s";
    const char *uni = "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80";
    struct gr_db_val row1[] = { GR_DB_INT(1), GR_DB_TEXT(quoted), GR_DB_INT(9007199254740993LL),
                                GR_DB_NULL };
    struct gr_db_val row2[] = { GR_DB_INT(2), GR_DB_TEXT(uni), GR_DB_INT(-42),
                                GR_DB_TEXT((const char *)NULL) };
    struct gr_db_rows *r;
    long long changes = -1;

    exec_ok(e, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty BIGINT, note TEXT)");
    assert_int_equal(gr_db_exec(e->c,
                                "INSERT INTO items (id, name, qty, note) VALUES ($1, $2, $3, $4)",
                                row1, 4, &changes),
                     0);
    assert_int_equal(changes, 1);
    assert_int_equal(gr_db_exec(e->c,
                                "INSERT INTO items (id, name, qty, note) VALUES ($1, $2, $3, $4)",
                                row2, 4, NULL),
                     0);

    assert_int_equal(
        gr_db_query(e->c, &e->a, "SELECT id, name, qty, note FROM items ORDER BY id", NULL, 0, &r),
        0);
    assert_int_equal(gr_db_nrows(r), 2);
    assert_int_equal(gr_db_ncols(r), 4);
    assert_string_equal(gr_db_colname(r, 0), "id");
    assert_string_equal(gr_db_colname(r, 3), "note");
    assert_null(gr_db_colname(r, 4));
    assert_string_equal(gr_db_text(r, 0, 0), "1");
    assert_int_equal(gr_db_int(r, 0, 0), 1);
    assert_string_equal(gr_db_text(r, 0, 1), quoted);
    assert_string_equal(gr_db_text(r, 0, 2), "9007199254740993");
    assert_true(gr_db_int(r, 0, 2) == 9007199254740993LL);
    assert_true(gr_db_isnull(r, 0, 3));
    assert_null(gr_db_text(r, 0, 3));
    assert_int_equal(gr_db_int(r, 0, 3), 0);
    assert_false(gr_db_isnull(r, 0, 1));
    assert_string_equal(gr_db_text(r, 1, 1), uni);
    assert_int_equal(gr_db_int(r, 1, 2), -42);
    assert_true(gr_db_isnull(r, 1, 3));
    assert_null(gr_db_text(r, 2, 0));
    assert_true(gr_db_isnull(r, 0, 9));

    /* $1 used twice, for text and for integers. */
    struct gr_db_val p1[] = { GR_DB_TEXT(uni) };
    assert_int_equal(gr_db_query(e->c, &e->a,
                                 "SELECT id FROM items WHERE name = $1 OR note = $1 ORDER BY id",
                                 p1, 1, &r),
                     0);
    assert_int_equal(gr_db_nrows(r), 1);
    assert_int_equal(gr_db_int(r, 0, 0), 2);
    struct gr_db_val p2[] = { GR_DB_INT(-42), GR_DB_INT(1) };
    assert_int_equal(gr_db_query(e->c, &e->a,
                                 "SELECT id FROM items WHERE qty = $1 OR id = $2 OR id = $2 "
                                 "ORDER BY id",
                                 p2, 2, &r),
                     0);
    assert_int_equal(gr_db_nrows(r), 2);

    /* Booleans: PostgreSQL "t"/"f", SQLite 1/0. */
    assert_int_equal(
        gr_db_query(e->c, &e->a, "SELECT (qty > 0) AS pos FROM items ORDER BY id", NULL, 0, &r), 0);
    assert_string_equal(gr_db_colname(r, 0), "pos");
    assert_int_equal(gr_db_int(r, 0, 0), 1);
    assert_int_equal(gr_db_int(r, 1, 0), 0);

    /* Empty result keeps its columns. */
    assert_int_equal(
        gr_db_query(e->c, &e->a, "SELECT id, name FROM items WHERE id > $1", p2 + 1, 1, &r), 0);
    assert_int_equal(gr_db_nrows(r), 1);
    struct gr_db_val big[] = { GR_DB_INT(100) };
    assert_int_equal(
        gr_db_query(e->c, &e->a, "SELECT id, name FROM items WHERE id > $1", big, 1, &r), 0);
    assert_int_equal(gr_db_nrows(r), 0);
    assert_int_equal(gr_db_ncols(r), 2);
}

static void test_exec_changes(void **state)
{
    struct env *e = *state;
    struct gr_db_val one[] = { GR_DB_INT(5) };
    long long changes = -1;

    exec_ok(e, "CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
    exec_ok(e, "INSERT INTO c (id, n) VALUES (1, 0), (2, 0), (3, 7)");
    assert_int_equal(gr_db_exec(e->c, "UPDATE c SET n = n + $1 WHERE n = 0", one, 1, &changes), 0);
    assert_int_equal(changes, 2);
    assert_int_equal(gr_db_exec(e->c, "DELETE FROM c WHERE n > $1", one, 1, &changes), 0);
    assert_int_equal(changes, 1);
    assert_int_equal(gr_db_exec(e->c, "DELETE FROM c WHERE n > $1", one, 1, &changes), 0);
    assert_int_equal(changes, 0);
    assert_int_equal(count_rows(e, "SELECT SUM(n) FROM c"), 10);
}

static void test_bad_statements(void **state)
{
    struct env *e = *state;
    struct gr_db_val one[] = { GR_DB_INT(1) };
    struct gr_db_val weird[] = { { .type = 77 } };
    struct gr_db_rows *r = (struct gr_db_rows *)1;

    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT 1; SELECT 2", NULL, 0, &r), GR_EDB);
    assert_null(r);
    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT $1, $2", one, 1, &r), GR_EDB);
    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT 1", one, 1, &r), GR_EDB);
    assert_int_equal(gr_db_exec(e->c, "SELEC 1", NULL, 0, NULL), GR_EDB);
    assert_true(strlen(gr_db_errmsg(e->c)) > 0);
    assert_int_equal(gr_db_exec(e->c, "SELECT * FROM no_such_table", NULL, 0, NULL), GR_EDB);
    assert_int_equal(gr_db_exec(e->c, "SELECT 1 + $1", weird, 1, NULL), GR_EDB);
    assert_int_equal(gr_db_exec(e->c, "", NULL, 0, NULL), GR_EDB);
    /* The connection is still fine. */
    assert_int_equal(count_rows(e, "SELECT 41 + 1"), 42);
}

static void test_stmt_cache(void **state)
{
    struct env *e = *state;
    char sql[64];
    struct gr_db_rows *r;

    /* A cached statement survives a schema change that alters its result columns. */
    exec_ok(e, "CREATE TABLE sc (id INTEGER PRIMARY KEY)");
    exec_ok(e, "INSERT INTO sc (id) VALUES (1)");
    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT * FROM sc", NULL, 0, &r), 0);
    assert_int_equal(gr_db_ncols(r), 1);
    exec_ok(e, "ALTER TABLE sc ADD COLUMN extra TEXT");
    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT * FROM sc", NULL, 0, &r), 0);
    assert_int_equal(gr_db_ncols(r), 2);
    assert_string_equal(gr_db_colname(r, 1), "extra");

    /* Three times the cache size: evictions, then re-preparing evicted statements. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3 * GR_DB_STMT_CACHE; i++) {
            struct gr_db_val p[] = { GR_DB_INT(1000) };

            snprintf(sql, sizeof(sql), "SELECT %d + $1 AS v", i);
            assert_int_equal(gr_db_query(e->c, &e->a, sql, p, 1, &r), 0);
            assert_int_equal(gr_db_int(r, 0, 0), 1000 + i);
        }
    }
}

static void *conn_thread(void *arg)
{
    struct gr_db **db = arg;
    struct gr_db_conn *c;

    return gr_db_conn(*db, &c) == 0 ? c : NULL;
}

static void test_conn(void **state)
{
    struct env *e = *state;
    struct gr_db_conn *c1, *c2;
    pthread_t t;
    void *other;

    assert_int_equal(gr_db_ping(e->db), 0);
    assert_int_equal(gr_db_engine(e->db), e->engine);
    assert_int_equal(gr_db_conn(e->db, &c1), 0);
    assert_int_equal(gr_db_conn(e->db, &c2), 0);
    assert_ptr_equal(c1, c2);
    assert_ptr_equal(c1, e->c);
    assert_int_equal(pthread_create(&t, NULL, conn_thread, &e->db), 0);
    assert_int_equal(pthread_join(t, &other), 0);
    assert_non_null(other);
    assert_ptr_not_equal(other, c1);
}

/* ---- constraints ----------------------------------------------------------------------- */

static void test_constraints(void **state)
{
    struct env *e = *state;
    struct gr_db_val p1[] = { GR_DB_TEXT("p1"), GR_DB_TEXT("secret-mail-4711@x"), GR_DB_INT(30) };
    struct gr_db_val dup_pk[] = { GR_DB_TEXT("p1"), GR_DB_TEXT("other@x"), GR_DB_INT(30) };
    struct gr_db_val dup_mail[] = { GR_DB_TEXT("p2"), GR_DB_TEXT("secret-mail-4711@x"),
                                    GR_DB_INT(30) };
    struct gr_db_val null_mail[] = { GR_DB_TEXT("p3"), GR_DB_NULL, GR_DB_INT(30) };
    struct gr_db_val neg_age[] = { GR_DB_TEXT("p4"), GR_DB_TEXT("p4@x"), GR_DB_INT(-1) };
    struct gr_db_val orphan[] = { GR_DB_TEXT("c1"), GR_DB_TEXT("nobody") };
    struct gr_db_val child[] = { GR_DB_TEXT("c2"), GR_DB_TEXT("p1") };
    const char *ins = "INSERT INTO parents (id, email, age) VALUES ($1, $2, $3)";

    exec_ok(e, "CREATE TABLE parents (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
               "age INTEGER CHECK (age >= 0))");
    exec_ok(e, "CREATE TABLE children (id TEXT PRIMARY KEY, "
               "parent_id TEXT NOT NULL REFERENCES parents (id))");
    assert_int_equal(gr_db_exec(e->c, ins, p1, 3, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, ins, dup_pk, 3, NULL), GR_ECONFLICT);
    assert_int_equal(gr_db_exec(e->c, ins, dup_mail, 3, NULL), GR_ECONFLICT);
    assert_null(strstr(gr_db_errmsg(e->c), "secret-mail"));
    assert_true(strlen(gr_db_errmsg(e->c)) > 0);
    assert_int_equal(gr_db_exec(e->c, ins, null_mail, 3, NULL), GR_EVALID);
    assert_int_equal(gr_db_exec(e->c, ins, neg_age, 3, NULL), GR_EVALID);
    assert_int_equal(
        gr_db_exec(e->c, "INSERT INTO children (id, parent_id) VALUES ($1, $2)", orphan, 2, NULL),
        GR_ECONFLICT);
    assert_int_equal(
        gr_db_exec(e->c, "INSERT INTO children (id, parent_id) VALUES ($1, $2)", child, 2, NULL),
        0);
    /* Deleting a referenced parent is a conflict too. */
    assert_int_equal(gr_db_exec(e->c, "DELETE FROM parents WHERE id = $1", p1, 1, NULL),
                     GR_ECONFLICT);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM parents"), 1);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM children"), 1);
}

/* ---- transactions ---------------------------------------------------------------------- */

static void test_tx(void **state)
{
    struct env *e = *state;
    struct gr_db_val a[] = { GR_DB_TEXT("a") }, b[] = { GR_DB_TEXT("b") },
                     c[] = { GR_DB_TEXT("c") };
    const char *ins = "INSERT INTO t (k) VALUES ($1)";

    exec_ok(e, "CREATE TABLE t (k TEXT PRIMARY KEY)");
    assert_int_equal(gr_db_rollback(e->c), 0); /* nothing open: fine */
    assert_false(gr_db_in_tx(e->c));

    assert_int_equal(gr_db_begin(e->c), 0);
    assert_true(gr_db_in_tx(e->c));
    assert_int_equal(gr_db_exec(e->c, ins, a, 1, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, ins, b, 1, NULL), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM t"), 2);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM t"), 0);

    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_begin(e->c), GR_EINTERNAL);
    assert_true(gr_db_in_tx(e->c));
    assert_int_equal(gr_db_exec(e->c, ins, c, 1, NULL), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(gr_db_commit(e->c), GR_EINTERNAL);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM t"), 1);

    /* An error fails the whole transaction, on both engines. */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, a, 1, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, ins, c, 1, NULL), GR_ECONFLICT);
    assert_int_equal(gr_db_exec(e->c, ins, b, 1, NULL), GR_EDB);
    assert_true(gr_db_in_tx(e->c));
    assert_int_equal(gr_db_commit(e->c), GR_ECONFLICT);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM t"), 1);

    /* And the connection works normally afterwards. */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, a, 1, NULL), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM t"), 2);
}

/*
 * gr_db_begin_read_committed: on PostgreSQL each statement sees what others committed before
 * it ran, where gr_db_begin's SERIALIZABLE snapshot stays put; on SQLite it is a plain
 * transaction (writers are serialised).
 */
static void test_read_committed(void **state)
{
    struct env *e = *state;
    struct gr_db_opts opts = { .busy_timeout_ms = 5000 };
    const char *ins = "INSERT INTO rc (k) VALUES ($1)";
    struct gr_db_val x[] = { GR_DB_TEXT("x") };
    bool pg = gr_db_engine(e->db) == GR_DB_PG;
    struct gr_db *other;
    struct gr_db_conn *c2;
    char err[256];

    exec_ok(e, "CREATE TABLE rc (k TEXT PRIMARY KEY)");
    assert_int_equal(gr_db_open(e->url, &opts, &other, err, sizeof(err)), 0);
    assert_int_equal(gr_db_conn(other, &c2), 0); /* another connection, same thread */
    for (int serializable = 0; serializable < 2; serializable++) {
        struct gr_db_val k1 = GR_DB_TEXT(serializable ? "s1" : "r1");
        struct gr_db_val k2 = GR_DB_TEXT(serializable ? "s2" : "r2");
        long long before = serializable ? 2 : 0;

        assert_int_equal(serializable ? gr_db_begin(e->c) : gr_db_begin_read_committed(e->c), 0);
        assert_true(gr_db_in_tx(e->c));
        assert_int_equal(gr_db_exec(e->c, ins, &k1, 1, NULL), 0);
        assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rc"), before + 1);
        if (pg) {
            /* Committed by another connection while this transaction is open. */
            assert_int_equal(gr_db_exec(c2, ins, &k2, 1, NULL), 0);
            assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rc"),
                             serializable ? before + 1 : before + 2);
        }
        assert_int_equal(gr_db_commit(e->c), 0);
        assert_false(gr_db_in_tx(e->c));
        if (!pg)
            assert_int_equal(gr_db_exec(c2, ins, &k2, 1, NULL), 0);
        assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rc"), before + 2);
    }
    /* A rolled-back READ COMMITTED transaction leaves nothing. */
    assert_int_equal(gr_db_begin_read_committed(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, x, 1, NULL), 0);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rc"), 4);
    gr_db_close(other);
}

/* A read snapshot sees one moment: a write committed meanwhile shows only after it ends. */
static void test_read_snapshot(void **state)
{
    struct env *e = *state;
    struct gr_db_opts opts = { .busy_timeout_ms = 5000 };
    struct gr_db_val b[] = { GR_DB_TEXT("b") };
    struct gr_db *other;
    struct gr_db_conn *c2;
    char err[256];

    exec_ok(e, "CREATE TABLE snap (k TEXT PRIMARY KEY)");
    exec_ok(e, "INSERT INTO snap (k) VALUES ('a')");
    assert_int_equal(gr_db_open(e->url, &opts, &other, err, sizeof(err)), 0);
    assert_int_equal(gr_db_conn(other, &c2), 0);
    assert_int_equal(gr_db_read_begin(e->c), 0);
    assert_true(gr_db_in_read(e->c));
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM snap"), 1);
    /* Committed by another connection while the snapshot is open: not seen. */
    assert_int_equal(gr_db_exec(c2, "INSERT INTO snap (k) VALUES ($1)", b, 1, NULL), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM snap"), 1);
    /* No transaction or second snapshot inside, no write. */
    assert_int_equal(gr_db_begin(e->c), GR_EINTERNAL);
    assert_int_equal(gr_db_read_begin(e->c), GR_EINTERNAL);
    assert_true(gr_db_exec(e->c, "INSERT INTO snap (k) VALUES ('c')", NULL, 0, NULL) < 0);
    assert_int_equal(gr_db_read_end(e->c), 0);
    assert_false(gr_db_in_read(e->c));
    assert_int_equal(gr_db_read_end(e->c), 0); /* none open: nothing to do */
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM snap"), 2);
    /* The connection writes again as usual. */
    exec_ok(e, "INSERT INTO snap (k) VALUES ('c')");
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM snap"), 3);
    gr_db_close(other);
}

/* gr_db__flag_commit: the flag turns true only when the transaction commits. */
static void test_commit_flag(void **state)
{
    struct env *e = *state;
    bool flag = false;

    exec_ok(e, "CREATE TABLE cf (k TEXT PRIMARY KEY)");
    /* committed */
    assert_int_equal(gr_db_begin(e->c), 0);
    gr_db__flag_commit(e->c, &flag);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO cf (k) VALUES ('a')", NULL, 0, NULL), 0);
    assert_false(flag);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_true(flag);
    assert_null(gr_db__commit_flag(e->c));
    /* rolled back */
    flag = false;
    assert_int_equal(gr_db_begin(e->c), 0);
    gr_db__flag_commit(e->c, &flag);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO cf (k) VALUES ('b')", NULL, 0, NULL), 0);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_false(flag);
    assert_null(gr_db__commit_flag(e->c));
    /* a failed statement: the commit rolls back and fails */
    assert_int_equal(gr_db_begin(e->c), 0);
    gr_db__flag_commit(e->c, &flag);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO cf (k) VALUES ('a')", NULL, 0, NULL),
                     GR_ECONFLICT);
    assert_int_equal(gr_db_commit(e->c), GR_ECONFLICT);
    assert_false(flag);
    /* the next transaction does not inherit it */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO cf (k) VALUES ('c')", NULL, 0, NULL), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_false(flag);
}

/* Lock contention: SQLite waits for the busy timeout, PostgreSQL fails the later writer. */
static void test_busy(void **state)
{
    struct env *e = *state;
    struct gr_db_opts quick = { .busy_timeout_ms = 100 };
    struct gr_db_val x[] = { GR_DB_TEXT("x") };
    struct gr_db *other;
    struct gr_db_conn *c2;
    struct gr_db_rows *r;
    char err[256];

    exec_ok(e, "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)");
    exec_ok(e, "INSERT INTO kv (k, v) VALUES ('x', 1)");
    /* A second handle gives this thread a second connection. */
    assert_int_equal(gr_db_open(e->url, &quick, &other, err, sizeof(err)), 0);
    assert_int_equal(gr_db_conn(other, &c2), 0);
    assert_ptr_not_equal(c2, e->c);

    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT v FROM kv WHERE k = $1", x, 1, &r), 0);
    if (e->engine == GR_DB_SQLITE) {
        /* The first connection holds the write lock for longer than the 100 ms timeout. */
        assert_int_equal(gr_db_exec(c2, "UPDATE kv SET v = v + 1 WHERE k = $1", x, 1, NULL),
                         GR_EBUSY);
        /* A transaction takes the lock at its first statement, which reports the busy. */
        assert_int_equal(gr_db_begin(c2), 0);
        assert_int_equal(gr_db_exec(c2, "UPDATE kv SET v = v + 1 WHERE k = $1", x, 1, NULL),
                         GR_EBUSY);
        assert_true(gr_db_in_tx(c2));
        assert_int_equal(gr_db_commit(c2), GR_EBUSY);
        assert_false(gr_db_in_tx(c2));
        assert_int_equal(gr_db_exec(e->c, "UPDATE kv SET v = v + 10 WHERE k = $1", x, 1, NULL), 0);
        assert_int_equal(gr_db_commit(e->c), 0);
        assert_int_equal(count_rows(e, "SELECT v FROM kv"), 11);
    } else {
        /* The other connection commits first; the serializable transaction must not win. */
        assert_int_equal(gr_db_exec(c2, "UPDATE kv SET v = v + 1 WHERE k = $1", x, 1, NULL), 0);
        assert_int_equal(gr_db_exec(e->c, "UPDATE kv SET v = v + 10 WHERE k = $1", x, 1, NULL),
                         GR_EBUSY);
        assert_int_equal(gr_db_commit(e->c), GR_EBUSY);
        assert_false(gr_db_in_tx(e->c));
        assert_int_equal(count_rows(e, "SELECT v FROM kv"), 2);
    }
    /* Afterwards both connections work. */
    assert_int_equal(gr_db_begin(c2), 0);
    assert_int_equal(gr_db_exec(c2, "UPDATE kv SET v = 0 WHERE k = $1", x, 1, NULL), 0);
    assert_int_equal(gr_db_commit(c2), 0);
    assert_int_equal(count_rows(e, "SELECT v FROM kv"), 0);
    gr_db_close(other);
}

/* ---- migrations ------------------------------------------------------------------------ */

#define M1                                                                                         \
    "CREATE TABLE ma (id TEXT PRIMARY KEY);\nCREATE TABLE mb (id TEXT PRIMARY KEY, a_id TEXT "     \
    "REFERENCES ma (id));"
#define M2                                                                                         \
    "ALTER TABLE ma ADD COLUMN note TEXT;\nINSERT INTO ma (id, note) VALUES ('seed', 'it''s');"
#define M3 "CREATE TABLE md (id TEXT);\nINSERT INTO no_such_table (x) VALUES (1);"

static const struct gr_migration mig_all[] = {
    { "0001_init", M1, M1 },
    { "0002_note", M2, M2 },
    { NULL, NULL, NULL },
};
static const struct gr_migration mig_first[] = {
    { "0001_init", M1, M1 },
    { NULL, NULL, NULL },
};
static const struct gr_migration mig_bad[] = {
    { "0001_init", M1, M1 },
    { "0002_note", M2, M2 },
    { "0003_bad", M3, M3 },
    { NULL, NULL, NULL },
};
static const struct gr_migration mig_dup[] = {
    { "0001_init", M1, M1 },
    { "0001_init", M1, M1 },
    { NULL, NULL, NULL },
};
static const struct gr_migration mig_other[] = {
    { "0001_init", "CREATE TABLE other_t (id TEXT)", "CREATE TABLE other_t (id TEXT)" },
    { NULL, NULL, NULL },
};

static void test_migrations(void **state)
{
    struct env *e = *state;
    struct gr_db_rows *r;
    struct gr_db_val svc[] = { GR_DB_TEXT("svc") };
    const char *list = "SELECT name, applied_at FROM schema_migrations WHERE service = $1 "
                       "ORDER BY name";

    assert_int_equal(gr_db_migrate(e->db, "svc", mig_all), 0);
    assert_int_equal(gr_db_query(e->c, &e->a, list, svc, 1, &r), 0);
    assert_int_equal(gr_db_nrows(r), 2);
    assert_string_equal(gr_db_text(r, 0, 0), "0001_init");
    assert_string_equal(gr_db_text(r, 1, 0), "0002_note");
    assert_int_equal(strlen(gr_db_text(r, 0, 1)), 24); /* 2026-01-02T03:04:05.678Z */
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM ma WHERE note = 'it''s'"), 1);

    /* Re-running is a no-op: the seed row is not inserted twice. */
    assert_int_equal(gr_db_migrate(e->db, "svc", mig_all), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM ma"), 1);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM schema_migrations"), 2);

    /* The database knows 0002_note, this "build" does not: refuse. */
    assert_int_equal(gr_db_migrate(e->db, "svc", mig_first), GR_ECONFIG);
    assert_int_equal(gr_db_migrate(e->db, "svc", mig_dup), GR_ECONFIG);

    /* A failing migration leaves neither its record nor its table. */
    assert_int_equal(gr_db_migrate(e->db, "svc", mig_bad), GR_EDB);
    assert_int_equal(gr_db_query(e->c, &e->a, list, svc, 1, &r), 0);
    assert_int_equal(gr_db_nrows(r), 2);
    assert_int_equal(gr_db_exec(e->c, "SELECT COUNT(*) FROM md", NULL, 0, NULL), GR_EDB);
    assert_false(gr_db_in_tx(e->c));

    /* Services are independent; an empty list is fine. */
    assert_int_equal(gr_db_migrate(e->db, "other", mig_other), 0);
    assert_int_equal(gr_db_migrate(e->db, "empty", NULL), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM schema_migrations"), 3);
}

/* Two handles migrating the same database at once apply each migration once. */
struct mig_arg {
    const char *url;
    int rc;
};

static void *migrate_thread(void *p)
{
    struct mig_arg *m = p;
    struct gr_db *db = NULL;
    char err[256];

    m->rc = gr_db_open(m->url, NULL, &db, err, sizeof(err));
    if (m->rc == 0)
        m->rc = gr_db_migrate(db, "race", mig_all);
    gr_db_close(db);
    return NULL;
}

static void test_migrate_race(void **state)
{
    struct env *e = *state;
    struct mig_arg args[4];
    pthread_t t[4];

    for (int i = 0; i < 4; i++) {
        args[i].url = e->url;
        assert_int_equal(pthread_create(&t[i], NULL, migrate_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(args[i].rc, 0);
    }
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM schema_migrations"), 2);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM ma"), 1);
}

/* ---- URLs ------------------------------------------------------------------------------ */

static void test_bad_urls(void **state)
{
    static const struct {
        const char *url;
        const char *want;
    } cases[] = {
        { "", "DATABASE_URL: empty" },
        { "mysql://u@h/db", "unknown scheme 'mysql'" },
        { "/var/lib/x.db", "no scheme" },
        { "sqlite://", "sqlite path is empty" },
        { "sqlite:///", "sqlite path is empty" },
        { "sqlite:///tmp/x.db?mode=ro", "not supported" },
        { "sqlite://:memory:", "in-memory" },
        { "sqlite:///tmp/somedir/", "names a directory" },
        { "sqlite:///proc/no/such/x.db", "cannot create directory '/proc/no'" },
        { "sqlite:///proc/version", "sqlite database '/proc/version'" },
        { "postgres://u@h/db?nosuchoption=1", "invalid postgres URL" },
        { "postgresql://[::1/db", "invalid postgres URL" },
    };
    char longurl[PATH_MAX + 64];
    struct gr_db *db;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        db = (struct gr_db *)1;
        memset(err, 0, sizeof(err));
        assert_int_equal(gr_db_open(cases[i].url, NULL, &db, err, sizeof(err)), GR_ECONFIG);
        assert_null(db);
        if (!strstr(err, cases[i].want) || strncmp(err, "DATABASE_URL: ", 14) != 0)
            fail_msg("url '%s': message '%s' lacks '%s'", cases[i].url, err, cases[i].want);
    }
    assert_int_equal(gr_db_open(NULL, NULL, &db, err, sizeof(err)), GR_ECONFIG);
    assert_int_equal(gr_db_open("mysql://x", NULL, &db, NULL, 0), GR_ECONFIG);
    memcpy(longurl, "sqlite:///", 10);
    memset(longurl + 10, 'a', PATH_MAX + 10);
    longurl[PATH_MAX + 20] = '\0';
    assert_int_equal(gr_db_open(longurl, NULL, &db, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "too long") ? err : strstr(err, "longer"));
}

static void test_pg_lazy(void **state)
{
    struct gr_db *db = NULL;
    struct gr_db_conn *c = (struct gr_db_conn *)1;
    char err[256];

    (void)state;
    /* Port 1 on loopback: nothing listens. Opening works, using does not. */
    assert_int_equal(gr_db_open("postgres://postgres@127.0.0.1:1/x", NULL, &db, err, sizeof(err)),
                     0);
    assert_int_equal(gr_db_engine(db), GR_DB_PG);
    assert_int_equal(gr_db_ping(db), GR_EUNAVAIL);
    assert_int_equal(gr_db_conn(db, &c), GR_EUNAVAIL);
    assert_null(c);
    gr_db_close(db);
}

/* ---- concurrency ----------------------------------------------------------------------- */

struct conc {
    struct gr_db *db;
    pthread_barrier_t go;
    atomic_int errors;
    atomic_int ok;
    atomic_int conflicts;
    bool in_tx;
    int first_err;
};

struct conc_arg {
    struct conc *s;
    int n;
};

static void *tx_thread(void *argp)
{
    struct conc_arg *arg = argp;
    struct conc *s = arg->s;
    struct gr_db_conn *c;
    char key[32];

    pthread_barrier_wait(&s->go);
    if (gr_db_conn(s->db, &c) != 0) {
        atomic_fetch_add(&s->errors, NTX);
        return NULL;
    }
    for (int i = 0; i < NTX; i++) {
        struct gr_db_val p[] = { GR_DB_TEXT(key), GR_DB_INT(arg->n) };
        int rc;

        snprintf(key, sizeof(key), "t%d-%d", arg->n, i);
        rc = gr_db_begin(c);
        if (rc == 0)
            rc = gr_db_exec(c, "INSERT INTO rows_t (k, thread) VALUES ($1, $2)", p, 2, NULL);
        if (rc == 0)
            rc = gr_db_commit(c);
        if (rc != 0) {
            (void)gr_db_rollback(c);
            if (atomic_fetch_add(&s->errors, 1) == 0)
                s->first_err = rc;
        }
    }
    return NULL;
}

static void run_threads(struct conc *s, void *(*fn)(void *))
{
    struct conc_arg args[NTHREADS];
    pthread_t t[NTHREADS];

    assert_int_equal(pthread_barrier_init(&s->go, NULL, NTHREADS), 0);
    for (int i = 0; i < NTHREADS; i++) {
        args[i].s = s;
        args[i].n = i;
        assert_int_equal(pthread_create(&t[i], NULL, fn, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&s->go);
}

static void test_concurrent_tx(void **state)
{
    struct env *e = *state;
    struct gr_db_opts full = { .sqlite_sync_full = true, .busy_timeout_ms = 5000 };
    struct gr_db *dbfull;
    char err[256];

    exec_ok(e, "CREATE TABLE rows_t (k TEXT PRIMARY KEY, thread INTEGER NOT NULL)");
    /* Once with synchronous=NORMAL, once with FULL (a second handle on the same database). */
    assert_int_equal(gr_db_open(e->url, &full, &dbfull, err, sizeof(err)), 0);
    for (int round = 0; round < 2; round++) {
        struct conc s = { .db = round ? dbfull : e->db };

        assert_int_equal(gr_db_exec(e->c, "DELETE FROM rows_t", NULL, 0, NULL), 0);
        run_threads(&s, tx_thread);
        if (atomic_load(&s.errors) != 0)
            fail_msg("%d errors, first %s", atomic_load(&s.errors), gr_err_name(s.first_err));
        assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rows_t"), NTHREADS * NTX);
        assert_int_equal(count_rows(e, "SELECT COUNT(DISTINCT thread) FROM rows_t"), NTHREADS);
    }
    gr_db_close(dbfull);
}

static void *race_thread(void *p)
{
    struct conc_arg *arg = p;
    struct conc *s = arg->s;
    struct gr_db_val k[] = { GR_DB_TEXT(s->in_tx ? "the-key-tx" : "the-key") };
    struct gr_db_conn *c;
    int rc;

    /* Connect first so that the barrier releases everyone straight into the INSERT. */
    rc = gr_db_conn(s->db, &c);
    pthread_barrier_wait(&s->go);
    if (rc == 0 && s->in_tx)
        rc = gr_db_begin(c);
    if (rc == 0)
        rc = gr_db_exec(c, "INSERT INTO race (k) VALUES ($1)", k, 1, NULL);
    if (rc == 0 && s->in_tx)
        rc = gr_db_commit(c);
    if (rc != 0)
        (void)gr_db_rollback(c);
    if (rc == 0)
        atomic_fetch_add(&s->ok, 1);
    else if (rc == GR_ECONFLICT)
        atomic_fetch_add(&s->conflicts, 1);
    else if (atomic_fetch_add(&s->errors, 1) == 0)
        s->first_err = rc;
    return NULL;
}

static void test_unique_race(void **state)
{
    struct env *e = *state;

    exec_ok(e, "CREATE TABLE race (k TEXT PRIMARY KEY)");
    for (int tx = 0; tx < 2; tx++) {
        struct conc s = { .db = e->db, .in_tx = tx };

        run_threads(&s, race_thread);
        if (atomic_load(&s.errors) != 0)
            fail_msg("%d errors, first %s", atomic_load(&s.errors), gr_err_name(s.first_err));
        assert_int_equal(atomic_load(&s.ok), 1);
        assert_int_equal(atomic_load(&s.conflicts), NTHREADS - 1);
    }
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM race"), 2);
}

/*
 * Transactions committed concurrently (SQLite group commit): a successful gr_db_commit means
 * the row is already visible to another connection (the batch is committed, not just
 * queued); a failed member (unique violation) leaves nothing and does not harm the others.
 */
static void *group_thread(void *argp)
{
    struct conc_arg *arg = argp;
    struct conc *s = arg->s;
    struct gr_db_conn *c;
    struct gr_arena a = GR_ARENA_INIT;
    char key[32];

    pthread_barrier_wait(&s->go);
    if (gr_db_conn(s->db, &c) != 0) {
        atomic_fetch_add(&s->errors, NTX);
        return NULL;
    }
    for (int i = 0; i < NTX; i++) {
        bool collide = (arg->n + i) % 5 == 0;
        struct gr_db_val p[] = { GR_DB_TEXT(key) };
        struct gr_db_val taken[] = { GR_DB_TEXT("taken") };
        struct gr_db_rows *r = NULL;
        int rc;

        snprintf(key, sizeof(key), "g%d-%d", arg->n, i);
        rc = gr_db_begin(c);
        if (rc == 0)
            rc = gr_db_exec(c, "INSERT INTO gc (k) VALUES ($1)", p, 1, NULL);
        if (rc == 0 && collide)
            rc = gr_db_exec(c, "INSERT INTO gc (k) VALUES ($1)", taken, 1, NULL);
        if (rc == 0)
            rc = gr_db_commit(c);
        else
            (void)gr_db_rollback(c);
        if (rc == 0)
            atomic_fetch_add(&s->ok, 1);
        else if (rc == GR_ECONFLICT && collide)
            atomic_fetch_add(&s->conflicts, 1);
        else if (atomic_fetch_add(&s->errors, 1) == 0)
            s->first_err = rc;
        /* Outside any transaction, this thread's own connection must see exactly the outcome. */
        if (gr_db_query(c, &a, "SELECT COUNT(*) FROM gc WHERE k = $1", p, 1, &r) != 0 ||
            gr_db_int(r, 0, 0) != (rc == 0 ? 1 : 0)) {
            if (atomic_fetch_add(&s->errors, 1) == 0)
                s->first_err = GR_EINTERNAL;
        }
        gr_arena_release(&a);
    }
    return NULL;
}

static void test_group_commit(void **state)
{
    struct env *e = *state;
    struct conc s = { .db = e->db };
    long long expect_conflicts = 0;

    exec_ok(e, "CREATE TABLE gc (k TEXT PRIMARY KEY)");
    exec_ok(e, "INSERT INTO gc (k) VALUES ('taken')");
    for (int n = 0; n < NTHREADS; n++)
        for (int i = 0; i < NTX; i++)
            expect_conflicts += (n + i) % 5 == 0;
    run_threads(&s, group_thread);
    if (atomic_load(&s.errors) != 0)
        fail_msg("%d errors, first %s", atomic_load(&s.errors), gr_err_name(s.first_err));
    assert_int_equal(atomic_load(&s.conflicts), expect_conflicts);
    assert_int_equal(atomic_load(&s.ok), NTHREADS * NTX - expect_conflicts);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM gc"),
                     1 + NTHREADS * NTX - expect_conflicts);
}

/* ---- deferred commits ------------------------------------------------------------------ */

struct dwait {
    struct gr_db_waiter w;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int armed, done, hook_seen_at_done;
    int rc;
    atomic_int hooks;
};

static void dw_arm(void *arg)
{
    struct dwait *d = arg;

    pthread_mutex_lock(&d->mu);
    d->armed++;
    pthread_mutex_unlock(&d->mu);
}

static void dw_done(void *arg, int rc)
{
    struct dwait *d = arg;

    pthread_mutex_lock(&d->mu);
    d->done++;
    d->rc = rc;
    d->hook_seen_at_done = atomic_load(&d->hooks);
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void dw_hook(void *arg)
{
    struct dwait *d = arg;

    atomic_fetch_add(&d->hooks, 1);
}

static void dw_init(struct dwait *d)
{
    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->w = (struct gr_db_waiter){ .arm = dw_arm, .done = dw_done, .arg = d };
}

/* Waits (at most 5 s) until done was called; returns how often. */
static int dw_wait(struct dwait *d)
{
    struct timespec ts;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    pthread_mutex_lock(&d->mu);
    while (d->done == 0 && pthread_cond_timedwait(&d->cv, &d->mu, &ts) == 0) {
    }
    n = d->done;
    pthread_mutex_unlock(&d->mu);
    return n;
}

/* A transaction begun on another thread, holding the batch open until told to finish. */
struct holder {
    struct gr_db *db;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stage; /* 1: begun, 2: may finish */
    int rc;
};

static void *holder_main(void *arg)
{
    struct holder *h = arg;
    struct gr_db_conn *c;
    int rc = gr_db_conn(h->db, &c);

    if (rc == 0)
        rc = gr_db_begin(c);
    pthread_mutex_lock(&h->mu);
    h->stage = 1;
    pthread_cond_broadcast(&h->cv);
    while (h->stage < 2)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    if (rc == 0)
        rc = gr_db_exec(c, "INSERT INTO dc (k) VALUES ('holder')", NULL, 0, NULL);
    if (rc == 0)
        rc = gr_db_commit(c);
    h->rc = rc;
    return NULL;
}

/*
 * With another transaction begun (so the batch is not idle), a deferred commit returns at
 * once, arms, and is reported done within the batch wait even though nobody else ends the
 * batch; its on-commit hook runs before done, and the row is visible once done says 0.
 */
static void test_commit_deferred(void **state)
{
    struct env *e = *state;
    struct holder h = { .db = e->db };
    struct dwait d;
    pthread_t t;
    int rc;

    exec_ok(e, "CREATE TABLE dc (k TEXT PRIMARY KEY)");
    dw_init(&d);
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    assert_int_equal(pthread_create(&t, NULL, holder_main, &h), 0);
    pthread_mutex_lock(&h.mu);
    while (h.stage < 1)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);

    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO dc (k) VALUES ('mine')", NULL, 0, NULL), 0);
    gr_db_on_commit(e->c, dw_hook, &d);
    rc = gr_db_commit_deferred(e->c, &d.w);
    if (e->engine == GR_DB_PG) {
        /* PostgreSQL commits at once: the waiter is not used. */
        assert_int_equal(rc, 0);
        assert_int_equal(d.armed, 0);
        assert_int_equal(atomic_load(&d.hooks), 1);
    } else {
        assert_int_equal(rc, GR_DB_DEFERRED);
        assert_int_equal(d.armed, 1);
        assert_false(gr_db_in_tx(e->c));
        /* The holder has begun but not finished: the watchdog ends the batch. */
        assert_int_equal(dw_wait(&d), 1);
        assert_int_equal(d.rc, 0);
        assert_int_equal(d.hook_seen_at_done, 1);
    }
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM dc WHERE k = 'mine'"), 1);

    pthread_mutex_lock(&h.mu);
    h.stage = 2;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    pthread_join(t, NULL);
    assert_int_equal(h.rc, 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM dc"), 2);
    assert_int_equal(d.done, e->engine == GR_DB_PG ? 0 : 1);
}

/*
 * Alone, a deferred commit commits right away (nobody else can end the batch): 0, no arm.
 * A failed transaction is rolled back and gives its error; nothing is committed, no arm.
 */
static void test_commit_deferred_now(void **state)
{
    struct env *e = *state;
    struct dwait d;

    exec_ok(e, "CREATE TABLE dc (k TEXT PRIMARY KEY)");
    dw_init(&d);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO dc (k) VALUES ('a')", NULL, 0, NULL), 0);
    assert_int_equal(gr_db_commit_deferred(e->c, &d.w), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM dc"), 1);

    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO dc (k) VALUES ('b')", NULL, 0, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO dc (k) VALUES ('a')", NULL, 0, NULL),
                     GR_ECONFLICT);
    assert_int_equal(gr_db_commit_deferred(e->c, &d.w), GR_ECONFLICT);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM dc"), 1);

    /* A transaction without a statement. */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_commit_deferred(e->c, &d.w), 0);
    assert_int_equal(d.armed, 0);
    assert_int_equal(d.done, 0);
}

/* Many threads committing deferred and plain at once: every one is told once, rows all there. */
#define DEF_THREADS 8
#define DEF_TX      150

struct defrun {
    struct gr_db *db;
    atomic_int errors, told, deferred;
};

static void *deferred_thread(void *arg)
{
    struct defrun *r = arg;
    struct gr_db_conn *c;
    static atomic_int seq;

    if (gr_db_conn(r->db, &c) != 0) {
        atomic_fetch_add(&r->errors, 1);
        return NULL;
    }
    for (int i = 0; i < DEF_TX; i++) {
        struct dwait d;
        char k[32];
        int rc;

        dw_init(&d);
        snprintf(k, sizeof(k), "k%d", atomic_fetch_add(&seq, 1));
        rc = gr_db_begin(c);
        if (rc == 0)
            rc = gr_db_exec(c, "INSERT INTO dc (k) VALUES ($1)",
                            (struct gr_db_val[]){ GR_DB_TEXT(k) }, 1, NULL);
        if (rc == 0)
            rc = i % 3 == 0 ? gr_db_commit(c) : gr_db_commit_deferred(c, &d.w);
        else
            (void)gr_db_rollback(c);
        if (rc == GR_DB_DEFERRED) {
            atomic_fetch_add(&r->deferred, 1);
            if (dw_wait(&d) != 1 || d.rc != 0)
                rc = GR_EINTERNAL;
            else
                rc = 0;
        }
        if (rc == 0)
            atomic_fetch_add(&r->told, 1);
        else
            atomic_fetch_add(&r->errors, 1);
        pthread_mutex_destroy(&d.mu);
        pthread_cond_destroy(&d.cv);
    }
    return NULL;
}

static void test_commit_deferred_many(void **state)
{
    struct env *e = *state;
    struct defrun r = { .db = e->db };
    pthread_t t[DEF_THREADS];

    exec_ok(e, "CREATE TABLE dc (k TEXT PRIMARY KEY)");
    for (int i = 0; i < DEF_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, deferred_thread, &r), 0);
    for (int i = 0; i < DEF_THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&r.errors), 0);
    assert_int_equal(atomic_load(&r.told), DEF_THREADS * DEF_TX);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM dc"), DEF_THREADS * DEF_TX);
}

/* ---- savepoints ----------------------------------------------------------------------- */

/* A failed statement behind a savepoint is undone by rolling back to it; the rest commits. */
static void test_savepoint(void **state)
{
    struct env *e = *state;
    struct gr_db_val a[] = { GR_DB_TEXT("a") }, b[] = { GR_DB_TEXT("b") },
                     c[] = { GR_DB_TEXT("c") };
    const char *ins = "INSERT INTO sp (k) VALUES ($1)";

    exec_ok(e, "CREATE TABLE sp (k TEXT PRIMARY KEY)");
    assert_int_equal(gr_db_savepoint(e->c), GR_EINTERNAL); /* only inside a transaction */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, a, 1, NULL), 0);
    /* kept */
    assert_int_equal(gr_db_savepoint(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, b, 1, NULL), 0);
    assert_int_equal(gr_db_savepoint_release(e->c), 0);
    /* undone after a failure: the transaction is usable again */
    assert_int_equal(gr_db_savepoint(e->c), 0);
    assert_int_equal(gr_db_exec(e->c, ins, c, 1, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, ins, a, 1, NULL), GR_ECONFLICT);
    assert_int_equal(gr_db_exec(e->c, ins, c, 1, NULL), GR_EDB); /* failed until rolled back */
    assert_int_equal(gr_db_savepoint_rollback(e->c), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM sp"), 2);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM sp WHERE k = 'c'"), 0);
}

/* ---- a begun transaction that has not run a statement yet ------------------------------- */

static void *one_insert_thread(void *argp)
{
    struct conc *s = argp;
    struct gr_db_conn *c;
    int rc = gr_db_conn(s->db, &c);

    if (rc == 0)
        rc = gr_db_begin(c);
    if (rc == 0) {
        rc = gr_db_exec(c, "INSERT INTO it (k) VALUES ('other')", NULL, 0, NULL);
        if (rc == 0)
            rc = gr_db_commit(c);
        else
            (void)gr_db_rollback(c);
    }
    s->first_err = rc;
    return NULL;
}

/*
 * A transaction that is open but has not run a statement (a handler still validating its
 * input) neither blocks another writer nor holds back that writer's commit.
 */
static void test_idle_tx(void **state)
{
    struct env *e = *state;
    struct conc s = { .db = e->db, .first_err = 1 };
    struct timespec deadline;
    pthread_t t;

    exec_ok(e, "CREATE TABLE it (k TEXT PRIMARY KEY)");
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(pthread_create(&t, NULL, one_insert_thread, &s), 0);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    if (pthread_timedjoin_np(t, NULL, &deadline) != 0)
        fail_msg("the other writer did not finish while a transaction was open");
    assert_int_equal(s.first_err, 0);
    /* Committed and visible, also inside our transaction, which now joins and commits. */
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM it WHERE k = 'other'"), 1);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO it (k) VALUES ('mine')", NULL, 0, NULL), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM it"), 2);
    /* Begun and ended without a statement: nothing to do, no error. */
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_false(gr_db_in_tx(e->c));
}

/* ---- PostgreSQL connection loss -------------------------------------------------------- */

static long long backend_pid(struct env *e)
{
    return count_rows(e, "SELECT pg_backend_pid()");
}

static void kill_backend(struct env *e, long long pid)
{
    struct gr_db *other;
    struct gr_db_conn *c;
    struct gr_db_rows *r;
    struct gr_db_val p[] = { GR_DB_INT(pid) };
    char err[256];

    /* A second handle gives this thread a second connection to do the killing. */
    assert_int_equal(gr_db_open(e->url, NULL, &other, err, sizeof(err)), 0);
    assert_int_equal(gr_db_conn(other, &c), 0);
    assert_int_equal(gr_db_query(c, &e->a, "SELECT pg_terminate_backend($1, 5000)", p, 1, &r), 0);
    assert_int_equal(gr_db_int(r, 0, 0), 1);
    gr_db_close(other);
}

static void test_pg_reconnect(void **state)
{
    struct env *e = *state;
    struct gr_db_val v[] = { GR_DB_TEXT("x") };
    struct gr_db_conn *c;
    long long pid;

    if (e->engine != GR_DB_PG)
        skip();
    exec_ok(e, "CREATE TABLE rc (k TEXT PRIMARY KEY)");

    /* Outside a transaction the statement is retried on a new connection. */
    pid = backend_pid(e);
    kill_backend(e, pid);
    assert_int_equal(gr_db_exec(e->c, "INSERT INTO rc (k) VALUES ($1)", v, 1, NULL), 0);
    assert_true(backend_pid(e) != pid);

    /* Inside one it is not: the transaction is lost and reported. */
    pid = backend_pid(e);
    assert_int_equal(gr_db_begin(e->c), 0);
    kill_backend(e, pid);
    assert_int_equal(gr_db_exec(e->c, "DELETE FROM rc", NULL, 0, NULL), GR_EUNAVAIL);
    assert_true(gr_db_in_tx(e->c));
    /* The caller can still get its connection to roll back. */
    assert_int_equal(gr_db_conn(e->db, &c), 0);
    assert_ptr_equal(c, e->c);
    assert_int_equal(gr_db_exec(e->c, "DELETE FROM rc", NULL, 0, NULL), GR_EDB);
    assert_int_equal(gr_db_commit(e->c), GR_EUNAVAIL);
    assert_false(gr_db_in_tx(e->c));
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM rc"), 1);
}

#define TESTS(X)                                                                                   \
    X(test_params)                                                                                 \
    X(test_exec_changes)                                                                           \
    X(test_bad_statements)                                                                         \
    X(test_stmt_cache)                                                                             \
    X(test_conn)                                                                                   \
    X(test_constraints)                                                                            \
    X(test_tx)                                                                                     \
    X(test_read_committed)                                                                         \
    X(test_read_snapshot)                                                                          \
    X(test_commit_flag)                                                                            \
    X(test_busy)                                                                                   \
    X(test_migrations)                                                                             \
    X(test_migrate_race)                                                                           \
    X(test_concurrent_tx)                                                                          \
    X(test_unique_race)                                                                            \
    X(test_group_commit)                                                                           \
    X(test_idle_tx)                                                                                \
    X(test_savepoint)                                                                              \
    X(test_commit_deferred)                                                                        \
    X(test_commit_deferred_now)                                                                    \
    X(test_commit_deferred_many)                                                                   \
    X(test_pg_reconnect)

#define LITE_TEST(t) cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &engine_sqlite),
#define PG_TEST(t)   cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &engine_pg),

int main(void)
{
    const struct CMUnitTest common[] = {
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_pg_lazy),
    };
    const struct CMUnitTest lite[] = { TESTS(LITE_TEST) };
    const struct CMUnitTest pg[] = { TESTS(PG_TEST) };
    const char *lvl = getenv("GR_TEST_LOG");
    int failed = 0;

    gr_log_setup("test_db", lvl ? gr_log_level_parse(lvl) : GR_LOG_OFF, true);
    failed += cmocka_run_group_tests_name("db_common", common, NULL, NULL);
    failed += cmocka_run_group_tests_name("db_sqlite", lite, NULL, NULL);
    failed += run_pg_group("db_pg", pg, sizeof(pg) / sizeof(pg[0]));
    return failed ? 1 : 0;
}
