/*
 * test_bus.c - unit tests of gr bus's database half on SQLite and (GR_TEST_PG_URL) PostgreSQL:
 * the outbox and inbox migrations, gr_bus_emit inside a transaction (a rollback leaves no
 * outbox row), the CloudEvents envelope it stores, the commit hook that wakes the relay, event
 * type validation and the envelope parser. The relay and the consumer against real brokers
 * are covered by tests/bus/ (14-event-bus-service) and test_bus_nats.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after setjmp.h, stdarg.h and stddef.h, which it needs */

#include "../../src/bus_int.h"
#include "dbenv.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/log.h"

static void migrate(struct env *e)
{
    assert_int_equal(gr_db_migrate(e->db, "gr.bus", gr_bus_migrations), 0);
}

static void test_type_valid(void **state)
{
    static const char *const good[] = { "product.created", "order.line_added", "a.b.c", "x1.y2" };
    static const char *const bad[] = { "",           "product",      "Order Created", "order.",
                                       ".created",   "order..paid",  "order.Paid",    "order.paid!",
                                       "_x.created", "order created" };

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(gr_bus_type_valid(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(gr_bus_type_valid(bad[i]));
    assert_false(gr_bus_type_valid(NULL));
}

static void test_emit_needs_tx(void **state)
{
    struct env *e = *state;

    migrate(e);
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "thing.created", "1", "{}", NULL, NULL),
                     GR_EINTERNAL);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM outbox"), 0);
}

static void test_rollback_leaves_nothing(void **state)
{
    struct env *e = *state;

    migrate(e);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "thing.created", "1", "{\"a\":1}", NULL, NULL),
                     0);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM outbox"), 0);
}

static int hook_calls;
static void hook(void *arg)
{
    (void)arg;
    hook_calls++;
}

static void test_emit_envelope(void **state)
{
    struct env *e = *state;
    struct gr_db_rows *r = NULL;
    struct gr_event ev;
    char id[37];
    const char *env_txt;

    migrate(e);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "thing.updated", "subj-1",
                                 "{\"version\":3,\"name\":\"caf\\u00e9\"}", "00-abc-def-01", id),
                     0);
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "thing.deleted", NULL, NULL, NULL, NULL), 0);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(gr_db_query(e->c, &e->a,
                                 "SELECT id, type, subject, envelope FROM outbox"
                                 " ORDER BY seq",
                                 NULL, 0, &r),
                     0);
    assert_int_equal(gr_db_nrows(r), 2);
    assert_string_equal(gr_db_text(r, 0, 0), id);
    assert_true(gr_id_valid(id, strlen(id)));
    env_txt = gr_db_text(r, 0, 3);
    assert_int_equal(gr_bus_parse_event(&e->a, env_txt, strlen(env_txt), &ev), 0);
    assert_string_equal(ev.id, id);
    assert_string_equal(ev.source, "/gravity/t");
    assert_string_equal(ev.type, "thing.updated");
    assert_string_equal(ev.subject, "subj-1");
    assert_string_equal(ev.traceparent, "00-abc-def-01");
    assert_non_null(ev.time);
    /* data comes back as the same JSON value (re-encoded: the escape becomes UTF-8). */
    assert_string_equal(ev.data, "{\"version\":3,\"name\":\"caf\xc3\xa9\"}");
    assert_non_null(strstr(env_txt, "\"specversion\":\"1.0\""));
    assert_non_null(strstr(env_txt, "\"datacontenttype\":\"application/json\""));
    /* No subject and no data: the attribute is left out and data is null. */
    env_txt = gr_db_text(r, 1, 3);
    assert_int_equal(gr_bus_parse_event(&e->a, env_txt, strlen(env_txt), &ev), 0);
    assert_null(ev.subject);
    assert_string_equal(ev.data, "null");
    assert_null(gr_db_text(r, 1, 2));
}

static void test_emit_bad_input(void **state)
{
    struct env *e = *state;
    char *big;

    migrate(e);
    assert_int_equal(gr_db_begin(e->c), 0);
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "Thing Created", NULL, "{}", NULL, NULL),
                     GR_EINVAL);
    assert_int_equal(gr_bus_emit(e->c, "", "thing.created", NULL, "{}", NULL, NULL), GR_EINVAL);
    big = gr_xmalloc(GR_EVENT_DATA_MAX + 16);
    memset(big, ' ', GR_EVENT_DATA_MAX + 15);
    big[0] = '"';
    big[GR_EVENT_DATA_MAX + 14] = '"';
    big[GR_EVENT_DATA_MAX + 15] = '\0';
    assert_int_equal(gr_bus_emit(e->c, "/gravity/t", "thing.created", NULL, big, NULL, NULL),
                     GR_ETOOBIG);
    gr_free(big);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM outbox"), 0);
}

static void test_commit_hook(void **state)
{
    struct env *e = *state;

    hook_calls = 0;
    assert_int_equal(gr_db_begin(e->c), 0);
    gr_db_on_commit(e->c, hook, NULL);
    assert_int_equal(gr_db_rollback(e->c), 0);
    assert_int_equal(hook_calls, 0);
    assert_int_equal(gr_db_begin(e->c), 0);
    exec_ok(e, "CREATE TABLE h (k TEXT)");
    gr_db_on_commit(e->c, hook, NULL);
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(hook_calls, 1);
    /* Used once: the next transaction does not run it again. */
    assert_int_equal(gr_db_begin(e->c), 0);
    exec_ok(e, "INSERT INTO h (k) VALUES ('x')");
    assert_int_equal(gr_db_commit(e->c), 0);
    assert_int_equal(hook_calls, 1);
    /* A failed transaction rolls back at commit and does not run it. */
    assert_int_equal(gr_db_begin(e->c), 0);
    gr_db_on_commit(e->c, hook, NULL);
    assert_int_not_equal(gr_db_exec(e->c, "INSERT INTO nosuch (k) VALUES ('x')", NULL, 0, NULL), 0);
    assert_int_not_equal(gr_db_commit(e->c), 0);
    assert_int_equal(hook_calls, 1);
}

static void test_inbox_dedupe(void **state)
{
    struct env *e = *state;
    struct gr_db_val v[] = { GR_DB_TEXT("evt-1"), GR_DB_TEXT("/gravity/t"),
                             GR_DB_TEXT("thing.created"), GR_DB_TEXT("2026-01-01T00:00:00.000Z") };
    const char *sql = "INSERT INTO inbox (event_id, source, type, received_at)"
                      " VALUES ($1, $2, $3, $4)";

    migrate(e);
    assert_int_equal(gr_db_exec(e->c, sql, v, 4, NULL), 0);
    assert_int_equal(gr_db_exec(e->c, sql, v, 4, NULL), GR_ECONFLICT);
    assert_int_equal(count_rows(e, "SELECT COUNT(*) FROM inbox"), 1);
}

static void test_parse_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{\"specversion\":\"0.3\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b\"}",
        "{\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b\"}",
        "{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"a.b\"}",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"type\":\"a.b\"}",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"A B\"}",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"id\":\"2\",\"source\":\"/s\",\"type\":\"a.b\"}",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b\"} x",
    };
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_event ev;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(gr_bus_parse_event(&a, bad[i], strlen(bad[i]), &ev), GR_EVALID);
    gr_arena_release(&a);
}

#define TESTS(X)                                                                                   \
    X(test_emit_needs_tx)                                                                          \
    X(test_rollback_leaves_nothing)                                                                \
    X(test_emit_envelope)                                                                          \
    X(test_emit_bad_input)                                                                         \
    X(test_commit_hook)                                                                            \
    X(test_inbox_dedupe)

#define LITE_TEST(t) cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &engine_sqlite),
#define PG_TEST(t)   cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &engine_pg),

int main(void)
{
    const struct CMUnitTest common[] = {
        cmocka_unit_test(test_type_valid),
        cmocka_unit_test(test_parse_rejects),
    };
    const struct CMUnitTest lite[] = { TESTS(LITE_TEST) };
    const struct CMUnitTest pg[] = { TESTS(PG_TEST) };
    const char *lvl = getenv("GR_TEST_LOG");
    int failed = 0;

    gr_log_setup("test_bus", lvl ? gr_log_level_parse(lvl) : GR_LOG_OFF, true);
    failed += cmocka_run_group_tests_name("bus_common", common, NULL, NULL);
    failed += cmocka_run_group_tests_name("bus_sqlite", lite, NULL, NULL);
    failed += run_pg_group("bus_pg", pg, sizeof(pg) / sizeof(pg[0]));
    return failed ? 1 : 0;
}
