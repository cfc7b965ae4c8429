/*
 * deny.c - the revoked-token (jti) set (gw.h): an open-addressing hash set of at most
 * GW_DENY_MAX entries with linear probing, guarded by a read-write lock. Entries whose exp has
 * passed no longer deny and are swept when the set fills up; if it is still full, the entry
 * that expires soonest is evicted. The hash is seeded per process (no crafted collisions).
 */
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#include "gr/arena.h"
#include "gr/time.h"

#include "gw.h"
#include "h1.h"

#define NSLOTS 131072u /* power of two, > GW_DENY_MAX / 0.77 */

struct slot {
    char *jti; /* NULL = empty */
    uint64_t hash;
    int64_t exp_s;
};

static pthread_rwlock_t mu = PTHREAD_RWLOCK_INITIALIZER;
static struct slot *slots;
static size_t count;
static uint64_t seed;

static uint64_t hash_of(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

/* Slot holding @jti, or the empty slot where it would go. */
static size_t find(const char *jti, size_t n, uint64_t h)
{
    size_t i = (size_t)h & (NSLOTS - 1);
    while (slots[i].jti &&
           !(slots[i].hash == h && strncmp(slots[i].jti, jti, n) == 0 && slots[i].jti[n] == '\0'))
        i = (i + 1) & (NSLOTS - 1);
    return i;
}

/* Backward-shift deletion for linear probing (no tombstones). */
static void remove_at(size_t i)
{
    size_t j = i;
    gr_free(slots[i].jti);
    slots[i].jti = NULL;
    count--;
    for (;;) {
        size_t k;
        j = (j + 1) & (NSLOTS - 1);
        if (!slots[j].jti)
            return;
        k = (size_t)slots[j].hash & (NSLOTS - 1);
        /* move j to i when its home k is not cyclically within (i, j] */
        if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        slots[i] = slots[j];
        slots[j].jti = NULL;
        i = j;
    }
}

static void sweep_locked(int64_t now)
{
    for (size_t i = 0; i < NSLOTS;) {
        if (slots[i].jti && slots[i].exp_s <= now) {
            remove_at(i); /* another entry may have moved into i: look again */
            continue;
        }
        i++;
    }
}

void gw_deny_add(const char *jti, int64_t exp_s)
{
    size_t n = jti ? strlen(jti) : 0, i;
    int64_t now = gr_time_now_s();
    uint64_t h;

    if (n == 0 || n > GW_DENY_JTI_MAX || exp_s <= now)
        return;
    pthread_rwlock_wrlock(&mu);
    if (!slots) {
        if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
            seed = (uint64_t)gr_time_mono_ns();
        slots = gr_xcalloc(NSLOTS, sizeof(*slots));
    }
    h = hash_of(jti, n);
    i = find(jti, n, h);
    if (slots[i].jti) {
        if (exp_s > slots[i].exp_s)
            slots[i].exp_s = exp_s;
        goto out;
    }
    if (count >= GW_DENY_MAX) {
        sweep_locked(now);
        if (count >= GW_DENY_MAX) {
            size_t victim = NSLOTS;
            for (size_t k = 0; k < NSLOTS; k++) {
                if (slots[k].jti && (victim == NSLOTS || slots[k].exp_s < slots[victim].exp_s))
                    victim = k;
            }
            remove_at(victim);
        }
        i = find(jti, n, h);
    }
    slots[i].jti = gr_xstrndup(jti, n);
    slots[i].hash = h;
    slots[i].exp_s = exp_s;
    count++;
out:
    pthread_rwlock_unlock(&mu);
}

bool gw_deny_has(const char *jti)
{
    size_t n = jti ? strlen(jti) : 0, i;
    bool found = false;

    if (n == 0 || n > GW_DENY_JTI_MAX)
        return false;
    pthread_rwlock_rdlock(&mu);
    if (slots) {
        i = find(jti, n, hash_of(jti, n));
        found = slots[i].jti && slots[i].exp_s > gr_time_now_s();
    }
    pthread_rwlock_unlock(&mu);
    return found;
}

size_t gw_deny_count(void)
{
    size_t n;
    pthread_rwlock_rdlock(&mu);
    n = count;
    pthread_rwlock_unlock(&mu);
    return n;
}

void gw_deny_clear(void)
{
    pthread_rwlock_wrlock(&mu);
    if (slots) {
        for (size_t i = 0; i < NSLOTS; i++)
            gr_free(slots[i].jti);
        gr_free(slots);
        slots = NULL;
    }
    count = 0;
    pthread_rwlock_unlock(&mu);
}
