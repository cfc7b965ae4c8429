/*
 * test_idem.c - unit tests of the Idempotency-Key store (idem.c) against real engines: every
 * test runs on a fresh SQLite file and, when GR_TEST_PG_URL names a PostgreSQL server
 * (scripts/pg.sh start), on a fresh PostgreSQL database too (created per test, dropped after).
 *
 *   scripts/pg.sh start /tmp/pg && GR_TEST_PG_URL=$(cat /tmp/pg/url) ./test_idem
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h> /* after setjmp.h, stdarg.h and stddef.h, which it needs */

#include "../../src/idem_int.h"
#include "dbenv.h"
#include "gr/arena.h"
#include "gr/db.h"
#include "gr/log.h"
#include "gr/time.h"

#define NTHREADS 50
#define T0       1700000000000LL /* a fixed library time, ms */
#define H1       "1111111111111111111111111111111111111111111111111111111111111111"
#define H2       "2222222222222222222222222222222222222222222222222222222222222222"
#define LEASE    600 /* GR_IDEM_LEASE_MS of the lease tests, ms (renewed every 200 ms) */

/* The per-test database of dbenv.h, with the idempotency table migrated. */
static int setup_idem(void **state)
{
    struct env *e;

    if (setup(state) != 0)
        return -1;
    e = *state;
    return gr_db_migrate(e->db, "gr.idem", gr_idem_migrations) == 0 ? 0 : -1;
}

static int reserve(struct env *e, const char *caller, const char *key, const char *hash,
                   const char *owner, long long now, struct gr_idem_resp *r)
{
    int outcome = -1;

    assert_int_equal(gr_idem__reserve(e->c, &e->a, caller, "POST", "/api/v1/things", key, hash,
                                      owner, now, &outcome, r),
                     0);
    return outcome;
}

static long long key_rows(struct env *e)
{
    struct gr_db_rows *r;

    assert_int_equal(gr_db_query(e->c, &e->a, "SELECT COUNT(*) FROM idempotency_keys", NULL, 0, &r),
                     0);
    return gr_db_int(r, 0, 0);
}

static const struct gr_idem_resp created = {
    .status = 201,
    .content_type = "application/json",
    .headers = "[[\"Location\",\"/api/v1/things/1\"]]",
    .body = "{\"id\":\"1\",\"name\":\"caf\xc3\xa9\"}",
};

/* Reserve, complete, then the same body replays and a different body is a reuse. */
static void test_replay_and_reuse(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;

    assert_int_equal(reserve(e, "u1", "k", H1, "o1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(reserve(e, "u1", "k", H1, "o2", T0 + 10, &r), GR_IDEM_IN_FLIGHT);
    assert_int_equal(gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "k", "o1", &created),
                     0);
    assert_int_equal(reserve(e, "u1", "k", H1, "o3", T0 + 20, &r), GR_IDEM_REPLAY);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.content_type, "application/json");
    assert_string_equal(r.headers, created.headers);
    assert_string_equal(r.body, created.body);
    assert_int_equal(reserve(e, "u1", "k", H2, "o4", T0 + 30, &r), GR_IDEM_REUSE);
    /* Completing twice, or by a non-owner, is refused. */
    assert_int_equal(gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "k", "o1", &created),
                     GR_ECONFLICT);
    assert_int_equal(key_rows(e), 1);
}

/* The scope is (caller, method, path, key). */
static void test_scope(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;
    int outcome = -1;

    assert_int_equal(reserve(e, "u1", "k", H1, "o1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(reserve(e, "u2", "k", H2, "o2", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(reserve(e, "u1", "k2", H1, "o3", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(gr_idem__reserve(e->c, &e->a, "u1", "POST", "/api/v1/other", "k", H1, "o4", T0,
                                      &outcome, &r),
                     0);
    assert_int_equal(outcome, GR_IDEM_OWNED);
    assert_int_equal(gr_idem__reserve(e->c, &e->a, "u1", "PUT", "/api/v1/things", "k", H1, "o5", T0,
                                      &outcome, &r),
                     0);
    assert_int_equal(outcome, GR_IDEM_OWNED);
    assert_int_equal(key_rows(e), 5);
}

/* Release frees the key (a 4xx keeps nothing), but only the owner's own reservation. */
static void test_release(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;

    assert_int_equal(reserve(e, "u1", "k", H1, "o1", T0, &r), GR_IDEM_OWNED);
    gr_idem__release(e->c, "u1", "POST", "/api/v1/things", "k", "someone-else");
    assert_int_equal(key_rows(e), 1);
    gr_idem__release(e->c, "u1", "POST", "/api/v1/things", "k", "o1");
    assert_int_equal(key_rows(e), 0);
    /* A different body may now use the key. */
    assert_int_equal(reserve(e, "u1", "k", H2, "o2", T0 + 1, &r), GR_IDEM_OWNED);
}

/* Done rows expire after 24 h; pending rows are abandoned after a minute. */
static void test_expiry_and_abandon(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;
    long long deleted = -1;

    assert_int_equal(reserve(e, "u1", "done", H1, "o1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(
        gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "done", "o1", &created), 0);
    assert_int_equal(reserve(e, "u1", "done", H1, "o2", T0 + GR_IDEM_TTL_MS - 1, &r),
                     GR_IDEM_REPLAY);
    assert_int_equal(reserve(e, "u1", "done", H2, "o3", T0 + GR_IDEM_TTL_MS, &r), GR_IDEM_OWNED);

    assert_int_equal(reserve(e, "u1", "pend", H1, "p1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(reserve(e, "u1", "pend", H1, "p2", T0 + GR_IDEM_ABANDON_MS - 1, &r),
                     GR_IDEM_IN_FLIGHT);
    assert_int_equal(reserve(e, "u1", "pend", H1, "p3", T0 + GR_IDEM_ABANDON_MS, &r),
                     GR_IDEM_OWNED);
    /* The first owner, back from the dead, can no longer complete or release it. */
    assert_int_equal(
        gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "pend", "p1", &created),
        GR_ECONFLICT);
    gr_idem__release(e->c, "u1", "POST", "/api/v1/things", "pend", "p1");
    assert_int_equal(
        gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "pend", "p3", &created), 0);

    /* Purge deletes only expired rows, at most max per call. */
    assert_int_equal(reserve(e, "u2", "a", H1, "q1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(reserve(e, "u2", "b", H1, "q2", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(key_rows(e), 4);
    assert_int_equal(gr_idem__purge(e->c, T0 + GR_IDEM_TTL_MS - 1, 100, &deleted), 0);
    assert_int_equal(deleted, 0);
    assert_int_equal(gr_idem__purge(e->c, T0 + GR_IDEM_TTL_MS + GR_IDEM_ABANDON_MS, 1, &deleted),
                     0);
    assert_int_equal(deleted, 1);
    assert_int_equal(gr_idem__purge(e->c, T0 + GR_IDEM_TTL_MS + GR_IDEM_ABANDON_MS, 100, &deleted),
                     0);
    assert_int_equal(deleted, 2);
    assert_int_equal(key_rows(e), 1); /* "done" renewed at T0 + 24 h */
}

/* The lease tests run with the process's renewal thread on the test database. */
static int setup_lease(void **state)
{
    struct env *e;

    if (setup_idem(state) != 0)
        return -1;
    e = *state;
    return gr_idem__lease_start(e->db) == 0 && gr_idem__lease_ms() == LEASE ? 0 : -1;
}

static int teardown_lease(void **state)
{
    gr_idem__lease_stop();
    return teardown(state);
}

static long long lease_of(struct env *e, const char *key)
{
    struct gr_db_val p[1] = { GR_DB_TEXT(key) };
    struct gr_db_rows *r;

    assert_int_equal(gr_db_query(e->c, &e->a,
                                 "SELECT lease_until FROM idempotency_keys WHERE idem_key = $1", p,
                                 1, &r),
                     0);
    assert_int_equal(gr_db_nrows(r), 1);
    return gr_db_isnull(r, 0, 0) ? -1 : gr_db_int(r, 0, 0);
}

/* A pending row whose lease ran out (its owner died) is taken over at once, not after 60 s. */
static void test_lease_dead_owner(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;
    const char *owners[20];
    char names[20][16];

    assert_int_equal(reserve(e, "u1", "k", H1, "o1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(lease_of(e, "k"), T0 + LEASE);
    assert_int_equal(reserve(e, "u1", "k", H1, "o2", T0 + LEASE - 1, &r), GR_IDEM_IN_FLIGHT);
    assert_int_equal(reserve(e, "u1", "k", H1, "o3", T0 + LEASE, &r), GR_IDEM_OWNED);
    assert_int_equal(gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "k", "o1", &created),
                     GR_ECONFLICT);
    /* A row written without a lease (before the column existed) keeps the 60 s rule. */
    exec_ok(e, "UPDATE idempotency_keys SET lease_until = NULL");
    assert_int_equal(reserve(e, "u1", "k", H1, "o4", T0 + LEASE + GR_IDEM_ABANDON_MS - 1, &r),
                     GR_IDEM_IN_FLIGHT);
    assert_int_equal(reserve(e, "u1", "k", H1, "o5", T0 + LEASE + GR_IDEM_ABANDON_MS, &r),
                     GR_IDEM_OWNED);
    /* Renewal in batches: more owners than one statement takes; done rows are left alone. */
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof(names[i]), "b%d", i);
        owners[i] = names[i];
        assert_int_equal(reserve(e, "u2", names[i], H1, names[i], T0, &r), GR_IDEM_OWNED);
    }
    assert_int_equal(
        gr_idem__complete(e->c, "u2", "POST", "/api/v1/things", "b19", "b19", &created), 0);
    assert_int_equal(gr_idem__renew(e->c, owners, 20, T0 + 5000, LEASE), 0);
    for (int i = 0; i < 19; i++)
        assert_int_equal(lease_of(e, names[i]), T0 + 5000 + LEASE);
    assert_int_equal(lease_of(e, "b19"), T0 + LEASE);
}

/* A live holder's lease is renewed: the key is not taken over long after the first lease. */
static void test_lease_renewed(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;
    long long t0 = gr_time_now_ms(), deadline = gr_time_mono_ms() + 10000, now;
    int outcome;

    assert_int_equal(reserve(e, "u1", "live", H1, "held", t0, &r), GR_IDEM_OWNED);
    gr_idem__hold("held");
    assert_int_equal(reserve(e, "u1", "dead", H1, "gone", t0, &r), GR_IDEM_OWNED);
    /* Wait until three leases have passed since the reservation (renewals in between). */
    while ((now = gr_time_now_ms()) < t0 + 3 * LEASE) {
        assert_true(gr_time_mono_ms() < deadline);
        usleep(20 * 1000);
    }
    assert_true(lease_of(e, "live") > now);
    assert_int_equal(reserve(e, "u1", "live", H1, "thief", now, &r), GR_IDEM_IN_FLIGHT);
    assert_int_equal(reserve(e, "u1", "dead", H1, "heir", now, &r), GR_IDEM_OWNED);
    /* The holder completes normally. */
    assert_int_equal(
        gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "live", "held", &created), 0);
    gr_idem__unhold("held");
    assert_int_equal(reserve(e, "u1", "live", H1, "late", gr_time_now_ms(), &r), GR_IDEM_REPLAY);

    /* Once the holder stops renewing (it died), the key is free within a lease. */
    assert_int_equal(reserve(e, "u1", "stop", H1, "quit", gr_time_now_ms(), &r), GR_IDEM_OWNED);
    gr_idem__hold("quit");
    gr_idem__unhold("quit");
    do {
        assert_true(gr_time_mono_ms() < deadline);
        usleep(20 * 1000);
        outcome = reserve(e, "u1", "stop", H1, "next", gr_time_now_ms(), &r);
    } while (outcome == GR_IDEM_IN_FLIGHT);
    assert_int_equal(outcome, GR_IDEM_OWNED);
}

/* The store call runs inside an open transaction: a rollback undoes it with the effect. */
static void test_complete_in_tx(void **state)
{
    struct env *e = *state;
    struct gr_idem_resp r;

    assert_int_equal(reserve(e, "u1", "k", H1, "o1", T0, &r), GR_IDEM_OWNED);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "k", "o1", &created),
                     0);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_int_equal(reserve(e, "u1", "k", H1, "o2", T0 + 1, &r), GR_IDEM_IN_FLIGHT);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_idem__complete(e->c, "u1", "POST", "/api/v1/things", "k", "o1", &created),
                     0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(reserve(e, "u1", "k", H1, "o3", T0 + 2, &r), GR_IDEM_REPLAY);
}

struct race {
    struct env *e;
    atomic_int owned, in_flight, failed;
    pthread_barrier_t go;
};

static void *racer(void *arg)
{
    struct race *x = arg;
    struct gr_db_conn *c;
    struct gr_arena a;
    struct gr_idem_resp r;
    char owner[32];
    int outcome = -1, rc;

    gr_arena_init(&a);
    snprintf(owner, sizeof(owner), "o%p", (void *)&a);
    rc = gr_db_conn(x->e->db, &c);
    pthread_barrier_wait(&x->go);
    if (rc == 0)
        rc = gr_idem__reserve(c, &a, "u1", "POST", "/api/v1/things", "race", H1, owner, T0,
                              &outcome, &r);
    if (rc < 0)
        atomic_fetch_add(&x->failed, 1);
    else if (outcome == GR_IDEM_OWNED)
        atomic_fetch_add(&x->owned, 1);
    else if (outcome == GR_IDEM_IN_FLIGHT)
        atomic_fetch_add(&x->in_flight, 1);
    gr_arena_release(&a);
    return NULL;
}

/* 50 threads reserve one key at once: exactly one owns it, every other sees it in flight. */
static void test_race(void **state)
{
    struct race x = { .e = *state };
    pthread_t t[NTHREADS];

    pthread_barrier_init(&x.go, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, racer, &x), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&x.go);
    assert_int_equal(atomic_load(&x.failed), 0);
    assert_int_equal(atomic_load(&x.owned), 1);
    assert_int_equal(atomic_load(&x.in_flight), NTHREADS - 1);
}

#define TESTS(X)                                                                                   \
    X(test_replay_and_reuse)                                                                       \
    X(test_scope)                                                                                  \
    X(test_release)                                                                                \
    X(test_expiry_and_abandon)                                                                     \
    X(test_complete_in_tx)                                                                         \
    X(test_race)

#define LEASE_TESTS(X)                                                                             \
    X(test_lease_dead_owner)                                                                       \
    X(test_lease_renewed)

#define LITE_TEST(t)                                                                               \
    cmocka_unit_test_prestate_setup_teardown(t, setup_idem, teardown, &engine_sqlite),
#define PG_TEST(t) cmocka_unit_test_prestate_setup_teardown(t, setup_idem, teardown, &engine_pg),
#define LITE_LEASE(t)                                                                              \
    cmocka_unit_test_prestate_setup_teardown(t, setup_lease, teardown_lease, &engine_sqlite),
#define PG_LEASE(t)                                                                                \
    cmocka_unit_test_prestate_setup_teardown(t, setup_lease, teardown_lease, &engine_pg),

int main(void)
{
    const struct CMUnitTest lite[] = { TESTS(LITE_TEST) LEASE_TESTS(LITE_LEASE) };
    const struct CMUnitTest pg[] = { TESTS(PG_TEST) LEASE_TESTS(PG_LEASE) };
    const char *lvl = getenv("GR_TEST_LOG");
    int failed = 0;

    setenv("GR_IDEM_LEASE_MS", "600", 1); /* LEASE: read by gr_idem__lease_start */
    gr_log_setup("test_idem", lvl ? gr_log_level_parse(lvl) : GR_LOG_OFF, true);
    failed += cmocka_run_group_tests_name("idem_sqlite", lite, NULL, NULL);
    failed += run_pg_group("idem_pg", pg, sizeof(pg) / sizeof(pg[0]));
    return failed ? 1 : 0;
}
