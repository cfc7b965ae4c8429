/*
 * wait_int.h - the waiters behind gr_req_wait (gr/http.h): suspended requests parked on a
 * gr_waitq until it is notified, their deadline passes or a drain begins. One set per process
 * (there is one server), guarded by one mutex; one timer thread ends the waits whose deadline
 * passed. Used by http.c; never included from services.
 */
#ifndef GR_WAIT_INT_H
#define GR_WAIT_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/http.h"

/* One parked request. Owned by its request; the fields but reason are gr's (under the lock). */
struct gr_waiter {
    struct gr_waitq *q;
    struct gr_waiter *qprev, *qnext; /* in q's list */
    struct gr_waiter *fnext;         /* in a list of fired waiters being woken */
    size_t hidx;                     /* index in the deadline heap */
    int64_t deadline_ms;             /* gr_time_mono_ms() */
    bool armed;
    atomic_int reason; /* enum gr_wake, set when it fires */
    /* Called with the lock held, before the waiter can fire (the HTTP layer suspends here). */
    void (*suspend)(void *arg);
    /* Called once after it fired, with no lock held (the HTTP layer resumes here). */
    void (*wake)(void *arg);
    void *arg;
};

/** Starts the timer thread; at most @max waiters at a time (reserved or armed). */
int gr_wait__start(size_t max);
/** Stops the timer thread (after gr_wait__drain and once no waiter is armed). */
void gr_wait__stop(void);
/** Takes one of the @max places: 0, GR_ERATE when all are taken, GR_EUNAVAIL when draining. */
int gr_wait__reserve(void);
/** Gives a reserved place back (its wait was not armed). */
void gr_wait__unreserve(void);
/**
 * Arms reserved @w on @q until @deadline_ms: calls w->suspend under the lock and returns true.
 * Returns false without suspending (and frees the place) when it ends at once: @q moved past
 * @seq (reason GR_WAKE_NOTIFY), a drain began (GR_WAKE_DRAIN) or the deadline passed
 * (GR_WAKE_TIMEOUT); w->reason says which.
 */
bool gr_wait__arm(struct gr_waiter *w, struct gr_waitq *q, uint64_t seq, int64_t deadline_ms);
/** Disarms @w if it is armed (no wake call); for a request that ends while parked. */
void gr_wait__cancel(struct gr_waiter *w);
/** Ends every wait (GR_WAKE_DRAIN); later ones end at once. */
void gr_wait__drain(void);
/** Waiters reserved or armed now. */
size_t gr_wait__count(void);

#endif
