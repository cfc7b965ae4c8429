/*
 * breaker.c - circuit breakers per upstream instance (gw.h). Opens after GW_BRK_STRAIGHT
 * straight failures or when more than half of the last GW_BRK_WINDOW calls failed; stays open
 * for open_ms (30 s), then lets one probe through; the probe's success closes it, its failure
 * opens it again. Breakers live in one registry for the process, shared by every table.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/time.h"

#include "gw.h"
#include "h1.h"

#define GW_BRK_STRAIGHT 5
#define GW_BRK_WINDOW   20
#define GW_BRK_MAX      4096 /* breakers in the registry */
#define GW_BRK_ERR_MAX  64

struct gw_breaker {
    struct gw_breaker *next;
    char host[GW_HOST_MAX];
    int port;
    pthread_mutex_t mu;
    enum gw_breaker_state state;
    int straight;    /* consecutive failures */
    uint32_t window; /* bit i = outcome of call i in the ring (1 = failure) */
    int wcount;      /* calls in the window (<= GW_BRK_WINDOW) */
    int wpos;        /* next ring slot */
    int64_t opened_mono;
    int64_t opened_wall;
    int64_t probe_mono; /* when the half-open probe was handed out */
    char last_error[GW_BRK_ERR_MAX];
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gw_breaker *reg;
static size_t reg_n;
static _Atomic(gw_breaker_cb) change_cb;
static _Atomic(int64_t) open_ms = 30000;
static int64_t (*_Atomic clock_fn)(void);

static int64_t now_ms(void)
{
    int64_t (*fn)(void) = atomic_load(&clock_fn);
    return fn ? fn() : gr_time_mono_ms();
}

void gw_breaker_set_clock(int64_t (*fn)(void))
{
    atomic_store(&clock_fn, fn);
}

void gw_breaker_set_open_ms(int64_t ms)
{
    atomic_store(&open_ms, ms);
}

void gw_breaker_on_change(gw_breaker_cb cb)
{
    atomic_store(&change_cb, cb);
}

struct gw_breaker *gw_breaker_for(const char *host, int port)
{
    struct gw_breaker *b;

    pthread_mutex_lock(&reg_mu);
    for (b = reg; b; b = b->next) {
        if (b->port == port && strcmp(b->host, host) == 0)
            break;
    }
    if (!b && reg_n < GW_BRK_MAX && strlen(host) < GW_HOST_MAX) {
        b = gr_xcalloc(1, sizeof(*b));
        snprintf(b->host, sizeof(b->host), "%s", host);
        b->port = port;
        pthread_mutex_init(&b->mu, NULL);
        b->state = GW_BREAKER_CLOSED;
        b->next = reg;
        reg = b;
        reg_n++;
    }
    pthread_mutex_unlock(&reg_mu);
    return b;
}

void gw_breakers_clear(void)
{
    struct gw_breaker *b, *next;
    pthread_mutex_lock(&reg_mu);
    b = reg;
    reg = NULL;
    reg_n = 0;
    pthread_mutex_unlock(&reg_mu);
    for (; b; b = next) {
        next = b->next;
        pthread_mutex_destroy(&b->mu);
        gr_free(b);
    }
}

int gw_breaker_state(struct gw_breaker *b)
{
    int s;
    if (!b)
        return GW_BREAKER_CLOSED;
    pthread_mutex_lock(&b->mu);
    s = (int)b->state;
    pthread_mutex_unlock(&b->mu);
    return s;
}

bool gw_breaker_allow(struct gw_breaker *b)
{
    bool ok = false;
    int64_t now = now_ms(), wait = atomic_load(&open_ms);

    if (!b)
        return true;
    pthread_mutex_lock(&b->mu);
    switch (b->state) {
    case GW_BREAKER_CLOSED:
        ok = true;
        break;
    case GW_BREAKER_OPEN:
        if (now - b->opened_mono >= wait) {
            b->state = GW_BREAKER_HALF_OPEN;
            b->probe_mono = now;
            ok = true;
        }
        break;
    case GW_BREAKER_HALF_OPEN:
        /* A probe that never reported (lost) is replaced after another open period. */
        if (now - b->probe_mono >= wait) {
            b->probe_mono = now;
            ok = true;
        }
        break;
    }
    pthread_mutex_unlock(&b->mu);
    return ok;
}

static void open_locked(struct gw_breaker *b)
{
    b->state = GW_BREAKER_OPEN;
    b->opened_mono = now_ms();
    b->opened_wall = gr_time_now_ms();
}

static void reset_locked(struct gw_breaker *b)
{
    b->state = GW_BREAKER_CLOSED;
    b->straight = 0;
    b->window = 0;
    b->wcount = 0;
    b->wpos = 0;
}

void gw_breaker_result(struct gw_breaker *b, bool ok, const char *err)
{
    bool opened = false, closed = false;
    char host[GW_HOST_MAX], last[GW_BRK_ERR_MAX];
    int port;
    gw_breaker_cb cb;

    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    if (!ok)
        snprintf(b->last_error, sizeof(b->last_error), "%s", err ? err : "error");
    switch (b->state) {
    case GW_BREAKER_HALF_OPEN:
        if (ok) {
            reset_locked(b);
            closed = true;
        } else {
            open_locked(b); /* still open: no new transition to report */
        }
        break;
    case GW_BREAKER_OPEN:
        break; /* a late answer from before it opened */
    case GW_BREAKER_CLOSED: {
        uint32_t bit = 1u << b->wpos;
        if (ok) {
            b->window &= ~bit;
            b->straight = 0;
        } else {
            b->window |= bit;
            b->straight++;
        }
        b->wpos = (b->wpos + 1) % GW_BRK_WINDOW;
        if (b->wcount < GW_BRK_WINDOW)
            b->wcount++;
        if (b->straight >= GW_BRK_STRAIGHT ||
            (b->wcount == GW_BRK_WINDOW && __builtin_popcount(b->window) * 2 > GW_BRK_WINDOW)) {
            open_locked(b);
            opened = true;
        }
        break;
    }
    }
    snprintf(host, sizeof(host), "%s", b->host);
    snprintf(last, sizeof(last), "%s", b->last_error);
    port = b->port;
    pthread_mutex_unlock(&b->mu);
    cb = atomic_load(&change_cb);
    if (cb && (opened || closed))
        cb(host, port, opened, last[0] ? last : NULL);
}

static const char *state_name(enum gw_breaker_state s)
{
    switch (s) {
    case GW_BREAKER_OPEN:
        return "open";
    case GW_BREAKER_HALF_OPEN:
        return "half_open";
    default:
        return "closed";
    }
}

void gw_breakers_json(void *json_array_out)
{
    json_t *arr = json_array_out;

    pthread_mutex_lock(&reg_mu);
    for (struct gw_breaker *b = reg; b; b = b->next) {
        json_t *o;
        pthread_mutex_lock(&b->mu);
        o = json_object();
        json_object_set_new(o, "host", json_string(b->host));
        json_object_set_new(o, "port", json_integer(b->port));
        json_object_set_new(o, "state", json_string(state_name(b->state)));
        json_object_set_new(o, "failures", json_integer(b->straight));
        json_object_set_new(o, "last_error",
                            b->last_error[0] ? json_string(b->last_error) : json_null());
        if (b->state != GW_BREAKER_CLOSED) {
            char ts[GR_TIME_STR_LEN];
            gr_time_format(b->opened_wall, ts);
            json_object_set_new(o, "opened_at", json_string(ts));
        } else {
            json_object_set_new(o, "opened_at", json_null());
        }
        pthread_mutex_unlock(&b->mu);
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&reg_mu);
}
