/*
 * ratelimit.c - fixed-window counters and token buckets (gr/ratelimit.h), in-process in
 * open-addressing tables, or in Redis through one Lua script per call.
 *
 * Fixed windows: one mutex guards the table: a hit is a hash, a short probe and two stores,
 * far below the cost of the request it limits. The table has twice as many slots as keys,
 * linear probing over at most PROBE slots; a key that finds neither itself nor a free or
 * expired slot in its probe range takes the slot whose window ended longest ago.
 *
 * Token buckets sit on the gateway's hot path, so their table is split into shards (by hash)
 * with a cache-line-aligned mutex each; inside a shard the same probing, and the victim is
 * the bucket that would be full soonest (a full bucket is the same as no bucket).
 *
 * Redis scripts get the library clock as an argument and keep the window start or the
 * bucket's last refill in a hash, so the test clock applies; PEXPIRE (real time) only
 * collects keys that are done. When a script call fails the call is answered in-process.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/ratelimit.h"
#include "gr/redis.h"
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
    struct gr_redis *redis; /* NULL = in-process only */
    _Atomic uint64_t fallbacks;
};

#define REDIS_KEY_MAX (GR_RL_KEY_MAX + 16)

/*
 * Fixed window. KEYS[1]; ARGV: mode (hit|peek|reset), limit, window_ms, now_ms. Returns
 * {ok, retry_ms} (peek: {over, retry_ms}). Same rules as the in-process table: a window
 * restarts when it ended, when the clock went back before it, or for another window length;
 * the count stops at limit + 1.
 */
/* A caller whose clock reading is a little behind the window's start (it read the clock before
 * another caller's script ran) counts in that window; only a clock a whole window back (the
 * test clock moved backwards) starts a new one. */
static const char RL_LUA[] =
    "local k = KEYS[1]\n"
    "local mode = ARGV[1]\n"
    "if mode == 'reset' then redis.call('DEL', k) return {1, 0} end\n"
    "local limit = tonumber(ARGV[2]); local win = tonumber(ARGV[3]); local now = "
    "tonumber(ARGV[4])\n"
    "local v = redis.call('HMGET', k, 's', 'w', 'c')\n"
    "local s = tonumber(v[1]); local w = tonumber(v[2]); local c = tonumber(v[3])\n"
    "if not s or not w or not c or now >= s + w or now < s - w or w ~= win then\n"
    "  if mode == 'peek' then return {0, 0} end\n"
    "  s = now; w = win; c = 0\n"
    "  redis.call('HMSET', k, 's', s, 'w', w, 'c', 0)\n"
    "  redis.call('PEXPIRE', k, win)\n"
    "end\n"
    "if mode == 'peek' then\n"
    "  if c >= limit then return {1, s + w - now} end\n"
    "  return {0, 0}\n"
    "end\n"
    "if c <= limit then c = redis.call('HINCRBY', k, 'c', 1) end\n"
    "if c <= limit then return {1, 0} end\n"
    "return {0, s + w - now}\n";

/*
 * Token bucket. KEYS[1]; ARGV: per_s, burst, now_ms. Returns {ok, retry_ms}. Tokens refill
 * by the time since the last take; a clock that went back refills nothing.
 */
static const char TB_LUA[] =
    "local k = KEYS[1]\n"
    "local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = "
    "tonumber(ARGV[3])\n"
    "local v = redis.call('HMGET', k, 't', 'ts')\n"
    "local t = tonumber(v[1]); local ts = tonumber(v[2])\n"
    "if not t or not ts then t = burst; ts = now end\n"
    "if now > ts then t = t + (now - ts) * rate / 1000 end\n"
    "if t > burst then t = burst end\n"
    "ts = now\n"
    "local ok = 0; local retry = 0\n"
    "if t >= 1 then t = t - 1; ok = 1 else retry = math.ceil((1 - t) * 1000 / rate) end\n"
    "redis.call('HMSET', k, 't', string.format('%.17g', t), 'ts', string.format('%d', ts))\n"
    "redis.call('PEXPIRE', k, math.ceil(burst * 1000 / rate) + 1000)\n"
    "return {ok, retry}\n";

static struct gr_redis_script rl_script, tb_script;
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_init(void)
{
    gr_redis_script_init(&rl_script, RL_LUA);
    gr_redis_script_init(&tb_script, TB_LUA);
}

static int retry_from_ms(long long ms)
{
    long long sec = (ms + 999) / 1000;

    return sec < 1 ? 1 : sec > 86400 ? 86400 : (int)sec;
}

/* "prefix" + at most GR_RL_KEY_MAX bytes of @key. */
static void redis_key(char out[REDIS_KEY_MAX], const char *prefix, const char *key)
{
    snprintf(out, REDIS_KEY_MAX, "%s%.*s", prefix, GR_RL_KEY_MAX, key);
}

/* Runs the fixed-window script; <0 when Redis failed. */
static int rl_redis(struct gr_rl *rl, const char *mode, const char *key, int limit,
                    int64_t window_ms, long long res[2])
{
    char k[REDIS_KEY_MAX], lim[24], win[24], now[24];
    const char *argv[5] = { k, mode, lim, win, now };
    size_t n = 0;
    int rc;

    redis_key(k, "gr:rl:", key);
    snprintf(lim, sizeof(lim), "%d", limit);
    snprintf(win, sizeof(win), "%lld", (long long)window_ms);
    snprintf(now, sizeof(now), "%lld", (long long)gr_time_now_ms());
    rc = gr_redis_evalsha(rl->redis, &rl_script, 1, 5, argv, res, 2, &n);
    if (rc == 0 && n != 2)
        rc = GR_EINTERNAL;
    if (rc < 0)
        atomic_fetch_add(&rl->fallbacks, 1);
    return rc;
}

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

struct gr_rl *gr_rl_new_redis(struct gr_redis *r, size_t max_keys)
{
    struct gr_rl *rl = gr_rl_new(max_keys);

    pthread_once(&scripts_once, scripts_init);
    rl->redis = r;
    return rl;
}

uint64_t gr_rl_fallbacks(const struct gr_rl *rl)
{
    return atomic_load(&rl->fallbacks);
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

static bool local_hit(struct gr_rl *rl, const char *key, int limit, int64_t window_ms,
                      int *retry_after_s)
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

bool gr_rl_hit(struct gr_rl *rl, const char *key, int limit, int64_t window_ms, int *retry_after_s)
{
    long long res[2];

    if (rl->redis && rl_redis(rl, "hit", key, limit, window_ms, res) == 0) {
        if (!res[0] && retry_after_s)
            *retry_after_s = retry_from_ms(res[1]);
        return res[0] != 0;
    }
    return local_hit(rl, key, limit, window_ms, retry_after_s);
}

static bool local_exceeded(struct gr_rl *rl, const char *key, int limit, int64_t window_ms,
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

bool gr_rl_exceeded(struct gr_rl *rl, const char *key, int limit, int64_t window_ms,
                    int *retry_after_s)
{
    long long res[2];

    if (rl->redis && rl_redis(rl, "peek", key, limit, window_ms, res) == 0) {
        if (res[0] && retry_after_s)
            *retry_after_s = retry_from_ms(res[1]);
        return res[0] != 0;
    }
    return local_exceeded(rl, key, limit, window_ms, retry_after_s);
}

void gr_rl_reset(struct gr_rl *rl, const char *key)
{
    struct slot *s;
    long long res[2];

    if (rl->redis)
        (void)rl_redis(rl, "reset", key, 0, 0, res); /* and the local entry, below */

    pthread_mutex_lock(&rl->mu);
    s = find(rl, key, false);
    if (s)
        memset(s, 0, sizeof(*s));
    pthread_mutex_unlock(&rl->mu);
}

/* ---- token buckets ----------------------------------------------------------------------- */

#define TB_SHARDS_MAX 64

struct tb_slot {
    uint64_t hash; /* 0 = empty */
    int64_t ts;    /* ms of the last refill */
    double tokens;
    double per_s;
    int burst;
    char key[GR_RL_KEY_MAX + 1];
};

/* Padded to a cache line (not aligned: gr_xcalloc gives 16), so shards rarely share one. */
struct tb_shard {
    pthread_mutex_t mu;
    size_t n;
    struct tb_slot *slots;
    char pad[64 - (sizeof(pthread_mutex_t) + sizeof(size_t) + sizeof(void *)) % 64];
};

struct gr_tb {
    struct gr_redis *redis;
    size_t nshards; /* a power of two */
    struct tb_shard *shards;
    _Atomic uint64_t fallbacks;
};

struct gr_tb *gr_tb_new(size_t max_keys, struct gr_redis *r)
{
    struct gr_tb *tb = gr_xcalloc(1, sizeof(*tb));
    size_t per;

    if (max_keys < 16)
        max_keys = 16;
    tb->nshards = 1;
    /* Shards of at least 64 keys (128 slots), so probing stays inside one. */
    while (tb->nshards < TB_SHARDS_MAX && max_keys / (tb->nshards * 2) >= 64)
        tb->nshards *= 2;
    per = (max_keys * 2 + tb->nshards - 1) / tb->nshards;
    tb->shards = gr_xcalloc(tb->nshards, sizeof(*tb->shards));
    for (size_t i = 0; i < tb->nshards; i++) {
        pthread_mutex_init(&tb->shards[i].mu, NULL);
        tb->shards[i].n = per;
        tb->shards[i].slots = gr_xcalloc(per, sizeof(struct tb_slot));
    }
    tb->redis = r;
    if (r)
        pthread_once(&scripts_once, scripts_init);
    return tb;
}

void gr_tb_free(struct gr_tb *tb)
{
    if (!tb)
        return;
    for (size_t i = 0; i < tb->nshards; i++) {
        pthread_mutex_destroy(&tb->shards[i].mu);
        gr_free(tb->shards[i].slots);
    }
    gr_free(tb->shards);
    gr_free(tb);
}

uint64_t gr_tb_fallbacks(const struct gr_tb *tb)
{
    return atomic_load(&tb->fallbacks);
}

/* When @s would be full again (ms); empty slots are always "full". */
static double full_at(const struct tb_slot *s)
{
    if (s->hash == 0)
        return -1e300;
    return (double)s->ts + (s->burst - s->tokens) * 1000.0 / s->per_s;
}

static int retry_tokens(double tokens, double per_s)
{
    double sec = ceil((1.0 - tokens) / per_s);

    return sec < 1 ? 1 : sec > 86400 ? 86400 : (int)sec;
}

static bool tb_local(struct gr_tb *tb, const char *key, double per_s, int burst, int *retry_after_s)
{
    uint64_t h = hash_key(key);
    struct tb_shard *sh = &tb->shards[(h >> 40) & (tb->nshards - 1)];
    size_t i0 = (size_t)(h % sh->n), probe = sh->n < PROBE ? sh->n : PROBE;
    struct tb_slot *s = NULL, *victim = NULL;
    double victim_full = 0;
    int64_t now = gr_time_now_ms();
    bool ok;
    int retry = 1;

    pthread_mutex_lock(&sh->mu);
    for (size_t p = 0; p < probe; p++) {
        struct tb_slot *c = &sh->slots[(i0 + p) % sh->n];
        double f;

        if (c->hash == h && strncmp(c->key, key, GR_RL_KEY_MAX) == 0) {
            s = c;
            break;
        }
        f = full_at(c);
        if (!victim || f < victim_full) {
            victim = c;
            victim_full = f;
        }
    }
    if (!s) {
        size_t klen = strnlen(key, GR_RL_KEY_MAX);

        s = victim;
        s->hash = h;
        memcpy(s->key, key, klen);
        s->key[klen] = '\0';
        s->tokens = burst;
        s->ts = now;
    }
    s->per_s = per_s;
    s->burst = burst;
    if (now > s->ts)
        s->tokens += (double)(now - s->ts) * per_s / 1000.0;
    if (s->tokens > burst)
        s->tokens = burst;
    s->ts = now;
    ok = s->tokens >= 1.0;
    if (ok)
        s->tokens -= 1.0;
    else
        retry = retry_tokens(s->tokens, per_s);
    pthread_mutex_unlock(&sh->mu);
    if (!ok && retry_after_s)
        *retry_after_s = retry;
    return ok;
}

static int tb_redis(struct gr_tb *tb, const char *key, double per_s, int burst, long long res[2])
{
    char k[REDIS_KEY_MAX], rate[40], b[24], now[24];
    const char *argv[4] = { k, rate, b, now };
    size_t n = 0;
    int rc;

    redis_key(k, "gr:tb:", key);
    snprintf(rate, sizeof(rate), "%.17g", per_s);
    snprintf(b, sizeof(b), "%d", burst);
    snprintf(now, sizeof(now), "%lld", (long long)gr_time_now_ms());
    rc = gr_redis_evalsha(tb->redis, &tb_script, 1, 4, argv, res, 2, &n);
    if (rc == 0 && n != 2)
        rc = GR_EINTERNAL;
    if (rc < 0)
        atomic_fetch_add(&tb->fallbacks, 1);
    return rc;
}

bool gr_tb_take(struct gr_tb *tb, const char *key, double per_s, int burst, int *retry_after_s)
{
    long long res[2];

    if (!(per_s >= 1.0 / 86400)) /* also NaN */
        per_s = 1.0 / 86400;
    if (burst < 1)
        burst = 1;
    if (tb->redis && tb_redis(tb, key, per_s, burst, res) == 0) {
        if (!res[0] && retry_after_s)
            *retry_after_s = retry_from_ms(res[1]);
        return res[0] != 0;
    }
    return tb_local(tb, key, per_s, burst, retry_after_s);
}
