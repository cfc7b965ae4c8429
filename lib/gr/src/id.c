/*
 * id.c - UUIDv7 generation (RFC 9562 §5.7) with the "monotonic random" method of §6.2
 * (method 3), so that every id a process makes sorts after the previous one, even many per
 * millisecond and across threads.
 *
 * Layout: 48-bit Unix milliseconds, version 7, then a 42-bit counter made of the 12 rand_a
 * bits and the top 30 bits of rand_b, then 32 fresh random bits. Each new millisecond seeds
 * the counter randomly with its top bit clear (room for 2^41 increments); within a
 * millisecond it increments by one. If it would overflow, the timestamp is advanced by one
 * millisecond and the counter reseeded, and a clock that steps backwards is ignored the same
 * way (the last timestamp is kept), so order never breaks. The state is process-wide and
 * guarded by a mutex; random bytes come from getrandom(2) through a small pool so the hot path
 * makes no system call. After fork() the child drops the pool, so parent and child do not
 * share random bits.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "gr/arena.h"
#include "gr/id.h"

#define COUNTER_BITS 42
#define COUNTER_MAX  ((UINT64_C(1) << COUNTER_BITS) - 1)
#define SEED_MASK    ((UINT64_C(1) << (COUNTER_BITS - 1)) - 1)
#define TS_MAX       ((UINT64_C(1) << 48) - 1)
#define POOL_SIZE    4096

struct id_state {
    pthread_mutex_t lock;
    uint64_t last_ms; /* timestamp of the last id made */
    uint64_t counter; /* 42-bit counter of the last id made */
    size_t pool_pos;  /* next unused byte of pool; POOL_SIZE = empty */
    unsigned char pool[POOL_SIZE];
};

/* Process-wide by contract (gr/id.h: ids increase within the process). */
static struct id_state g_id = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .pool_pos = POOL_SIZE,
};
static pthread_once_t g_id_once = PTHREAD_ONCE_INIT;

static void fill_random(void *p, size_t n)
{
    unsigned char *b = p;

    while (n > 0) {
        ssize_t got = getrandom(b, n, 0);

        if (got < 0) {
            if (errno == EINTR)
                continue;
            GR_BUG("getrandom failed");
        }
        b += got;
        n -= (size_t)got;
    }
}

static void on_fork_child(void)
{
    /* The child got a copy of the parent's unused random bytes: never reuse them. */
    g_id.pool_pos = POOL_SIZE;
    pthread_mutex_init(&g_id.lock, NULL);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

/* Takes @n (≤ 8) random bytes from the pool as a big-endian integer. Lock held. */
static uint64_t pool_take(size_t n)
{
    uint64_t v = 0;

    if (g_id.pool_pos + n > POOL_SIZE) {
        fill_random(g_id.pool, POOL_SIZE);
        g_id.pool_pos = 0;
    }
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | g_id.pool[g_id.pool_pos++];
    return v;
}

static uint64_t real_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void format(const unsigned char b[16], char out[GR_ID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

void gr_id_new(char out[GR_ID_LEN])
{
    uint64_t now = real_ms() & TS_MAX, ms, counter, rnd;
    unsigned char b[16];

    pthread_once(&g_id_once, register_atfork);
    pthread_mutex_lock(&g_id.lock);
    if (now > g_id.last_ms) {
        ms = now;
        counter = pool_take(6) & SEED_MASK;
    } else if (g_id.counter < COUNTER_MAX) {
        /* Same millisecond, or the clock stepped back: keep the last timestamp. */
        ms = g_id.last_ms;
        counter = g_id.counter + 1;
    } else {
        ms = g_id.last_ms + 1;
        counter = pool_take(6) & SEED_MASK;
    }
    rnd = pool_take(4);
    g_id.last_ms = ms;
    g_id.counter = counter;
    pthread_mutex_unlock(&g_id.lock);

    /* unix_ts_ms: bytes 0-5. */
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    /* ver (4 bits) + counter bits 41..30 as rand_a. */
    b[6] = (unsigned char)(0x70 | ((counter >> 38) & 0x0f));
    b[7] = (unsigned char)(counter >> 30);
    /* var 10 + counter bits 29..0 + 32 random bits as rand_b. */
    b[8] = (unsigned char)(0x80 | ((counter >> 24) & 0x3f));
    b[9] = (unsigned char)(counter >> 16);
    b[10] = (unsigned char)(counter >> 8);
    b[11] = (unsigned char)counter;
    b[12] = (unsigned char)(rnd >> 24);
    b[13] = (unsigned char)(rnd >> 16);
    b[14] = (unsigned char)(rnd >> 8);
    b[15] = (unsigned char)rnd;
    format(b, out);
}

bool gr_id_valid(const char *s, size_t n)
{
    if (!s || n != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        char c = s[i];

        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}
