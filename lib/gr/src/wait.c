/*
 * wait.c - wait queues and parked waiters (wait_int.h, gr_waitq in gr/http.h).
 *
 * Everything is guarded by one mutex: the queues' lists, a binary min-heap of the armed
 * waiters by deadline, the count of places taken and the drain flag. A waiter fires once:
 * under the lock it leaves its queue and the heap and receives its reason; its wake callback runs
 * after the lock is released (libmicrohttpd takes locks of its own there), so a waiter is
 * never woken under our lock and the request it belongs to cannot run before it left every
 * list. The timer thread sleeps on a CLOCK_MONOTONIC condition until the earliest deadline.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "gr/arena.h"
#include "gr/log.h"
#include "gr/time.h"
#include "wait_int.h"

struct gr_waitq {
    atomic_uint_fast64_t seq;
    struct gr_waiter *head; /* armed waiters (lock) */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the timer thread: a new earliest deadline or stop */
    bool cv_ready;
    struct gr_waiter **heap;
    size_t n;     /* armed, in the heap */
    size_t taken; /* reserved or armed */
    size_t max;
    bool draining, stop, running;
    pthread_t timer;
} W = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* ---- heap -------------------------------------------------------------------------------- */

static void heap_set(size_t i, struct gr_waiter *w)
{
    W.heap[i] = w;
    w->hidx = i;
}

static void heap_up(size_t i)
{
    struct gr_waiter *w = W.heap[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;

        if (W.heap[p]->deadline_ms <= w->deadline_ms)
            break;
        heap_set(i, W.heap[p]);
        i = p;
    }
    heap_set(i, w);
}

static void heap_down(size_t i)
{
    struct gr_waiter *w = W.heap[i];

    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= W.n)
            break;
        if (c + 1 < W.n && W.heap[c + 1]->deadline_ms < W.heap[c]->deadline_ms)
            c++;
        if (W.heap[c]->deadline_ms >= w->deadline_ms)
            break;
        heap_set(i, W.heap[c]);
        i = c;
    }
    heap_set(i, w);
}

static void heap_remove(struct gr_waiter *w)
{
    size_t i = w->hidx;

    W.n--;
    if (i == W.n)
        return;
    heap_set(i, W.heap[W.n]);
    heap_up(i);
    heap_down(W.heap[i]->hidx);
}

/* ---- firing ------------------------------------------------------------------------------ */

/* Takes armed @w off every list with @reason and pushes it on *@fired (lock held). */
static void fire(struct gr_waiter *w, enum gr_wake reason, struct gr_waiter **fired)
{
    struct gr_waitq *q = w->q;

    if (w->qprev)
        w->qprev->qnext = w->qnext;
    else if (q)
        q->head = w->qnext;
    if (w->qnext)
        w->qnext->qprev = w->qprev;
    w->qprev = w->qnext = NULL;
    w->q = NULL;
    heap_remove(w);
    w->armed = false;
    W.taken--;
    atomic_store(&w->reason, (int)reason);
    w->fnext = *fired;
    *fired = w;
}

/* Runs the wake callbacks of @fired (no lock held). */
static void wake_all(struct gr_waiter *fired)
{
    while (fired) {
        struct gr_waiter *next = fired->fnext; /* fired may be gone once wake returns */

        fired->wake(fired->arg);
        fired = next;
    }
}

static struct timespec mono_at(int64_t ms)
{
    struct timespec t = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };

    return t;
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&W.mu);
    while (!W.stop) {
        struct gr_waiter *fired = NULL;
        int64_t now = gr_time_mono_ms();

        while (W.n > 0 && W.heap[0]->deadline_ms <= now)
            fire(W.heap[0], GR_WAKE_TIMEOUT, &fired);
        if (fired) {
            pthread_mutex_unlock(&W.mu);
            wake_all(fired);
            pthread_mutex_lock(&W.mu);
            continue;
        }
        if (W.n == 0) {
            pthread_cond_wait(&W.cv, &W.mu);
        } else {
            struct timespec until = mono_at(W.heap[0]->deadline_ms);

            (void)pthread_cond_timedwait(&W.cv, &W.mu, &until);
        }
    }
    pthread_mutex_unlock(&W.mu);
    return NULL;
}

/* ---- internal API ------------------------------------------------------------------------ */

int gr_wait__start(size_t max)
{
    pthread_condattr_t ca;
    int rc = 0;

    pthread_mutex_lock(&W.mu);
    if (W.running) {
        pthread_mutex_unlock(&W.mu);
        return GR_EINTERNAL;
    }
    if (!W.cv_ready) {
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&W.cv, &ca);
        pthread_condattr_destroy(&ca);
        W.cv_ready = true;
    }
    W.max = max > 0 ? max : 1;
    W.heap = gr_xcalloc(W.max, sizeof(*W.heap));
    W.n = W.taken = 0;
    W.draining = W.stop = false;
    if (pthread_create(&W.timer, NULL, timer_main, NULL) != 0) {
        gr_free(W.heap);
        W.heap = NULL;
        rc = GR_EINTERNAL;
    } else {
        W.running = true;
    }
    pthread_mutex_unlock(&W.mu);
    return rc;
}

void gr_wait__stop(void)
{
    struct gr_waiter *fired = NULL;
    pthread_t t;

    pthread_mutex_lock(&W.mu);
    if (!W.running) {
        pthread_mutex_unlock(&W.mu);
        return;
    }
    while (W.n > 0) /* none should be left; never strand one */
        fire(W.heap[0], GR_WAKE_DRAIN, &fired);
    W.stop = true;
    W.running = false;
    t = W.timer;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    wake_all(fired);
    pthread_join(t, NULL);
    pthread_mutex_lock(&W.mu);
    gr_free(W.heap);
    W.heap = NULL;
    pthread_mutex_unlock(&W.mu);
}

int gr_wait__reserve(void)
{
    int rc = 0;

    pthread_mutex_lock(&W.mu);
    if (!W.running || W.draining)
        rc = GR_EUNAVAIL;
    else if (W.taken >= W.max)
        rc = GR_ERATE;
    else
        W.taken++;
    pthread_mutex_unlock(&W.mu);
    return rc;
}

void gr_wait__unreserve(void)
{
    pthread_mutex_lock(&W.mu);
    if (W.taken > 0)
        W.taken--;
    pthread_mutex_unlock(&W.mu);
}

bool gr_wait__arm(struct gr_waiter *w, struct gr_waitq *q, uint64_t seq, int64_t deadline_ms)
{
    enum gr_wake now = GR_WAKE_NONE;

    pthread_mutex_lock(&W.mu);
    if (W.draining || !W.running)
        now = GR_WAKE_DRAIN;
    else if (atomic_load(&q->seq) != seq)
        now = GR_WAKE_NOTIFY;
    else if (deadline_ms <= gr_time_mono_ms())
        now = GR_WAKE_TIMEOUT;
    if (now != GR_WAKE_NONE) {
        W.taken--;
        atomic_store(&w->reason, (int)now);
        pthread_mutex_unlock(&W.mu);
        return false;
    }
    w->suspend(w->arg); /* before anyone can fire it */
    w->q = q;
    w->qprev = NULL;
    w->qnext = q->head;
    if (q->head)
        q->head->qprev = w;
    q->head = w;
    w->deadline_ms = deadline_ms;
    w->armed = true;
    atomic_store(&w->reason, (int)GR_WAKE_NONE);
    W.heap[W.n] = w;
    w->hidx = W.n++;
    heap_up(w->hidx);
    if (w->hidx == 0)
        pthread_cond_signal(&W.cv); /* a new earliest deadline */
    pthread_mutex_unlock(&W.mu);
    return true;
}

void gr_wait__cancel(struct gr_waiter *w)
{
    struct gr_waiter *fired = NULL;

    pthread_mutex_lock(&W.mu);
    if (w->armed)
        fire(w, GR_WAKE_DRAIN, &fired); /* not woken: its request is ending */
    pthread_mutex_unlock(&W.mu);
}

void gr_wait__drain(void)
{
    struct gr_waiter *fired = NULL;

    pthread_mutex_lock(&W.mu);
    W.draining = true;
    while (W.n > 0)
        fire(W.heap[0], GR_WAKE_DRAIN, &fired);
    pthread_mutex_unlock(&W.mu);
    wake_all(fired);
}

size_t gr_wait__count(void)
{
    size_t n;

    pthread_mutex_lock(&W.mu);
    n = W.taken;
    pthread_mutex_unlock(&W.mu);
    return n;
}

/* ---- public queues ----------------------------------------------------------------------- */

struct gr_waitq *gr_waitq_new(void)
{
    struct gr_waitq *q = gr_xcalloc(1, sizeof(*q));

    atomic_init(&q->seq, 1);
    return q;
}

void gr_waitq_free(struct gr_waitq *q)
{
    struct gr_waiter *fired = NULL;

    if (!q)
        return;
    pthread_mutex_lock(&W.mu);
    while (q->head) /* a queue freed before its waiters ended: end them now */
        fire(q->head, GR_WAKE_DRAIN, &fired);
    pthread_mutex_unlock(&W.mu);
    wake_all(fired);
    gr_free(q);
}

uint64_t gr_waitq_seq(struct gr_waitq *q)
{
    return atomic_load(&q->seq);
}

void gr_waitq_notify(struct gr_waitq *q)
{
    struct gr_waiter *fired = NULL;

    pthread_mutex_lock(&W.mu);
    atomic_fetch_add(&q->seq, 1);
    while (q->head)
        fire(q->head, GR_WAKE_NOTIFY, &fired);
    pthread_mutex_unlock(&W.mu);
    wake_all(fired);
}
