/*
 * redis.c - the Redis client of gr/redis.h over hiredis (synchronous API).
 *
 * Each struct gr_redis owns a pthread key: a thread's connection to it is the key's value,
 * made on first use. All connections are also on the client's list (under its mutex) so
 * that gr_redis_free can close the ones of threads still alive; a thread that exits closes
 * its own through the key's destructor. A failed connect sets down_until (monotonic ms,
 * shared by all threads) and calls fail fast until then.
 */
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "gr/arena.h"
#include "gr/log.h"
#include "gr/redis.h"
#include "gr/time.h"

#define URL_MAX   1024
#define HOST_MAX  256
#define PASS_MAX  256
#define PATH_MAX_ 108 /* sun_path */

struct conn {
    struct gr_redis *r;
    redisContext *c;
    struct conn *prev, *next;
};

struct gr_redis {
    char host[HOST_MAX]; /* or the socket path when unix */
    char user[PASS_MAX]; /* "" = none */
    char pass[PASS_MAX]; /* "" = none */
    bool has_pass;
    bool unix_sock;
    int port;
    int db;
    pthread_key_t key;
    pthread_mutex_t mu; /* guards conns */
    struct conn *conns;
    _Atomic int64_t down_until; /* monotonic ms */
    _Atomic bool warned;        /* an outage was logged; cleared on the next success */
};

static int fail(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return GR_ECONFIG;
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* Parses decimal digits [p, end) into *v within [lo, hi]. */
static bool parse_num(const char *p, const char *end, int lo, int hi, int *v)
{
    long n = 0;

    if (p == end || end - p > 6)
        return false;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        n = n * 10 + (*p - '0');
    }
    if (n < lo || n > hi)
        return false;
    *v = (int)n;
    return true;
}

/* userinfo "[user]:password" of [p, end) into r. */
static int parse_userinfo(struct gr_redis *r, const char *p, const char *end, char *err,
                          size_t errlen)
{
    const char *colon = memchr(p, ':', (size_t)(end - p));
    size_t ulen, plen;

    if (!colon)
        return fail(err, errlen, "REDIS_URL: the part before '@' must be [user]:password");
    ulen = (size_t)(colon - p);
    plen = (size_t)(end - colon - 1);
    if (ulen >= PASS_MAX || plen >= PASS_MAX)
        return fail(err, errlen, "REDIS_URL: user or password longer than %d bytes", PASS_MAX - 1);
    if (plen == 0)
        return fail(err, errlen, "REDIS_URL: empty password");
    memcpy(r->user, p, ulen);
    r->user[ulen] = '\0';
    memcpy(r->pass, colon + 1, plen);
    r->pass[plen] = '\0';
    r->has_pass = true;
    return 0;
}

static int parse_url(struct gr_redis *r, const char *url, char *err, size_t errlen)
{
    const char *p, *at, *end, *hend, *slash;
    size_t n;
    int rc;

    if (!url || !*url)
        return fail(err, errlen, "REDIS_URL: empty");
    n = strlen(url);
    if (n > URL_MAX)
        return fail(err, errlen, "REDIS_URL: longer than %d bytes", URL_MAX);
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f)
            return fail(err, errlen, "REDIS_URL: contains a space or control character");
    }
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "unix://", 7) == 0) {
        p = url + 7;
        r->unix_sock = true;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        return fail(err, errlen, "REDIS_URL: rediss:// (TLS) is not supported");
    } else {
        return fail(err, errlen, "REDIS_URL: expected redis://[:password@]host[:port][/db]");
    }
    end = url + n;
    if (strpbrk(p, "?#"))
        return fail(err, errlen, "REDIS_URL: no query or fragment allowed");
    at = strrchr(p, '@');
    if (at) {
        rc = parse_userinfo(r, p, at, err, errlen);
        if (rc < 0)
            return rc;
        p = at + 1;
    }
    if (r->unix_sock) {
        if (*p != '/' || (size_t)(end - p) >= PATH_MAX_)
            return fail(err, errlen,
                        "REDIS_URL: unix:// needs an absolute socket path under %d "
                        "bytes",
                        PATH_MAX_);
        memcpy(r->host, p, (size_t)(end - p));
        r->host[end - p] = '\0';
        return 0;
    }
    slash = strchr(p, '/');
    hend = slash ? slash : end;
    r->port = 6379;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));

        if (!rb || rb == p + 1)
            return fail(err, errlen, "REDIS_URL: unterminated or empty [IPv6] host");
        for (const char *q = p + 1; q < rb; q++) {
            if (!host_char(*q) && *q != ':' && *q != '%')
                return fail(err, errlen, "REDIS_URL: bad character in the [IPv6] host");
        }
        n = (size_t)(rb - p - 1);
        if (n >= HOST_MAX)
            return fail(err, errlen, "REDIS_URL: host too long");
        memcpy(r->host, p + 1, n);
        r->host[n] = '\0';
        p = rb + 1;
        if (p < hend && *p != ':')
            return fail(err, errlen, "REDIS_URL: expected ':' after ']'");
    } else {
        const char *q = p;

        while (q < hend && host_char(*q))
            q++;
        if (q == p)
            return fail(err, errlen, "REDIS_URL: empty host");
        if (q < hend && *q != ':')
            return fail(err, errlen, "REDIS_URL: bad character '%c' in the host", *q);
        n = (size_t)(q - p);
        if (n >= HOST_MAX)
            return fail(err, errlen, "REDIS_URL: host too long");
        memcpy(r->host, p, n);
        r->host[n] = '\0';
        p = q;
    }
    if (p < hend && *p == ':' && !parse_num(p + 1, hend, 1, 65535, &r->port))
        return fail(err, errlen, "REDIS_URL: the port must be 1-65535");
    if (slash && !parse_num(slash + 1, end, 0, 9999, &r->db))
        return fail(err, errlen, "REDIS_URL: the database after '/' must be 0-9999");
    return 0;
}

static void conn_close(struct conn *cn)
{
    if (cn->c) {
        redisFree(cn->c);
        cn->c = NULL;
    }
}

/* The key's destructor: a thread exits. */
static void conn_dtor(void *arg)
{
    struct conn *cn = arg;
    struct gr_redis *r = cn->r;

    pthread_mutex_lock(&r->mu);
    if (cn->prev)
        cn->prev->next = cn->next;
    else
        r->conns = cn->next;
    if (cn->next)
        cn->next->prev = cn->prev;
    pthread_mutex_unlock(&r->mu);
    conn_close(cn);
    gr_free(cn);
}

int gr_redis_new(const char *url, struct gr_redis **out, char *err, size_t errlen)
{
    struct gr_redis *r = gr_xcalloc(1, sizeof(*r));
    int rc = parse_url(r, url, err, errlen);

    if (rc < 0) {
        gr_free(r);
        *out = NULL;
        return rc;
    }
    if (pthread_key_create(&r->key, conn_dtor) != 0) {
        gr_free(r);
        *out = NULL;
        return fail(err, errlen, "REDIS_URL: cannot make a thread key");
    }
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

void gr_redis_free(struct gr_redis *r)
{
    struct conn *cn, *next;

    if (!r)
        return;
    pthread_key_delete(r->key); /* no destructor runs after this */
    pthread_mutex_lock(&r->mu);
    for (cn = r->conns; cn; cn = next) {
        next = cn->next;
        conn_close(cn);
        gr_free(cn);
    }
    r->conns = NULL;
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_destroy(&r->mu);
    explicit_bzero(r->pass, sizeof(r->pass));
    gr_free(r);
}

void gr_redis_script_init(struct gr_redis_script *s, const char *lua)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    static const char hex[] = "0123456789abcdef";

    s->lua = lua;
    if (EVP_Digest(lua, strlen(lua), md, &len, EVP_sha1(), NULL) != 1 || len != 20) {
        memset(s->sha1, '0', 40); /* EVALSHA answers NOSCRIPT and the script is loaded */
        s->sha1[40] = '\0';
        return;
    }
    for (unsigned i = 0; i < 20; i++) {
        s->sha1[2 * i] = hex[md[i] >> 4];
        s->sha1[2 * i + 1] = hex[md[i] & 15];
    }
    s->sha1[40] = '\0';
}

static void outage(struct gr_redis *r, const char *why)
{
    atomic_store(&r->down_until, gr_time_mono_ms() + GR_REDIS_BACKOFF_MS);
    if (!atomic_exchange(&r->warned, true))
        gr_log_warn("redis unavailable, using fallbacks", "host", r->unix_sock ? "unix" : r->host,
                    "error", why);
}

/* Runs one command on @c; NULL when the connection failed (then it is unusable). */
static redisReply *command(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    return redisCommandArgv(c, argc, argv, lens);
}

static bool auth_select(struct gr_redis *r, redisContext *c)
{
    redisReply *rep;
    char db[16];

    if (r->has_pass) {
        const char *argv[3] = { "AUTH", r->user, r->pass };
        size_t lens[3] = { 4, strlen(r->user), strlen(r->pass) };

        if (r->user[0])
            rep = command(c, 3, argv, lens);
        else {
            argv[1] = r->pass;
            lens[1] = lens[2];
            rep = command(c, 2, argv, lens);
        }
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            if (rep)
                freeReplyObject(rep);
            return false;
        }
        freeReplyObject(rep);
    }
    if (r->db != 0) {
        const char *argv[2] = { "SELECT", db };
        size_t lens[2];

        snprintf(db, sizeof(db), "%d", r->db);
        lens[0] = 6;
        lens[1] = strlen(db);
        rep = command(c, 2, argv, lens);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            if (rep)
                freeReplyObject(rep);
            return false;
        }
        freeReplyObject(rep);
    }
    return true;
}

/* This thread's connected context, or NULL (GR_EUNAVAIL) during an outage. */
static struct conn *get_conn(struct gr_redis *r)
{
    struct conn *cn = pthread_getspecific(r->key);
    struct timeval tv = { 0, GR_REDIS_TIMEOUT_MS * 1000 };
    redisContext *c;

    if (!cn) {
        cn = gr_xcalloc(1, sizeof(*cn));
        cn->r = r;
        pthread_mutex_lock(&r->mu);
        cn->next = r->conns;
        if (r->conns)
            r->conns->prev = cn;
        r->conns = cn;
        pthread_mutex_unlock(&r->mu);
        pthread_setspecific(r->key, cn);
    }
    if (cn->c)
        return cn;
    if (gr_time_mono_ms() < atomic_load(&r->down_until))
        return NULL;
    c = r->unix_sock ? redisConnectUnixWithTimeout(r->host, tv)
                     : redisConnectWithTimeout(r->host, r->port, tv);
    if (!c || c->err) {
        outage(r, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK || !auth_select(r, c)) {
        outage(r, c->err ? c->errstr : "AUTH or SELECT refused");
        redisFree(c);
        return NULL;
    }
    cn->c = c;
    return cn;
}

/* One command on this thread's connection. NULL reply: GR_EUNAVAIL, connection dropped. */
static int run(struct gr_redis *r, int argc, const char **argv, const size_t *lens,
               redisReply **out)
{
    struct conn *cn = get_conn(r);
    redisReply *rep;

    *out = NULL;
    if (!cn)
        return GR_EUNAVAIL;
    rep = command(cn->c, argc, argv, lens);
    if (!rep) {
        outage(r, cn->c->errstr);
        conn_close(cn);
        return GR_EUNAVAIL;
    }
    if (atomic_load_explicit(&r->warned, memory_order_relaxed) &&
        atomic_exchange(&r->warned, false))
        gr_log_info("redis available again", "host", r->unix_sock ? "unix" : r->host);
    *out = rep;
    return 0;
}

bool gr_redis_ping(struct gr_redis *r)
{
    const char *argv[1] = { "PING" };
    size_t lens[1] = { 4 };
    redisReply *rep;
    bool ok;

    if (run(r, 1, argv, lens, &rep) < 0)
        return false;
    ok = rep->type == REDIS_REPLY_STATUS && rep->str && strcmp(rep->str, "PONG") == 0;
    freeReplyObject(rep);
    return ok;
}

static int take_ints(const redisReply *rep, long long *out, size_t nout, size_t *nret)
{
    size_t n = 0;

    if (rep->type == REDIS_REPLY_INTEGER) {
        if (nout > 0)
            out[n++] = rep->integer;
    } else if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < rep->elements; i++) {
            if (rep->element[i]->type != REDIS_REPLY_INTEGER)
                return GR_EINTERNAL;
            if (n < nout)
                out[n++] = rep->element[i]->integer;
        }
    } else {
        return GR_EINTERNAL;
    }
    if (nret)
        *nret = n;
    return 0;
}

int gr_redis_evalsha(struct gr_redis *r, const struct gr_redis_script *s, int nkeys, int argc,
                     const char *const *argv, long long *out, size_t nout, size_t *nret)
{
    const char *av[GR_REDIS_ARGS_MAX + 3];
    size_t lens[GR_REDIS_ARGS_MAX + 3];
    char nk[16];
    redisReply *rep;
    int rc;

    if (nret)
        *nret = 0;
    if (argc < 0 || argc > GR_REDIS_ARGS_MAX || nkeys < 0 || nkeys > argc)
        return GR_EINVAL;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVALSHA";
    av[1] = s->sha1;
    av[2] = nk;
    for (int i = 0; i < argc; i++)
        av[3 + i] = argv[i];
    for (int i = 0; i < argc + 3; i++)
        lens[i] = strlen(av[i]);
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = run(r, argc + 3, av, lens, &rep);
        if (rc < 0)
            return rc;
        if (rep->type == REDIS_REPLY_ERROR && rep->str && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
            attempt == 0) {
            const char *lv[3] = { "SCRIPT", "LOAD", s->lua };
            size_t ll[3] = { 6, 4, strlen(s->lua) };

            freeReplyObject(rep);
            rc = run(r, 3, lv, ll, &rep);
            if (rc < 0)
                return rc;
            if (rep->type != REDIS_REPLY_STRING || rep->len != 40 ||
                memcmp(rep->str, s->sha1, 40) != 0) {
                gr_log_warn("redis SCRIPT LOAD failed", "error",
                            rep->type == REDIS_REPLY_ERROR ? rep->str : "sha mismatch");
                freeReplyObject(rep);
                return GR_EINTERNAL;
            }
            freeReplyObject(rep);
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            gr_log_warn("redis script failed", "error", rep->str);
            freeReplyObject(rep);
            return GR_EINTERNAL;
        }
        rc = take_ints(rep, out, nout, nret);
        freeReplyObject(rep);
        return rc;
    }
    return GR_EINTERNAL;
}
