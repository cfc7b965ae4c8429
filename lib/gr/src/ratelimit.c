/*
 * ratelimit.c - fixed-window counters in an open-addressing table (gr/ratelimit.h).
 *
 * One mutex guards the table: a hit is a hash, a short probe and two stores, far below the
 * cost of the request it limits. The table has twice as many slots as keys, linear probing
 * over at most PROBE slots; a key that finds neither itself nor a free or expired slot in its
 * probe range takes the slot whose window ended longest ago.
 */
#include <pthread.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/ratelimit.h"
#include "gr/time.h"

#define PROBE 16

struct slot {
    uint64_t hash;
    char key[GR_RL_KEY_MAX + 1];
    int64_t window_start; /* ms; 0 = empty */
    int64_t window_ms;
    int count;
};

struct gr_rl {
    pthread_mutex_t mu;
    size_t nslots;
    struct slot *slots;
};

static uint64_t hash_key(const char *k)
{
    uint64_t h = 1469598103934665603ull;

    for (; *k; k++) {
        h ^= (unsigned char)*k;
        h *= 1099511628211ull;
    }
    return h | 1;
}

struct gr_rl *gr_rl_new(size_t max_keys)
{
    struct gr_rl *rl = gr_xcalloc(1, sizeof(*rl));

    if (max_keys < 16)
        max_keys = 16;
    rl->nslots = max_keys * 2;
    rl->slots = gr_xcalloc(rl->nslots, sizeof(*rl->slots));
    pthread_mutex_init(&rl->mu, NULL);
    return rl;
}

void gr_rl_free(struct gr_rl *rl)
{
    if (!rl)
        return;
    pthread_mutex_destroy(&rl->mu);
    gr_free(rl->slots);
    gr_free(rl);
}

static bool expired(const struct slot *s, int64_t now)
{
    return s->window_start == 0 || now >= s->window_start + s->window_ms || now < s->window_start;
}

/* The slot of @key (found, or claimed and reset). Mutex held. */
static struct slot *find(struct gr_rl *rl, const char *key, bool claim)
{
    uint64_t h = hash_key(key);
    size_t i0 = (size_t)(h % rl->nslots);
    struct slot *victim = NULL;
    size_t klen = strnlen(key, GR_RL_KEY_MAX);

    for (size_t p = 0; p < PROBE; p++) {
        struct slot *s = &rl->slots[(i0 + p) % rl->nslots];

        if (s->window_start != 0 && s->hash == h && strncmp(s->key, key, GR_RL_KEY_MAX) == 0)
            return s;
        if (!victim || (victim->window_start != 0 &&
                        (s->window_start == 0 || s->window_start + s->window_ms <
                                                     victim->window_start + victim->window_ms)))
            victim = s;
    }
    if (!claim)
        return NULL;
    memset(victim, 0, sizeof(*victim));
    victim->hash = h;
    memcpy(victim->key, key, klen);
    victim->key[klen] = '\0';
    return victim;
}

static int retry_s(const struct slot *s, int64_t now)
{
    int64_t ms = s->window_start + s->window_ms - now;
    int64_t sec = (ms + 999) / 1000;

    return sec < 1 ? 1 : sec > 86400 ? 86400 : (int)sec;
}

/* @s's window, restarted when it ended or was counted with another length. Mutex held. */
static void roll(struct slot *s, int64_t now, int64_t window_ms)
{
    if (expired(s, now) || s->window_ms != window_ms) {
        s->window_start = now > 0 ? now : 1;
        s->window_ms = window_ms;
        s->count = 0;
    }
}

bool gr_rl_hit(struct gr_rl *rl, const char *key, int limit, int64_t window_ms, int *retry_after_s)
{
    int64_t now = gr_time_now_ms();
    struct slot *s;
    bool ok;
    int retry = 1;

    pthread_mutex_lock(&rl->mu);
    s = find(rl, key, true);
    roll(s, now, window_ms);
    if (s->count <= limit)
        s->count++; /* stops at limit + 1: enough to refuse */
    ok = s->count <= limit;
    if (!ok)
        retry = retry_s(s, now);
    pthread_mutex_unlock(&rl->mu);
    if (!ok && retry_after_s)
        *retry_after_s = retry;
    return ok;
}

bool gr_rl_exceeded(struct gr_rl *rl, const char *key, int limit, int64_t window_ms,
                    int *retry_after_s)
{
    int64_t now = gr_time_now_ms();
    struct slot *s;
    bool over = false;
    int retry = 1;

    pthread_mutex_lock(&rl->mu);
    s = find(rl, key, false);
    if (s && !expired(s, now) && s->window_ms == window_ms && s->count >= limit) {
        over = true;
        retry = retry_s(s, now);
    }
    pthread_mutex_unlock(&rl->mu);
    if (over && retry_after_s)
        *retry_after_s = retry;
    return over;
}

void gr_rl_reset(struct gr_rl *rl, const char *key)
{
    struct slot *s;

    pthread_mutex_lock(&rl->mu);
    s = find(rl, key, false);
    if (s)
        memset(s, 0, sizeof(*s));
    pthread_mutex_unlock(&rl->mu);
}
