/*
 * test_bus_nats.c - the `nats` bus backend (bus_nats.c) against a real nats-server with
 * JetStream named by GR_TEST_NATS_URL; skipped without it. When GR_TEST_NATS_DIR names the
 * server's scripts/nats.sh directory, the server is also restarted once to test reconnection.
 *
 *   GR_TEST_NATS_URL=$(scripts/nats.sh start /tmp/nats) GR_TEST_NATS_DIR=/tmp/nats \
 *       build/tests/test_bus_nats
 *
 * Every test uses its own event types and durable names (a per-run prefix), so tests share
 * the stream GRAVITY without seeing each other's events and can run on a used server.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h> /* after setjmp.h, stdarg.h and stddef.h, which it needs */
#include <nats/nats.h>

#include "../../src/bus_int.h"
#include "gr/arena.h"
#include "gr/log.h"

static const char *nats_url;
static const char *nats_dir;
static char run_prefix[32]; /* "t<pid><time>": makes types and durables unique per run */
static int counter;

struct env {
    char type[64];    /* this test's event type */
    char durable[64]; /* this test's consumer */
    struct gr_bus_backend *pub, *sub;
    struct gr_arena a;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct gr_bus_backend *open_be(void)
{
    struct gr_bus_backend *b = NULL;
    char err[256] = "";

    assert_int_equal(gr_bus_nats_open(nats_url, &b, err, sizeof(err)), 0);
    /* The connection may still be on its way: wait until the broker answers. */
    for (int i = 0; i < 100 && b->ops->ping(b, 1000) != 0; i++)
        usleep(20000);
    assert_int_equal(b->ops->ping(b, 1000), 0);
    return b;
}

static int setup(void **state)
{
    struct env *e = gr_xcalloc(1, sizeof(*e));

    counter++;
    snprintf(e->type, sizeof(e->type), "%s.n%d", run_prefix, counter);
    snprintf(e->durable, sizeof(e->durable), "svc-%s-%d", run_prefix, counter);
    gr_arena_init(&e->a);
    e->pub = open_be();
    e->sub = open_be();
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;

    if (e->pub)
        e->pub->ops->close(e->pub);
    if (e->sub)
        e->sub->ops->close(e->sub);
    gr_arena_release(&e->a);
    gr_free(e);
    return 0;
}

/* A CloudEvents envelope in @a; its id is unique per run and test unless @n repeats. */
static struct gr_bus_out mk_event(struct gr_arena *a, const char *type, int n, const char *data)
{
    struct gr_bus_out o;
    char *id = gr_arena_printf(a, "%s-%d-%06d", run_prefix, counter, n);

    o.id = id;
    o.type = type;
    o.json =
        gr_arena_printf(a,
                        "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"/gravity/test\","
                        "\"type\":\"%s\",\"subject\":\"s%d\",\"time\":\"2024-05-01T10:00:00Z\","
                        "\"datacontenttype\":\"application/json\",\"data\":%s}",
                        id, type, n, data ? data : "null");
    o.json_len = strlen(o.json);
    return o;
}

static void subscribe(struct env *e, struct gr_bus_backend *b, const char *const *types, size_t n,
                      int ack_wait_s, int max_deliver)
{
    struct gr_sub subs[8];
    struct gr_sub_opts o = { .ack_wait_s = ack_wait_s, .max_deliver = max_deliver };

    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        subs[i] = (struct gr_sub){ .type = types[i], .handler = NULL };
    assert_int_equal(b->ops->subscribe(b, e->durable, subs, n, &o, 5000), 0);
}

/* Pulls until @want deliveries arrived or @secs passed; returns the number, in @out. */
static int pull_n(struct env *e, struct gr_bus_backend *b, int want, double secs,
                  struct gr_bus_in **out)
{
    struct gr_bus_in *all = gr_arena_calloc(&e->a, (size_t)(want + 64) * sizeof(*all));
    double end = now_s() + secs;
    int got = 0;

    while (got < want && now_s() < end) {
        struct gr_bus_in *in = NULL;
        int n = b->ops->pull(b, &e->a, (size_t)(want - got), 200, &in);

        assert_true(n >= 0);
        for (int i = 0; i < n; i++)
            all[got++] = in[i];
    }
    *out = all;
    return got;
}

static void ack_release(struct gr_bus_backend *b, struct gr_bus_in *in, int n)
{
    for (int i = 0; i < n; i++) {
        assert_int_equal(b->ops->ack(b, &in[i]), 0);
        b->ops->release(b, &in[i]);
    }
}

/* Nothing is delivered within @secs. */
static void expect_nothing(struct env *e, struct gr_bus_backend *b, double secs)
{
    struct gr_bus_in *in;
    int n = pull_n(e, b, 1, secs, &in);

    for (int i = 0; i < n; i++)
        fprintf(stderr, "unexpected delivery seq %" PRIu64 " type '%s' attempt %u\n", in[i].ev.seq,
                in[i].ev.type, in[i].ev.attempt);
    assert_int_equal(n, 0);
}

static void test_publish_pull(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev[3];
    struct gr_bus_in *in;
    char subject[8];

    for (int i = 0; i < 3; i++)
        ev[i] = mk_event(&e->a, e->type, i, i == 1 ? "{\"sku\":\"A-1\",\"qty\":2}" : NULL);
    subscribe(e, e->sub, types, 1, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 3, 5000), 3);

    assert_int_equal(pull_n(e, e->sub, 3, 5, &in), 3);
    for (int i = 0; i < 3; i++) {
        snprintf(subject, sizeof(subject), "s%d", i);
        assert_string_equal(in[i].ev.id, ev[i].id);
        assert_string_equal(in[i].ev.type, e->type);
        assert_string_equal(in[i].ev.source, "/gravity/test");
        assert_string_equal(in[i].ev.subject, subject);
        assert_string_equal(in[i].ev.time, "2024-05-01T10:00:00Z");
        assert_int_equal(in[i].ev.attempt, 1);
        assert_true(in[i].ev.seq > 0);
        if (i > 0)
            assert_int_equal(in[i].ev.seq, in[i - 1].ev.seq + 1);
    }
    assert_string_equal(in[0].ev.data, "null");
    assert_string_equal(in[1].ev.data, "{\"sku\":\"A-1\",\"qty\":2}");
    ack_release(e->sub, in, 3);
    expect_nothing(e, e->sub, 0.5);
}

static void test_duplicate_once(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev[2] = { mk_event(&e->a, e->type, 1, "1"),
                                mk_event(&e->a, e->type, 2, "2") };
    struct gr_bus_out again[2] = { ev[0], ev[1] };
    struct gr_bus_in *in;

    subscribe(e, e->sub, types, 1, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 1, 5000), 1);
    /* The relay publishes a row again after a crash: it counts as stored, and is stored once. */
    assert_int_equal(e->pub->ops->publish(e->pub, again, 2, 5000), 2);
    assert_int_equal(e->pub->ops->publish(e->pub, again, 1, 5000), 1);

    assert_int_equal(pull_n(e, e->sub, 3, 2, &in), 2);
    assert_string_equal(in[0].ev.id, ev[0].id);
    assert_string_equal(in[1].ev.id, ev[1].id);
    ack_release(e->sub, in, 2);
    expect_nothing(e, e->sub, 0.5);
}

static void test_nak_redelivers(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev = mk_event(&e->a, e->type, 1, "{}");
    struct gr_bus_in *in;
    uint64_t seq;

    subscribe(e, e->sub, types, 1, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, &ev, 1, 5000), 1);
    assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
    assert_int_equal(in[0].ev.attempt, 1);
    seq = in[0].ev.seq;
    assert_int_equal(e->sub->ops->nak(e->sub, &in[0], 0), 0);
    e->sub->ops->release(e->sub, &in[0]);

    assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
    assert_int_equal(in[0].ev.attempt, 2);
    assert_int_equal(in[0].ev.seq, seq);
    assert_string_equal(in[0].ev.id, ev.id);

    /* A delayed nak waits for its delay. */
    assert_int_equal(e->sub->ops->nak(e->sub, &in[0], 1500), 0);
    e->sub->ops->release(e->sub, &in[0]);
    expect_nothing(e, e->sub, 0.8);
    assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
    assert_int_equal(in[0].ev.attempt, 3);
    ack_release(e->sub, in, 1);
    expect_nothing(e, e->sub, 0.5);
}

/* The last message of GRAVITY_DEAD on @subject, with its headers checked. */
static void expect_dead(const char *subject, uint64_t seq, const char *attempts, const char *reason,
                        const char *id)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsMsg *m = NULL;
    const char *v = NULL;
    char num[24];

    assert_int_equal(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    assert_int_equal(js_GetLastMsg(&m, js, "GRAVITY_DEAD", subject, NULL, NULL), NATS_OK);
    snprintf(num, sizeof(num), "%" PRIu64, seq);
    assert_int_equal(natsMsgHeader_Get(m, "Gravity-Stream-Seq", &v), NATS_OK);
    assert_string_equal(v, num);
    assert_int_equal(natsMsgHeader_Get(m, "Gravity-Attempts", &v), NATS_OK);
    assert_string_equal(v, attempts);
    assert_int_equal(natsMsgHeader_Get(m, "Gravity-Reason", &v), NATS_OK);
    assert_string_equal(v, reason);
    if (id)
        assert_non_null(strstr(natsMsg_GetData(m), id)); /* the whole event, unchanged */
    natsMsg_Destroy(m);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void test_dead_letter_after_naks(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev[2] = { mk_event(&e->a, e->type, 1, "{\"bad\":true}"),
                                mk_event(&e->a, e->type, 2, "{}") };
    struct gr_bus_in *in;
    char dsubj[160];
    uint64_t seq;

    subscribe(e, e->sub, types, 1, 30, 2);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 1, 5000), 1);
    for (unsigned attempt = 1; attempt <= 2; attempt++) {
        assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
        assert_int_equal(in[0].ev.attempt, attempt);
        seq = in[0].ev.seq;
        assert_int_equal(e->sub->ops->nak(e->sub, &in[0], 0), 0);
        e->sub->ops->release(e->sub, &in[0]);
    }
    expect_nothing(e, e->sub, 1.0);
    snprintf(dsubj, sizeof(dsubj), "gravity_dead.%s.%s", e->durable, e->type);
    expect_dead(dsubj, seq, "2", "max_deliver", ev[0].id);

    /* The consumer goes on with the rest. */
    assert_int_equal(e->pub->ops->publish(e->pub, &ev[1], 1, 5000), 1);
    assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
    assert_string_equal(in[0].ev.id, ev[1].id);
    ack_release(e->sub, in, 1);
}

/* The last attempt times out (the process died in the handler): still a dead letter. */
static void test_dead_letter_after_timeout(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev = mk_event(&e->a, e->type, 1, "{}");
    struct gr_bus_in *in;
    char dsubj[160];
    uint64_t seq;

    subscribe(e, e->sub, types, 1, 1, 1);
    assert_int_equal(e->pub->ops->publish(e->pub, &ev, 1, 5000), 1);
    assert_int_equal(pull_n(e, e->sub, 1, 5, &in), 1);
    seq = in[0].ev.seq;
    e->sub->ops->release(e->sub, &in[0]); /* neither acked nor naked */
    expect_nothing(e, e->sub, 2.5);       /* redelivered after 1 s, and parked, not returned */
    snprintf(dsubj, sizeof(dsubj), "gravity_dead.%s.%s", e->durable, e->type);
    expect_dead(dsubj, seq, "2", "max_deliver", ev.id);
}

static void test_restart_binds_durable(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev[4];
    struct gr_bus_in *in;

    for (int i = 0; i < 4; i++)
        ev[i] = mk_event(&e->a, e->type, i, "{}");
    subscribe(e, e->sub, types, 1, 1, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 3, 5000), 3);
    assert_int_equal(pull_n(e, e->sub, 3, 5, &in), 3);
    ack_release(e->sub, in, 2);
    e->sub->ops->release(e->sub, &in[2]); /* in flight when the service stops */
    e->sub->ops->close(e->sub);
    e->sub = NULL;
    assert_int_equal(e->pub->ops->publish(e->pub, &ev[3], 1, 5000), 1);

    /* The restarted service binds the same durable: the new event, and the unacked one again
     * once its ack wait is over (so usually after the new one). */
    e->sub = open_be();
    subscribe(e, e->sub, types, 1, 1, 5);
    assert_int_equal(pull_n(e, e->sub, 2, 5, &in), 2);
    if (strcmp(in[0].ev.id, ev[2].id) != 0) {
        struct gr_bus_in t = in[0];

        in[0] = in[1];
        in[1] = t;
    }
    assert_string_equal(in[0].ev.id, ev[2].id);
    assert_int_equal(in[0].ev.attempt, 2);
    assert_string_equal(in[1].ev.id, ev[3].id);
    assert_int_equal(in[1].ev.attempt, 1);
    ack_release(e->sub, in, 2);
    expect_nothing(e, e->sub, 1.5);
}

static void test_order_per_subject(void **state)
{
    struct env *e = *state;
    char t2[80];
    const char *types[] = { e->type, t2 };
    enum { N = 500 };
    struct gr_bus_out *ev = gr_arena_calloc(&e->a, N * sizeof(*ev));
    struct gr_bus_in *in;
    int next[2] = { 0, 0 };

    snprintf(t2, sizeof(t2), "%s.other", e->type);
    for (int i = 0; i < N; i++)
        ev[i] = mk_event(&e->a, i % 3 ? e->type : t2, i, "{}");
    subscribe(e, e->sub, types, 2, 30, 5);
    for (int off = 0; off < N;) {
        int n = e->pub->ops->publish(e->pub, ev + off, 100, 5000);

        assert_true(n > 0);
        off += n;
    }
    assert_int_equal(pull_n(e, e->sub, N, 10, &in), N);
    for (int i = 0; i < N; i++) {
        int k = strcmp(in[i].ev.type, e->type) == 0 ? 0 : 1;
        int want;

        /* The i-th event of each type, in publish order. */
        for (want = next[k]; want < N && strcmp(ev[want].type, in[i].ev.type) != 0; want++)
            ;
        assert_true(want < N);
        assert_string_equal(in[i].ev.id, ev[want].id);
        next[k] = want + 1;
    }
    ack_release(e->sub, in, N);
}

/* Types outside the subscriptions are not returned, even inside the consumer's filter. */
static void test_filters(void **state)
{
    struct env *e = *state;
    char created[96], updated[96], deleted[96], prefix[96], sub_other[96];
    const char *types[] = { created, prefix };
    struct gr_bus_out ev[4];
    struct gr_bus_in *in;

    snprintf(created, sizeof(created), "%s.created", e->type);
    snprintf(updated, sizeof(updated), "%s.updated", e->type);
    snprintf(deleted, sizeof(deleted), "%s.deleted", e->type);
    snprintf(prefix, sizeof(prefix), "%s.line.*", e->type);
    snprintf(sub_other, sizeof(sub_other), "%s.line.added", e->type);
    ev[0] = mk_event(&e->a, created, 0, "{}");
    ev[1] = mk_event(&e->a, updated, 1, "{}");
    ev[2] = mk_event(&e->a, sub_other, 2, "{}");
    ev[3] = mk_event(&e->a, deleted, 3, "{}");
    subscribe(e, e->sub, types, 2, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 4, 5000), 4);
    assert_int_equal(pull_n(e, e->sub, 3, 3, &in), 2);
    assert_string_equal(in[0].ev.type, created);
    assert_string_equal(in[1].ev.type, sub_other);
    ack_release(e->sub, in, 2);

    /* A new version subscribes to less: the same durable follows with the narrower filter,
     * without the events it acknowledged before. */
    e->sub->ops->close(e->sub);
    e->sub = open_be();
    {
        const char *fewer[] = { created };
        struct gr_bus_out ev2[2] = { mk_event(&e->a, deleted, 5, "{}"),
                                     mk_event(&e->a, created, 6, "{}") };

        subscribe(e, e->sub, fewer, 1, 30, 5);
        assert_int_equal(e->pub->ops->publish(e->pub, ev2, 2, 5000), 2);
        assert_int_equal(pull_n(e, e->sub, 2, 2, &in), 1);
        assert_string_equal(in[0].ev.id, ev2[1].id);
        ack_release(e->sub, in, 1);
    }
}

/* The consumer's filter is the narrowest subject covering the subscriptions. */
static void test_filter_subjects(void **state)
{
    struct env *e = *state;
    static const struct {
        const char *types[3];
        const char *filter; /* with X for the test's type */
    } cases[] = {
        { { "X.created" }, "gravity.X.created" },
        { { "X.created", "X.created" }, "gravity.X.created" },
        { { "X.created", "X.updated" }, "gravity.X.>" },
        { { "X.line.*" }, "gravity.X.line.>" },
        { { "X.line.*", "X.line.added" }, "gravity.X.line.>" },
        { { "X.line", "X.line.*" }, "gravity.X.>" },
        { { "X.li*" }, "gravity.X.>" },
        { { "X.created", "other.thing" }, "gravity.>" },
        { { "*" }, "gravity.>" },
    };
    natsConnection *nc = NULL;
    jsCtx *js = NULL;

    assert_int_equal(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *types[3];
        char want[160];
        jsConsumerInfo *ci = NULL;
        size_t n = 0;

        for (; n < 3 && cases[i].types[n]; n++) {
            const char *t = cases[i].types[n];

            types[n] = t[0] == 'X' ? gr_arena_printf(&e->a, "%s%s", e->type, t + 1) : t;
        }
        snprintf(e->durable, sizeof(e->durable), "svc-%s-%d-f%zu", run_prefix, counter, i);
        subscribe(e, e->sub, types, n, 30, 5);
        assert_int_equal(js_GetConsumerInfo(&ci, js, "GRAVITY", e->durable, NULL, NULL), NATS_OK);
        if (strncmp(cases[i].filter, "gravity.X", 9) == 0)
            snprintf(want, sizeof(want), "gravity.%s%s", e->type, cases[i].filter + 9);
        else
            snprintf(want, sizeof(want), "%s", cases[i].filter);
        assert_string_equal(ci->Config->FilterSubject, want);
        assert_int_equal(ci->Config->AckWait, 30 * INT64_C(1000000000));
        jsConsumerInfo_Destroy(ci);
        assert_int_equal(js_DeleteConsumer(js, "GRAVITY", e->durable, NULL, NULL), NATS_OK);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* A message that is not a CloudEvent is parked and never handed to the service. */
static void test_invalid_event(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out bad = { .id = "not-an-event-id", .type = e->type, .json = "{\"x\":1}" };
    struct gr_bus_out good = mk_event(&e->a, e->type, 1, "{}");
    struct gr_bus_in *in;
    char dsubj[160], id[96];

    snprintf(id, sizeof(id), "bad-%s-%d", run_prefix, counter);
    bad.id = id;
    bad.json_len = strlen(bad.json);
    subscribe(e, e->sub, types, 1, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, &bad, 1, 5000), 1);
    assert_int_equal(e->pub->ops->publish(e->pub, &good, 1, 5000), 1);
    assert_int_equal(pull_n(e, e->sub, 2, 3, &in), 1);
    assert_string_equal(in[0].ev.id, good.id);
    snprintf(dsubj, sizeof(dsubj), "gravity_dead.%s.%s", e->durable, e->type);
    expect_dead(dsubj, in[0].ev.seq - 1, "1", "invalid", NULL);
    ack_release(e->sub, in, 1);
}

/* The broker refuses what can never be published: the relay parks the head row. */
static void test_publish_refused(void **state)
{
    struct env *e = *state;
    struct gr_bus_out ev[2] = { mk_event(&e->a, e->type, 1, "{}"),
                                mk_event(&e->a, "Bad Type", 2, "{}") };

    assert_int_equal(e->pub->ops->publish(e->pub, ev, 2, 5000), 1);
    assert_int_equal(e->pub->ops->publish(e->pub, ev + 1, 1, 5000), GR_EINVAL);
}

/* No broker: calls fail at once with GR_EUNAVAIL, and the backend can still be opened. */
static void test_unavailable(void **state)
{
    struct gr_arena a;
    struct gr_bus_backend *b = NULL;
    struct gr_bus_out ev;
    struct gr_bus_in *in = NULL;
    struct gr_sub sub = { .type = "x.y", .handler = NULL };
    char err[256];
    double t0;

    (void)state;
    gr_arena_init(&a);
    ev = mk_event(&a, "x.y", 1, "{}");
    /* Port 9 (discard) on loopback: nothing listens there. */
    assert_int_equal(gr_bus_nats_open("nats://127.0.0.1:9", &b, err, sizeof(err)), 0);
    t0 = now_s();
    assert_int_equal(b->ops->publish(b, &ev, 1, 5000), GR_EUNAVAIL);
    assert_int_equal(b->ops->ping(b, 500), GR_EUNAVAIL);
    assert_int_equal(b->ops->subscribe(b, "svc", &sub, 1, NULL, 5000), GR_EUNAVAIL);
    assert_int_equal(b->ops->pull(b, &a, 10, 1000, &in), GR_EUNAVAIL);
    assert_true(now_s() - t0 < 0.5);
    b->ops->close(b);
    assert_int_equal(gr_bus_nats_open("http://127.0.0.1:9", &b, err, sizeof(err)), GR_ECONFIG);
    gr_arena_release(&a);
}

/* A restarted nats-server (same store) is picked up; the durable and its events survive. */
static void test_reconnect(void **state)
{
    struct env *e = *state;
    const char *types[] = { e->type };
    struct gr_bus_out ev[2] = { mk_event(&e->a, e->type, 1, "{}"),
                                mk_event(&e->a, e->type, 2, "{}") };
    struct gr_bus_in *in;
    char cmd[512];
    double end;
    int rc = -1;

    if (!nats_dir)
        skip();
    subscribe(e, e->sub, types, 1, 30, 5);
    assert_int_equal(e->pub->ops->publish(e->pub, ev, 1, 5000), 1);
    snprintf(cmd, sizeof(cmd), "scripts/nats.sh restart '%s' >/dev/null", nats_dir);
    assert_int_equal(system(cmd), 0);
    /* The relay retries with backoff until the connection is back. */
    for (end = now_s() + 10; now_s() < end; usleep(50000)) {
        rc = e->pub->ops->publish(e->pub, ev + 1, 1, 2000);
        if (rc == 1)
            break;
        assert_int_equal(rc, GR_EUNAVAIL);
    }
    assert_int_equal(rc, 1);
    assert_int_equal(pull_n(e, e->sub, 2, 10, &in), 2);
    assert_string_equal(in[0].ev.id, ev[0].id);
    assert_string_equal(in[1].ev.id, ev[1].id);
    ack_release(e->sub, in, 2);
}

/* Not an assertion on speed (machines differ): prints the relay path's publish rate. */
static void test_publish_rate(void **state)
{
    struct env *e = *state;
    enum { N = 50000, BATCH = 256 };
    struct gr_bus_out *ev = gr_arena_calloc(&e->a, N * sizeof(*ev));
    double t0;

    for (int i = 0; i < N; i++)
        ev[i] = mk_event(&e->a, e->type, i, "{\"sku\":\"A-1\",\"qty\":2,\"price\":\"19.99\"}");
    t0 = now_s();
    for (int off = 0; off < N;) {
        int n = e->pub->ops->publish(e->pub, ev + off, N - off < BATCH ? (size_t)(N - off) : BATCH,
                                     5000);

        assert_true(n > 0);
        off += n;
    }
    fprintf(stderr, "nats publish: %d events in %.2f s (%.0f events/s, batches of %d)\n", N,
            now_s() - t0, N / (now_s() - t0), BATCH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_pull, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nak_redelivers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_after_naks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_after_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_binds_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_per_subject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filter_subjects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_refused, setup, teardown),
        cmocka_unit_test(test_unavailable),
        cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_rate, setup, teardown),
    };
    const char *lvl = getenv("GR_TEST_LOG");
    int failed;

    gr_log_setup("test_bus_nats", lvl ? gr_log_level_parse(lvl) : GR_LOG_OFF, true);
    nats_url = getenv("GR_TEST_NATS_URL");
    if (!nats_url || !*nats_url) {
        fprintf(stderr, "GR_TEST_NATS_URL not set: NATS tests skipped\n");
        return 0;
    }
    nats_dir = getenv("GR_TEST_NATS_DIR");
    if (nats_dir && !*nats_dir)
        nats_dir = NULL;
    snprintf(run_prefix, sizeof(run_prefix), "t%ux%lx", (unsigned)getpid(), (long)time(NULL));
    failed = cmocka_run_group_tests_name("bus_nats", tests, NULL, NULL);
    nats_Close();
    return failed ? 1 : 0;
}
