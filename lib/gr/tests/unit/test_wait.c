/*
 * test_wait.c - the parked waiters behind gr_req_wait (wait_int.h, gr_waitq in gr/http.h).
 *
 * A notify wakes exactly the waiters of its queue; deadlines fire in order, on time, from the
 * one timer thread; a sequence number that moved before the wait was armed ends it at once
 * without suspending (no lost wake-up); places are bounded (GR_ERATE) and given back; a drain
 * ends every wait and refuses new ones (GR_EUNAVAIL); a cancelled waiter is never woken; and
 * 8 threads arming, notifying and timing out at once leave every waiter woken exactly once
 * (run under TSan too).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../src/wait_int.h"
#include "gr/time.h"

struct probe {
    struct gr_waiter w;
    atomic_int suspended;
    atomic_int woken;
    _Atomic int64_t woken_ms;
};

static void on_suspend(void *arg)
{
    struct probe *p = arg;

    atomic_fetch_add(&p->suspended, 1);
}

static void on_wake(void *arg)
{
    struct probe *p = arg;

    atomic_store(&p->woken_ms, gr_time_mono_ms());
    atomic_fetch_add(&p->woken, 1);
}

static void probe_init(struct probe *p)
{
    memset(p, 0, sizeof(*p));
    p->w.suspend = on_suspend;
    p->w.wake = on_wake;
    p->w.arg = p;
}

/* Reserves a place and arms @p on @q; true when it parked. */
static bool park(struct probe *p, struct gr_waitq *q, uint64_t seq, int64_t deadline_ms)
{
    assert_int_equal(gr_wait__reserve(), 0);
    return gr_wait__arm(&p->w, q, seq, deadline_ms);
}

static bool all_woken(struct probe *p, size_t n, int64_t deadline_ms)
{
    while (gr_time_mono_ms() < deadline_ms) {
        size_t k = 0;

        for (size_t i = 0; i < n; i++)
            k += atomic_load(&p[i].woken) > 0;
        if (k == n)
            return true;
        usleep(1000);
    }
    return false;
}

static int setup(void **state)
{
    (void)state;
    return gr_wait__start(64);
}

static int teardown(void **state)
{
    (void)state;
    gr_wait__stop();
    return 0;
}

static void test_notify(void **state)
{
    struct gr_waitq *a = gr_waitq_new(), *b = gr_waitq_new();
    struct probe pa[3], pb;
    int64_t far = gr_time_mono_ms() + 60000;

    (void)state;
    for (int i = 0; i < 3; i++) {
        probe_init(&pa[i]);
        assert_true(park(&pa[i], a, gr_waitq_seq(a), far));
        assert_int_equal(atomic_load(&pa[i].suspended), 1);
    }
    probe_init(&pb);
    assert_true(park(&pb, b, gr_waitq_seq(b), far));
    assert_int_equal(gr_wait__count(), 4);
    gr_waitq_notify(a);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(atomic_load(&pa[i].woken), 1);
        assert_int_equal(atomic_load(&pa[i].w.reason), GR_WAKE_NOTIFY);
    }
    assert_int_equal(atomic_load(&pb.woken), 0);
    assert_int_equal(gr_wait__count(), 1);
    gr_waitq_notify(a); /* nobody left on a */
    gr_waitq_notify(b);
    assert_int_equal(atomic_load(&pb.woken), 1);
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(a);
    gr_waitq_free(b);
}

static void test_deadlines(void **state)
{
    struct gr_waitq *q = gr_waitq_new();
    struct probe p[5];
    const int ms[5] = { 120, 40, 80, 60, 100 };
    int64_t t0 = gr_time_mono_ms();

    (void)state;
    for (int i = 0; i < 5; i++) {
        probe_init(&p[i]);
        assert_true(park(&p[i], q, gr_waitq_seq(q), t0 + ms[i]));
    }
    assert_true(all_woken(p, 5, t0 + 5000));
    for (int i = 0; i < 5; i++) {
        int64_t at = atomic_load(&p[i].woken_ms) - t0;

        assert_int_equal(atomic_load(&p[i].w.reason), GR_WAKE_TIMEOUT);
        assert_true(at >= ms[i]);
        assert_true(at < ms[i] + 50); /* one timer thread, woken for each new earliest */
        assert_int_equal(atomic_load(&p[i].woken), 1);
    }
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(q);
}

static void test_no_lost_wakeup(void **state)
{
    struct gr_waitq *q = gr_waitq_new();
    struct probe p;
    uint64_t seq = gr_waitq_seq(q);

    (void)state;
    gr_waitq_notify(q); /* a change between looking at the state and arming */
    probe_init(&p);
    assert_false(park(&p, q, seq, gr_time_mono_ms() + 60000));
    assert_int_equal(atomic_load(&p.w.reason), GR_WAKE_NOTIFY);
    assert_int_equal(atomic_load(&p.suspended), 0);
    assert_int_equal(atomic_load(&p.woken), 0); /* the caller runs again itself */
    /* A deadline already past ends it at once too. */
    assert_false(park(&p, q, gr_waitq_seq(q), gr_time_mono_ms() - 1));
    assert_int_equal(atomic_load(&p.w.reason), GR_WAKE_TIMEOUT);
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(q);
}

static void test_cap_cancel(void **state)
{
    struct gr_waitq *q = gr_waitq_new();
    struct probe p[64];
    int64_t far = gr_time_mono_ms() + 60000;

    (void)state;
    for (int i = 0; i < 64; i++) {
        probe_init(&p[i]);
        assert_true(park(&p[i], q, gr_waitq_seq(q), far));
    }
    assert_int_equal(gr_wait__reserve(), GR_ERATE);
    gr_wait__cancel(&p[10].w);
    gr_wait__cancel(&p[10].w); /* twice: nothing */
    assert_int_equal(gr_wait__count(), 63);
    assert_int_equal(gr_wait__reserve(), 0);
    gr_wait__unreserve();
    gr_waitq_notify(q);
    for (int i = 0; i < 64; i++)
        assert_int_equal(atomic_load(&p[i].woken), i == 10 ? 0 : 1);
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(q);
}

static void test_drain(void **state)
{
    struct gr_waitq *q = gr_waitq_new();
    struct probe p[3], late;
    int64_t far = gr_time_mono_ms() + 60000;

    (void)state;
    for (int i = 0; i < 3; i++) {
        probe_init(&p[i]);
        assert_true(park(&p[i], q, gr_waitq_seq(q), far));
    }
    gr_wait__drain();
    for (int i = 0; i < 3; i++) {
        assert_int_equal(atomic_load(&p[i].woken), 1);
        assert_int_equal(atomic_load(&p[i].w.reason), GR_WAKE_DRAIN);
    }
    assert_int_equal(gr_wait__reserve(), GR_EUNAVAIL);
    gr_wait__stop();
    assert_int_equal(gr_wait__reserve(), GR_EUNAVAIL);
    /* A place reserved before the drain: its wait ends at once. */
    assert_int_equal(gr_wait__start(4), 0);
    assert_int_equal(gr_wait__reserve(), 0);
    gr_wait__drain();
    probe_init(&late);
    assert_false(gr_wait__arm(&late.w, q, gr_waitq_seq(q), far));
    assert_int_equal(atomic_load(&late.w.reason), GR_WAKE_DRAIN);
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(q);
}

#define NTHREADS 8
#define ROUNDS   300

struct worker {
    struct gr_waitq *q;
    int parked, immediate;
};

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
    static struct probe probes[NTHREADS][ROUNDS];
    static atomic_int next;
    int me = atomic_fetch_add(&next, 1);

    for (int r = 0; r < ROUNDS; r++) {
        struct probe *p = &probes[me][r];
        uint64_t seq = gr_waitq_seq(wk->q);

        probe_init(p);
        if (gr_wait__reserve() < 0)
            continue;
        /* Even rounds wait for the timer (2 ms), odd ones notify: both at once, everywhere. */
        if (gr_wait__arm(&p->w, wk->q, seq, gr_time_mono_ms() + (r % 2 == 0 ? 2 : 60000))) {
            wk->parked++;
            while (atomic_load(&p->woken) == 0) {
                if (r % 2)
                    gr_waitq_notify(wk->q);
                else
                    usleep(100);
            }
            assert_int_equal(atomic_load(&p->woken), 1);
        } else {
            wk->immediate++;
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct gr_waitq *q = gr_waitq_new();
    struct worker wk[NTHREADS];
    pthread_t th[NTHREADS];
    int parked = 0;

    (void)state;
    for (int i = 0; i < NTHREADS; i++) {
        wk[i] = (struct worker){ .q = q };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &wk[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        parked += wk[i].parked;
    }
    assert_true(parked > 0);
    assert_int_equal(gr_wait__count(), 0);
    gr_waitq_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadlines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_lost_wakeup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };

    return cmocka_run_group_tests_name("wait", tests, NULL, NULL);
}
