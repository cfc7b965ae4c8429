/*
 * svctoken.c - the service token provider (gr/svctoken.h): the bearer token a service presents
 * to the event bus (bus_http.c) and to other services. Either a static SERVICE_TOKEN, or a
 * client-credentials token (RFC 6749 §4.4) that one background thread per process obtains from
 * the auth service (05) with libcurl and keeps fresh: renewed at 80 % of its lifetime, early on
 * a callee's 401 (rate-limited), and retried with jittered backoff while auth is unreachable.
 *
 * Readers never block on the network: they copy the token under a mutex. The thread does its
 * request without the mutex held and publishes the result under it, bumping a generation that
 * gr_svctoken_wait() waits on. The client secret lives in one heap copy that is wiped on free,
 * and in the form body of a request, wiped once it was sent; it is never logged.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/config.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define URL_MAX       1024
#define EXPIRES_MAX_S (30LL * 24 * 3600) /* a longer expires_in is taken as this */
#define EXPIRES_DEF_S 300                /* when auth sends no expires_in */
#define WARN_AFTER    10                 /* failed requests in a row before a warning... */
#define WARN_EVERY    30                 /* ...and then one warning per this many */
#define SECRET_MIN    32
#define SECRET_MAX    256
#define CLIENT_ID_MAX 64

struct gr_svctoken {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: a new token, a wake-up, stop */
    pthread_t th;
    bool th_on;
    atomic_bool stop; /* also read by the transfer's progress callback */

    /* Set by gr_svctoken_new, then read-only. */
    bool is_static;
    char *url;       /* <AUTH_URL>/api/v1/auth/token */
    char *client_id; /* for the log */
    char *secret;    /* wiped on free */
    int retry_min_ms, retry_max_ms, refused_ms;

    /* Under mu. */
    char token[GR_SVCTOKEN_MAX + 1];
    size_t token_len;        /* 0: none */
    int64_t usable_until_ms; /* monotonic; INT64_MAX for a static token */
    int64_t next_ms;         /* when the thread asks auth next */
    int64_t last_request_ms; /* when the last request started */
    bool wake;               /* renew now (a callee refused the token) */
    uint64_t gen;
    unsigned requests;
};

static struct gr_svctoken *_Atomic the_default;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int fail(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (errlen == 0)
        return GR_ECONFIG;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return GR_ECONFIG;
}

/* Visible ASCII only: a token goes into a header line, so no space, CR, LF or control byte. */
static bool token_ok(const char *s, size_t n)
{
    if (n == 0 || n > GR_SVCTOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    }
    return true;
}

/* What auth accepts as a client id (services/05-auth-service: a-z 0-9 . _ -, 3..64). */
static bool client_id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 3 || n > CLIENT_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(islower(c) || isdigit(c) || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool secret_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < SECRET_MIN || n > SECRET_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            return false;
    }
    return true;
}

static int check_opts(const struct gr_svctoken_opts *o, char *err, size_t errlen)
{
    static const char *const schemes[] = { "http", "https", NULL };
    const char *u = o->auth_url;
    size_t slen;

    if (o->token)
        return token_ok(o->token, strlen(o->token))
                   ? 0
                   : fail(err, errlen,
                          "SERVICE_TOKEN: must be 1..%d bytes of visible ASCII (no spaces)",
                          GR_SVCTOKEN_MAX);
    if (!o->client_id || !*o->client_id)
        return fail(err, errlen, "SERVICE_CLIENT_ID: not set (SERVICE_CLIENT_SECRET is)");
    if (!o->client_secret || !*o->client_secret)
        return fail(err, errlen, "SERVICE_CLIENT_SECRET: not set (SERVICE_CLIENT_ID is)");
    if (!client_id_ok(o->client_id))
        return fail(err, errlen, "SERVICE_CLIENT_ID: must be 3..64 of a-z 0-9 . _ -, got '%.*s'",
                    (int)(strlen(o->client_id) > 40 ? 40 : strlen(o->client_id)), o->client_id);
    if (!secret_ok(o->client_secret))
        return fail(err, errlen, "SERVICE_CLIENT_SECRET: must be %d..%d printable bytes",
                    SECRET_MIN, SECRET_MAX);
    if (!u || !*u)
        return fail(err, errlen, "AUTH_URL: not set");
    slen = strlen(u);
    if (slen >= URL_MAX - sizeof(GR_SVCTOKEN_PATH))
        return fail(err, errlen, "AUTH_URL: longer than %zu bytes",
                    URL_MAX - sizeof(GR_SVCTOKEN_PATH) - 1);
    for (size_t i = 0; schemes[i]; i++) {
        size_t n = strlen(schemes[i]);

        if (strncasecmp(u, schemes[i], n) == 0 && strncmp(u + n, "://", 3) == 0 &&
            u[n + 3] != '\0' && u[n + 3] != '/') {
            for (const char *p = u; *p; p++) {
                if ((unsigned char)*p <= ' ' || *p == 0x7f)
                    return fail(err, errlen, "AUTH_URL: contains a space or control character");
            }
            return 0;
        }
    }
    return fail(err, errlen, "AUTH_URL: must be an http(s)://host[:port] URL");
}

int gr_svctoken_opts_from_env(struct gr_svctoken_opts *o, char *err, size_t errlen)
{
    static const char *const schemes[] = { "http", "https", NULL };
    const char *tok = getenv("SERVICE_TOKEN"), *id = getenv("SERVICE_CLIENT_ID"),
               *secret = getenv("SERVICE_CLIENT_SECRET");
    int rc;

    memset(o, 0, sizeof(*o));
    rc = gr_config_url("AUTH_URL", GR_SVCTOKEN_AUTH_URL, schemes, &o->auth_url, err, errlen);
    if (rc < 0)
        return rc;
    if (tok && *tok) {
        o->token = tok;
        return check_opts(o, err, errlen);
    }
    o->client_id = id && *id ? id : NULL;
    o->client_secret = secret && *secret ? secret : NULL;
    if (!o->client_id && !o->client_secret)
        return 0;
    return check_opts(o, err, errlen);
}

/* ---- the fetching thread ----------------------------------------------------------------- */

struct fetch {
    struct gr_buf body; /* auth's answer, at most GR_SVCTOKEN_RESP_MAX bytes */
    long status;
    const char *why; /* static text when it failed */
    char token[GR_SVCTOKEN_MAX + 1];
    size_t token_len;
    long long expires_s;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct gr_buf *b = arg;

    if (gr_buf_append(b, p, size * n) < 0)
        return 0; /* over the limit: aborts the transfer */
    return size * n;
}

/* libcurl's progress callback: aborts a request in flight when the provider is freed. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct gr_svctoken *t = arg;

    (void)dt, (void)dn, (void)ut, (void)un;
    return atomic_load(&t->stop) ? 1 : 0;
}

/* Reads {access_token, token_type, expires_in} from f->body into f. */
static int parse_answer(struct fetch *f)
{
    json_t *r = json_loadb(gr_buf_cstr(&f->body), f->body.len, JSON_REJECT_DUPLICATES, NULL);
    json_t *at = json_object_get(r, "access_token"), *tt = json_object_get(r, "token_type"),
           *ei = json_object_get(r, "expires_in");
    int rc = GR_EINVAL;

    f->why = "the answer has no usable access_token";
    if (!json_is_string(at) || !token_ok(json_string_value(at), json_string_length(at)))
        goto out;
    f->why = "the answer's token_type is not Bearer";
    if (tt && (!json_is_string(tt) || strcasecmp(json_string_value(tt), "bearer") != 0))
        goto out;
    f->why = "the answer's expires_in is not a positive integer";
    if (ei && (!json_is_integer(ei) || json_integer_value(ei) < 1))
        goto out;
    f->expires_s = ei ? (long long)json_integer_value(ei) : EXPIRES_DEF_S;
    if (f->expires_s > EXPIRES_MAX_S)
        f->expires_s = EXPIRES_MAX_S;
    f->token_len = json_string_length(at);
    memcpy(f->token, json_string_value(at), f->token_len);
    f->token[f->token_len] = '\0';
    rc = 0;
out:
    json_decref(r);
    return rc;
}

/* Form-encodes the credentials into @b (wiped by the caller). */
static int form_body(CURL *c, const struct gr_svctoken *t, struct gr_buf *b)
{
    char *id = curl_easy_escape(c, t->client_id, 0);
    char *secret = curl_easy_escape(c, t->secret, 0);
    int rc = GR_EINTERNAL;

    if (id && secret)
        rc = gr_buf_printf(b, "grant_type=client_credentials&client_id=%s&client_secret=%s", id,
                           secret);
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        curl_free(secret);
    }
    curl_free(id);
    return rc;
}

/* One POST to auth; 0 and the token in @f, or a negative code with f->why. */
static int request(struct gr_svctoken *t, struct fetch *f)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hdr = NULL;
    struct gr_buf form = GR_BUF_INIT;
    CURLcode cc;
    int rc = GR_EINTERNAL;

    f->why = "libcurl unusable";
    f->status = 0;
    if (!c)
        return rc;
    gr_buf_init(&form, 4096);
    if (form_body(c, t, &form) < 0)
        goto out;
    hdr = curl_slist_append(hdr, "Content-Type: application/x-www-form-urlencoded");
    hdr = curl_slist_append(hdr, "Accept: application/json");
    curl_easy_setopt(c, CURLOPT_URL, t->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, gr_buf_cstr(&form));
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)form.len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)GR_SVCTOKEN_FETCH_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)GR_SVCTOKEN_CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE, (long)GR_SVCTOKEN_RESP_MAX);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gravity-gr-svctoken");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &f->body);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    gr_buf_reset(&f->body);
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        f->why = cc == CURLE_WRITE_ERROR || cc == CURLE_FILESIZE_EXCEEDED
                     ? "the answer is too large"
                     : curl_easy_strerror(cc);
        rc = GR_EUNAVAIL;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status);
    if (f->status == 400 || f->status == 401) {
        f->why = "auth refused the client credentials (SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET)";
        rc = GR_EUNAUTH;
    } else if (f->status != 200) {
        f->why = "auth did not answer 200";
        rc = GR_EUNAVAIL;
    } else {
        rc = parse_answer(f);
    }
out:
    if (form.ptr)
        explicit_bzero(form.ptr, form.len);
    gr_buf_release(&form);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    return rc;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* The next pause after a failure: doubling from retry_min_ms to retry_max_ms, 50..100 %. */
static int backoff(const struct gr_svctoken *t, int *cur, uint64_t *rnd)
{
    *cur = *cur == 0 ? t->retry_min_ms : (*cur >= t->retry_max_ms / 2 ? t->retry_max_ms : *cur * 2);
    *rnd ^= *rnd << 13;
    *rnd ^= *rnd >> 7;
    *rnd ^= *rnd << 17;
    return *cur / 2 + (int)(*rnd % (uint64_t)(*cur / 2 + 1));
}

/* Stores a new token (mu held) and wakes the waiters. */
static void publish(struct gr_svctoken *t, const struct fetch *f, int64_t sent_ms)
{
    int64_t life = (int64_t)f->expires_s * 1000;

    memcpy(t->token, f->token, f->token_len + 1);
    t->token_len = f->token_len;
    /* Handed out until shortly before it expires; renewed well before that. */
    t->usable_until_ms = sent_ms + life - min64(5000, life / 10);
    t->next_ms = sent_ms + life * 8 / 10;
    t->gen++;
    pthread_cond_broadcast(&t->cv);
}

static void log_failure(const struct gr_svctoken *t, const struct fetch *f, int rc, int streak)
{
    char st[16];

    snprintf(st, sizeof(st), "%ld", f->status);
    /* A refusal needs the operator at once; auth starting after us is normal for a while. */
    if ((rc == GR_EUNAUTH && streak == 1) || streak == WARN_AFTER ||
        (streak > WARN_AFTER && (streak - WARN_AFTER) % WARN_EVERY == 0))
        gr_log_warn("service token unavailable, retrying", "client_id", t->client_id, "error",
                    f->why, "status", f->status ? st : NULL);
    else
        gr_log_debug("service token request failed, retrying", "client_id", t->client_id, "error",
                     f->why, "status", f->status ? st : NULL);
}

static void *fetch_main(void *arg)
{
    struct gr_svctoken *t = arg;
    struct fetch *f = gr_xcalloc(1, sizeof(*f));
    uint64_t rnd = ((uint64_t)(uintptr_t)t ^ (uint64_t)gr_time_mono_ns()) | 1;
    int back = 0, streak = 0;

    gr_buf_init(&f->body, GR_SVCTOKEN_RESP_MAX);
    pthread_mutex_lock(&t->mu);
    while (!atomic_load(&t->stop)) {
        int64_t now = gr_time_mono_ms(), sent;
        int rc;

        if (!t->wake && now < t->next_ms) {
            /* gr_time_mono_ms() is CLOCK_MONOTONIC, the clock of t->cv. */
            struct timespec ts = { .tv_sec = (time_t)(t->next_ms / 1000),
                                   .tv_nsec = (long)(t->next_ms % 1000) * 1000000 };

            pthread_cond_timedwait(&t->cv, &t->mu, &ts);
            continue;
        }
        t->wake = false;
        t->last_request_ms = sent = now;
        t->requests++;
        pthread_mutex_unlock(&t->mu);
        rc = request(t, f);
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->stop))
            break;
        if (rc == 0) {
            char exp[24];

            snprintf(exp, sizeof(exp), "%lld", f->expires_s);
            if (t->gen == 0 || streak > 0)
                gr_log_info("service token obtained", "client_id", t->client_id, "expires_in", exp);
            else
                gr_log_debug("service token renewed", "client_id", t->client_id, "expires_in", exp);
            publish(t, f, sent);
            back = streak = 0;
        } else {
            log_failure(t, f, rc, ++streak);
            t->next_ms = gr_time_mono_ms() + backoff(t, &back, &rnd);
        }
        explicit_bzero(f->token, sizeof(f->token));
    }
    pthread_mutex_unlock(&t->mu);
    gr_buf_release(&f->body);
    gr_free(f);
    return NULL;
}

/* ---- public API -------------------------------------------------------------------------- */

int gr_svctoken_new(const struct gr_svctoken_opts *o, struct gr_svctoken **out, char *err,
                    size_t errlen)
{
    struct gr_svctoken *t;
    pthread_condattr_t ca;
    size_t n;
    int rc;

    *out = NULL;
    rc = check_opts(o, err, errlen);
    if (rc < 0)
        return rc;
    t = gr_xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&t->stop, false);
    if (o->token) {
        t->is_static = true;
        t->token_len = strlen(o->token);
        memcpy(t->token, o->token, t->token_len + 1);
        t->usable_until_ms = INT64_MAX;
        t->gen = 1;
        *out = t;
        return 0;
    }
    n = strlen(o->auth_url);
    while (n > 0 && o->auth_url[n - 1] == '/')
        n--;
    t->url = gr_xmalloc(n + sizeof(GR_SVCTOKEN_PATH));
    memcpy(t->url, o->auth_url, n);
    memcpy(t->url + n, GR_SVCTOKEN_PATH, sizeof(GR_SVCTOKEN_PATH));
    t->client_id = gr_xstrdup(o->client_id);
    t->secret = gr_xstrdup(o->client_secret);
    t->retry_min_ms = o->retry_min_ms > 0 ? o->retry_min_ms : GR_SVCTOKEN_RETRY_MIN_MS;
    t->retry_max_ms = o->retry_max_ms > 0 ? o->retry_max_ms : GR_SVCTOKEN_RETRY_MAX_MS;
    if (t->retry_max_ms < t->retry_min_ms)
        t->retry_max_ms = t->retry_min_ms;
    t->refused_ms = o->refused_ms > 0 ? o->refused_ms : GR_SVCTOKEN_REFUSED_MS;
    pthread_once(&curl_once, curl_setup);
    if (pthread_create(&t->th, NULL, fetch_main, t) != 0) {
        gr_svctoken_free(t);
        snprintf(err, errlen, "cannot start the service token thread");
        return GR_EINTERNAL;
    }
    t->th_on = true;
    *out = t;
    return 0;
}

int gr_svctoken_from_env(struct gr_svctoken **out, char *err, size_t errlen)
{
    struct gr_svctoken_opts o;
    int rc;

    *out = NULL;
    rc = gr_svctoken_opts_from_env(&o, err, errlen);
    if (rc < 0 || (!o.token && !o.client_id))
        return rc;
    return gr_svctoken_new(&o, out, err, errlen);
}

void gr_svctoken_free(struct gr_svctoken *t)
{
    if (!t)
        return;
    if (t->th_on) {
        pthread_mutex_lock(&t->mu);
        atomic_store(&t->stop, true);
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->th, NULL);
    }
    if (t->secret) {
        explicit_bzero(t->secret, strlen(t->secret));
        gr_free(t->secret);
    }
    explicit_bzero(t->token, sizeof(t->token));
    gr_free(t->client_id);
    gr_free(t->url);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    gr_free(t);
}

int gr_svctoken_copy(struct gr_svctoken *t, char *buf, size_t size)
{
    int rc;

    pthread_mutex_lock(&t->mu);
    if (t->token_len == 0 || gr_time_mono_ms() >= t->usable_until_ms) {
        rc = GR_EUNAVAIL;
    } else if (t->token_len >= size) {
        rc = GR_ETOOBIG;
    } else {
        memcpy(buf, t->token, t->token_len + 1);
        rc = (int)t->token_len;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

const char *gr_svctoken_get(struct gr_svctoken *t, struct gr_arena *a)
{
    char *s = NULL;

    pthread_mutex_lock(&t->mu);
    if (t->token_len > 0 && gr_time_mono_ms() < t->usable_until_ms)
        s = gr_arena_strndup(a, t->token, t->token_len);
    pthread_mutex_unlock(&t->mu);
    return s;
}

void gr_svctoken_refused(struct gr_svctoken *t, const char *token)
{
    if (!t || !token || t->is_static)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->token_len > 0 && strcmp(token, t->token) == 0 &&
        gr_time_mono_ms() - t->last_request_ms >= t->refused_ms && !t->wake) {
        gr_log_info("service token refused by a callee, renewing it", "client_id", t->client_id);
        t->wake = true;
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
}

int gr_svctoken_wait(struct gr_svctoken *t, uint64_t after, int timeout_ms, uint64_t *gen)
{
    struct timespec ts;
    int rc = 0;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&t->mu);
    while (t->gen <= after && rc == 0) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &ts) != 0 && t->gen <= after)
            rc = GR_ETIMEOUT;
    }
    if (gen)
        *gen = t->gen;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

unsigned gr_svctoken_requests(struct gr_svctoken *t)
{
    unsigned n;

    pthread_mutex_lock(&t->mu);
    n = t->requests;
    pthread_mutex_unlock(&t->mu);
    return n;
}

struct gr_svctoken *gr_svctoken_default(void)
{
    return atomic_load(&the_default);
}

void gr_svctoken_set_default(struct gr_svctoken *t)
{
    atomic_store(&the_default, t);
}
