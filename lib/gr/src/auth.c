/*
 * auth.c - access-token verification for every service (gr/auth.h, SERVICES decisions 10, 12).
 *
 * A gr_auth holds the JWKS source (http(s) URL or a local file), the expected issuer and
 * audience, and the current key set. Key sets are immutable and reference-counted: a verify
 * takes a reference under the mutex, checks the token without holding any lock, and drops the
 * reference. A refetch (first use, or a token whose kid is unknown) is done by one thread at a
 * time and at most once per GR_AUTH_REFETCH_S seconds of the library clock; other threads do not
 * wait for it and keep verifying with the keys they have. The verifier itself is strict by
 * design: it accepts exactly the tokens the auth service issues and rejects anything else with
 * GR_EUNAUTH, before looking at the claims when the signature is wrong.
 */
#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "auth_int.h"
#include "gr/auth.h"
#include "gr/log.h"
#include "gr/time.h"

#define URL_MAX 2048

enum source { SRC_STATIC, SRC_FILE, SRC_HTTP };

struct key {
    char *kid;
    EVP_PKEY *pkey;
    int alg;
};

/* An immutable set of verification keys; readers hold a reference while they use it. */
struct keyset {
    struct key *keys;
    size_t n;
    unsigned refs; /* guarded by gr_auth.mu */
};

/* ---- verification cache ------------------------------------------------------------------- */
/*
 * Verified tokens are remembered until they expire (SERVICES decision 1), so a client sending
 * the same token again costs a hash and a copy instead of a signature check. The cache is
 * direct-mapped (a colliding token evicts the older one), bounded, and striped over a few
 * mutexes. Entries hold a deep copy of the principal in one allocation.
 */
#define VCACHE_SLOTS 1024
#define VCACHE_LOCKS 16

struct ventry {
    uint64_t hash;
    char *token; /* owned copy; NULL = empty slot */
    size_t len;
    struct gr_principal p; /* strings point into `blob` */
    char *blob;
    int64_t cached_at; /* library clock, seconds: a clock moved back before it is a miss */
};

struct vcache {
    struct ventry slots[VCACHE_SLOTS];
    pthread_mutex_t locks[VCACHE_LOCKS];
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void vcache_init(struct vcache *c)
{
    memset(c->slots, 0, sizeof(c->slots));
    for (size_t i = 0; i < VCACHE_LOCKS; i++)
        pthread_mutex_init(&c->locks[i], NULL);
}

static void ventry_clear(struct ventry *e)
{
    gr_free(e->token);
    gr_free(e->blob);
    memset(e, 0, sizeof(*e));
}

static void vcache_release(struct vcache *c)
{
    for (size_t i = 0; i < VCACHE_SLOTS; i++)
        ventry_clear(&c->slots[i]);
    for (size_t i = 0; i < VCACHE_LOCKS; i++)
        pthread_mutex_destroy(&c->locks[i]);
}

/* Copies the string list @src (@n entries) into @a. */
static const char **strs_copy(struct gr_arena *a, const char **src, size_t n)
{
    const char **d = gr_arena_alloc(a, (n ? n : 1) * sizeof(char *));

    for (size_t i = 0; i < n; i++)
        d[i] = gr_arena_strdup(a, src[i]);
    return d;
}

/* True and *out filled (arena copies) when @token was verified before and has not expired. */
static bool vcache_get(struct vcache *c, struct gr_arena *a, const char *token, size_t len,
                       struct gr_principal *out)
{
    uint64_t h = fnv1a(token, len);
    size_t slot = (size_t)(h % VCACHE_SLOTS);
    pthread_mutex_t *mu = &c->locks[slot % VCACHE_LOCKS];
    struct ventry *e = &c->slots[slot];
    bool hit = false;

    pthread_mutex_lock(mu);
    if (e->token && e->hash == h && e->len == len && memcmp(e->token, token, len) == 0) {
        int64_t now = gr_time_now_s();

        if (e->p.exp > now - GR_AUTH_LEEWAY_S && now >= e->cached_at) {
            out->sub = gr_arena_strdup(a, e->p.sub);
            out->jti = gr_arena_strdup(a, e->p.jti);
            out->roles = strs_copy(a, e->p.roles, e->p.nroles);
            out->nroles = e->p.nroles;
            out->perms = strs_copy(a, e->p.perms, e->p.nperms);
            out->nperms = e->p.nperms;
            out->exp = e->p.exp;
            hit = true;
        } else {
            ventry_clear(e);
        }
    }
    pthread_mutex_unlock(mu);
    return hit;
}

static void vcache_put(struct vcache *c, const char *token, size_t len,
                       const struct gr_principal *p)
{
    uint64_t h = fnv1a(token, len);
    size_t slot = (size_t)(h % VCACHE_SLOTS), size = 0, off = 0;
    pthread_mutex_t *mu = &c->locks[slot % VCACHE_LOCKS];
    struct ventry e = { 0 };
    const char **lists;

#define ADD(s) (size += (s) ? strlen(s) + 1 : 0)
    ADD(p->sub);
    ADD(p->jti);
    for (size_t i = 0; i < p->nroles; i++)
        ADD(p->roles[i]);
    for (size_t i = 0; i < p->nperms; i++)
        ADD(p->perms[i]);
#undef ADD
    size += (p->nroles + p->nperms + 1) * sizeof(char *);
    e.blob = gr_xmalloc(size);
    lists = (const char **)(void *)e.blob;
    off = (p->nroles + p->nperms + 1) * sizeof(char *);
#define PUT(dst, s)                                                                                \
    do {                                                                                           \
        if (s) {                                                                                   \
            size_t n_ = strlen(s) + 1;                                                             \
            memcpy(e.blob + off, (s), n_);                                                         \
            (dst) = e.blob + off;                                                                  \
            off += n_;                                                                             \
        } else {                                                                                   \
            (dst) = NULL;                                                                          \
        }                                                                                          \
    } while (0)
    PUT(e.p.sub, p->sub);
    PUT(e.p.jti, p->jti);
    e.p.roles = lists;
    e.p.nroles = p->nroles;
    for (size_t i = 0; i < p->nroles; i++)
        PUT(lists[i], p->roles[i]);
    e.p.perms = lists + p->nroles;
    e.p.nperms = p->nperms;
    for (size_t i = 0; i < p->nperms; i++)
        PUT(lists[p->nroles + i], p->perms[i]);
#undef PUT
    e.p.exp = p->exp;
    e.cached_at = gr_time_now_s();
    e.hash = h;
    e.len = len;
    e.token = gr_xstrndup(token, len);
    pthread_mutex_lock(mu);
    ventry_clear(&c->slots[slot]);
    c->slots[slot] = e;
    pthread_mutex_unlock(mu);
}

struct gr_auth {
    enum source src;
    char *url; /* the http(s) URL, or the path of a file:// URL */
    char *issuer;
    char *audience;
    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t cv;   /* signalled when a fetch ends */
    struct keyset *keys; /* NULL until the JWKS was loaded once */
    bool fetching;
    bool tried;
    int64_t last_try_ms; /* library clock */
    unsigned fetches;
    struct vcache cache;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- key sets ---------------------------------------------------------------------------- */

static void keyset_free(struct keyset *ks)
{
    size_t i;

    if (!ks)
        return;
    for (i = 0; i < ks->n; i++) {
        gr_free(ks->keys[i].kid);
        EVP_PKEY_free(ks->keys[i].pkey);
    }
    gr_free(ks->keys);
    gr_free(ks);
}

static const struct key *keyset_find(const struct keyset *ks, const char *kid)
{
    size_t i;

    for (i = 0; ks && i < ks->n; i++)
        if (strcmp(ks->keys[i].kid, kid) == 0)
            return &ks->keys[i];
    return NULL;
}

static const char *jstr(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Decodes the base64url member @name of @jwk into @buf (@cap bytes). */
static int b64_member(const json_t *jwk, const char *name, unsigned char *buf, size_t cap,
                      size_t *n)
{
    const char *s = jstr(jwk, name);
    size_t len;

    if (!s)
        return GR_EINVAL;
    len = strlen(s);
    if (len == 0 || len * 3 / 4 > cap)
        return GR_EINVAL;
    return gr_b64url_decode(s, len, buf, n);
}

/* Builds a public EVP_PKEY of @type from @params. */
static int pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **pk)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    int rc = GR_EINVAL;

    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1)
        goto out;
    if (EVP_PKEY_fromdata(ctx, pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto out;
    rc = 0;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return rc;
}

static int rsa_pkey(const json_t *jwk, EVP_PKEY **pk)
{
    unsigned char nb[1024], eb[8];
    size_t nn = 0, en = 0;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int rc = GR_EINVAL;

    if (b64_member(jwk, "n", nb, sizeof(nb), &nn) < 0 ||
        b64_member(jwk, "e", eb, sizeof(eb), &en) < 0)
        goto out;
    n = BN_bin2bn(nb, (int)nn, NULL);
    e = BN_bin2bn(eb, (int)en, NULL);
    if (!n || !e || BN_num_bits(n) < 2048 || BN_is_zero(e) || !BN_is_odd(e) || BN_is_one(e))
        goto out;
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto out;
    rc = pkey_fromdata("RSA", bld, pk);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return rc;
}

static int ec_pkey(const json_t *jwk, EVP_PKEY **pk)
{
    unsigned char pt[65];
    size_t xn = 0, yn = 0;
    const char *crv = jstr(jwk, "crv");
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *chk = NULL;
    int rc = GR_EINVAL;

    if (!crv || strcmp(crv, "P-256") != 0)
        goto out;
    pt[0] = 0x04; /* uncompressed point */
    if (b64_member(jwk, "x", pt + 1, 32, &xn) < 0 || b64_member(jwk, "y", pt + 33, 32, &yn) < 0 ||
        xn != 32 || yn != 32)
        goto out;
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)))
        goto out;
    rc = pkey_fromdata("EC", bld, pk);
    if (rc < 0)
        goto out;
    /* The point must lie on the curve (invalid-curve attacks). */
    chk = EVP_PKEY_CTX_new_from_pkey(NULL, *pk, NULL);
    if (!chk || EVP_PKEY_public_check(chk) != 1) {
        EVP_PKEY_free(*pk);
        *pk = NULL;
        rc = GR_EINVAL;
    }
out:
    EVP_PKEY_CTX_free(chk);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

/* One JWK to a usable verification key: RSA >= 2048 bits or EC P-256, use "sig" or absent. */
static int jwk_to_key(const json_t *jwk, struct key *k)
{
    const char *kty, *kid, *use, *alg;
    EVP_PKEY *pk = NULL;
    int want, rc = GR_EINVAL;

    if (!json_is_object(jwk))
        goto out;
    kty = jstr(jwk, "kty");
    kid = jstr(jwk, "kid");
    use = jstr(jwk, "use");
    alg = jstr(jwk, "alg");
    if (!kty || !kid || !kid[0] || strlen(kid) >= GR_AUTH_STR_MAX)
        goto out;
    if ((json_object_get(jwk, "use") && (!use || strcmp(use, "sig") != 0)))
        goto out;
    if (strcmp(kty, "RSA") == 0) {
        want = GR_AUTH__RS256;
        rc = rsa_pkey(jwk, &pk);
    } else if (strcmp(kty, "EC") == 0) {
        want = GR_AUTH__ES256;
        rc = ec_pkey(jwk, &pk);
    } else {
        goto out;
    }
    if (rc < 0)
        goto out;
    rc = GR_EINVAL;
    if (json_object_get(jwk, "alg") && (!alg || gr_auth__alg_parse(alg) != want))
        goto out;
    if (gr_auth__pkey_alg(pk) != want)
        goto out;
    k->kid = gr_xstrdup(kid);
    k->pkey = pk;
    k->alg = want;
    pk = NULL;
    rc = 0;
out:
    ERR_clear_error();
    EVP_PKEY_free(pk);
    return rc;
}

/* Parses a JWKS document; unusable keys and repeated kids are skipped. */
static int jwks_parse(const char *doc, size_t len, struct keyset **out)
{
    json_error_t jerr;
    json_t *root = json_loadb(doc, len, JSON_REJECT_DUPLICATES, &jerr), *arr, *jwk;
    struct keyset *ks = NULL;
    struct key k;
    size_t i;
    int rc = GR_EINVAL;

    *out = NULL;
    arr = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(arr))
        goto out;
    ks = gr_xcalloc(1, sizeof(*ks));
    ks->keys = gr_xcalloc(GR_AUTH_KEYS_MAX, sizeof(*ks->keys));
    json_array_foreach(arr, i, jwk)
    {
        if (ks->n == GR_AUTH_KEYS_MAX)
            break;
        if (jwk_to_key(jwk, &k) < 0)
            continue;
        if (keyset_find(ks, k.kid)) {
            gr_free(k.kid);
            EVP_PKEY_free(k.pkey);
            continue;
        }
        ks->keys[ks->n++] = k;
    }
    ks->refs = 1;
    *out = ks;
    ks = NULL;
    rc = 0;
out:
    keyset_free(ks);
    json_decref(root);
    return rc;
}

/* ---- fetching ---------------------------------------------------------------------------- */

static int read_file(const char *path, struct gr_buf *out, const char **why)
{
    int rc = gr_buf_read_file(out, path);

    if (rc == GR_ETOOBIG)
        *why = "file too large";
    else if (rc < 0)
        *why = "cannot read file (missing, not a regular file, or a read error)";
    return rc;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct gr_buf *b = ud;

    if (gr_buf_append(b, p, size * nmemb) < 0)
        return 0; /* aborts the transfer: too large */
    return size * nmemb;
}

static int fetch_http(const char *url, struct gr_buf *out, const char **why)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    CURLcode res;
    long status = 0;
    int rc = GR_EIO;

    *why = "curl init failed";
    if (!c)
        goto out;
    hdrs = curl_slist_append(NULL, "Accept: application/jwk-set+json, application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)GR_AUTH_FETCH_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)GR_AUTH_FETCH_MS);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE, (long)GR_AUTH_JWKS_MAX);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gravity-gr-auth");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    res = curl_easy_perform(c);
    if (res != CURLE_OK) {
        *why = curl_easy_strerror(res);
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    *why = "http status is not 200";
    if (status != 200)
        goto out;
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    if (c)
        curl_easy_cleanup(c);
    return rc;
}

/*
 * Loads the JWKS unless one was tried less than the retry interval ago (GR_AUTH_REFETCH_S once
 * keys exist, GR_AUTH_RETRY_MS before). Only the thread that wins the right to fetch does so,
 * without holding the mutex; threads arriving while it runs wait for its result (bounded by
 * the fetch timeout), so the first burst of tokens after start-up is not refused.
 */
static void keys_refresh(struct gr_auth *au)
{
    struct gr_buf doc;
    struct keyset *ks = NULL, *old = NULL;
    const char *why = "";
    char nkeys[24] = "";
    int64_t now, interval;
    int rc;

    if (au->src == SRC_STATIC)
        return;
    pthread_mutex_lock(&au->mu);
    now = gr_time_now_ms();
    interval = au->keys ? (int64_t)GR_AUTH_REFETCH_S * 1000 : GR_AUTH_RETRY_MS;
    /* A clock moved backwards (tests) counts as "long enough ago". */
    if (au->fetching) {
        while (au->fetching)
            pthread_cond_wait(&au->cv, &au->mu);
        pthread_mutex_unlock(&au->mu);
        return;
    }
    if (au->tried && now >= au->last_try_ms && now - au->last_try_ms < interval) {
        pthread_mutex_unlock(&au->mu);
        return;
    }
    au->fetching = true;
    au->tried = true;
    au->last_try_ms = now;
    au->fetches++;
    pthread_mutex_unlock(&au->mu);

    gr_buf_init(&doc, GR_AUTH_JWKS_MAX);
    if (au->src == SRC_FILE)
        rc = read_file(au->url, &doc, &why);
    else
        rc = fetch_http(au->url, &doc, &why);
    if (rc == 0) {
        rc = jwks_parse(gr_buf_cstr(&doc), doc.len, &ks);
        why = "not a JWKS document";
    }
    gr_buf_release(&doc);

    pthread_mutex_lock(&au->mu);
    if (rc == 0) {
        old = au->keys;
        au->keys = ks;
        if (old && --old->refs > 0)
            old = NULL; /* the last reader frees it */
        snprintf(nkeys, sizeof(nkeys), "%zu", ks->n);
    }
    au->fetching = false;
    pthread_cond_broadcast(&au->cv);
    pthread_mutex_unlock(&au->mu);
    keyset_free(old);
    if (rc < 0) {
        gr_log_warn("jwks load failed", "url", au->url, "error", why);
    } else {
        gr_log_info("jwks loaded", "url", au->url, "keys", nkeys);
    }
}

static struct keyset *keys_acquire(struct gr_auth *au)
{
    struct keyset *ks;

    pthread_mutex_lock(&au->mu);
    ks = au->keys;
    if (ks)
        ks->refs++;
    pthread_mutex_unlock(&au->mu);
    return ks;
}

static void keys_release(struct gr_auth *au, struct keyset *ks)
{
    bool last;

    if (!ks)
        return;
    pthread_mutex_lock(&au->mu);
    last = --ks->refs == 0;
    pthread_mutex_unlock(&au->mu);
    if (last)
        keyset_free(ks);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static struct gr_auth *auth_alloc(enum source src, const char *url, const char *issuer,
                                  const char *audience)
{
    struct gr_auth *au = gr_xcalloc(1, sizeof(*au));

    au->src = src;
    au->url = gr_xstrdup(url ? url : "");
    au->issuer = gr_xstrdup(issuer);
    au->audience = gr_xstrdup(audience);
    pthread_mutex_init(&au->mu, NULL);
    pthread_cond_init(&au->cv, NULL);
    vcache_init(&au->cache);
    return au;
}

/* Checks @url; on success *@src and *@target (the URL or the file path) are set. */
static int parse_url(const char *url, enum source *src, const char **target, char *err,
                     size_t errlen)
{
    size_t i, len, slen;

    if (!url || !url[0]) {
        snprintf(err, errlen, "JWKS_URL is empty");
        return GR_ECONFIG;
    }
    len = strlen(url);
    if (len > URL_MAX) {
        snprintf(err, errlen, "JWKS_URL is longer than %d bytes", URL_MAX);
        return GR_ECONFIG;
    }
    for (i = 0; i < len; i++) {
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f) {
            snprintf(err, errlen, "JWKS_URL has a space or non-ASCII byte at offset %zu", i);
            return GR_ECONFIG;
        }
    }
    if (strncasecmp(url, "file://", 7) == 0) {
        *target = url + 7;
        if (url[7] != '/' || url[8] == '\0' || url[len - 1] == '/') {
            snprintf(err, errlen, "JWKS_URL '%s' is not file:///absolute/path.json (bad path '%s')",
                     url, url + 7);
            return GR_ECONFIG;
        }
        *src = SRC_FILE;
        return 0;
    }
    slen = strncasecmp(url, "http://", 7) == 0 ? 7 : strncasecmp(url, "https://", 8) == 0 ? 8 : 0;
    if (slen == 0) {
        slen = strcspn(url, ":");
        snprintf(err, errlen, "JWKS_URL has unsupported scheme '%.*s' (want http, https or file)",
                 (int)(slen > 16 ? 16 : slen), url);
        return GR_ECONFIG;
    }
    if (url[slen] == '\0' || url[slen] == '/' || url[slen] == '?' || url[slen] == '#') {
        snprintf(err, errlen, "JWKS_URL '%s' has no host", url);
        return GR_ECONFIG;
    }
    *src = SRC_HTTP;
    *target = url;
    return 0;
}

int gr_auth_new(const char *jwks_url, const char *issuer, const char *audience,
                struct gr_auth **out, char *err, size_t errlen)
{
    enum source src = SRC_FILE;
    const char *target = NULL;
    char dummy[1];
    int rc;

    *out = NULL;
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    rc = parse_url(jwks_url, &src, &target, err, errlen);
    if (rc < 0)
        return rc;
    if (!issuer || !issuer[0]) {
        snprintf(err, errlen, "JWT_ISSUER is empty");
        return GR_ECONFIG;
    }
    if (!audience || !audience[0]) {
        snprintf(err, errlen, "JWT_AUDIENCE is empty");
        return GR_ECONFIG;
    }
    if (src == SRC_HTTP)
        pthread_once(&curl_once, curl_setup);
    *out = auth_alloc(src, target, issuer, audience);
    return 0;
}

int gr_auth_set_jwks(struct gr_auth *au, const char *jwks_json, size_t len)
{
    struct keyset *ks = NULL, *old;
    int rc;

    if (!au || !jwks_json || len > GR_AUTH_JWKS_MAX)
        return GR_EINVAL;
    rc = jwks_parse(jwks_json, len, &ks);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&au->mu);
    if (au->src != SRC_STATIC)
        au->src = SRC_STATIC; /* first call: before any thread verifies (see gr/auth.h) */
    old = au->keys;
    au->keys = ks;
    au->tried = true;
    if (old && --old->refs > 0)
        old = NULL; /* the last reader frees it */
    pthread_mutex_unlock(&au->mu);
    keyset_free(old);
    return 0;
}

int gr_auth_new_jwks(const char *jwks_json, size_t len, const char *issuer, const char *audience,
                     struct gr_auth **out)
{
    struct keyset *ks = NULL;
    int rc;

    *out = NULL;
    if (!jwks_json || !issuer || !issuer[0] || !audience || !audience[0] || len > GR_AUTH_JWKS_MAX)
        return GR_EINVAL;
    rc = jwks_parse(jwks_json, len, &ks);
    if (rc < 0)
        return rc;
    *out = auth_alloc(SRC_STATIC, NULL, issuer, audience);
    (*out)->keys = ks;
    (*out)->tried = true;
    return 0;
}

void gr_auth_free(struct gr_auth *au)
{
    if (!au)
        return;
    keyset_free(au->keys);
    pthread_mutex_destroy(&au->mu);
    pthread_cond_destroy(&au->cv);
    vcache_release(&au->cache);
    gr_free(au->url);
    gr_free(au->issuer);
    gr_free(au->audience);
    gr_free(au);
}

bool gr_auth_ready(struct gr_auth *au)
{
    struct keyset *ks = keys_acquire(au);

    if (!ks) {
        keys_refresh(au);
        ks = keys_acquire(au);
    }
    keys_release(au, ks);
    return ks != NULL;
}

void gr_auth_refetch(struct gr_auth *au)
{
    if (!au)
        return;
    pthread_mutex_lock(&au->mu);
    au->tried = false; /* lifts the refetch interval for the next fetch */
    pthread_mutex_unlock(&au->mu);
    keys_refresh(au);
}

unsigned gr_auth_fetch_count(struct gr_auth *au)
{
    unsigned n;

    pthread_mutex_lock(&au->mu);
    n = au->fetches;
    pthread_mutex_unlock(&au->mu);
    return n;
}

/* ---- verification ------------------------------------------------------------------------ */

static int check_header(json_t *h, int *alg, const char **kid, const char **why)
{
    static const char *const banned[] = { "jku", "x5u", "x5c", "jwk", "crit", "x5t", "x5t#S256" };
    const char *name, *typ;
    json_t *v;
    size_t i;

    *why = "header is not a JSON object";
    if (!json_is_object(h))
        return GR_EUNAUTH;
    *why = "forbidden header parameter";
    json_object_foreach(h, name, v)
    {
        for (i = 0; i < sizeof(banned) / sizeof(banned[0]); i++)
            if (strcmp(name, banned[i]) == 0)
                return GR_EUNAUTH;
    }
    *why = "alg not allowed";
    *alg = gr_auth__alg_parse(jstr(h, "alg"));
    if (*alg < 0)
        return GR_EUNAUTH;
    *why = "kid missing";
    *kid = jstr(h, "kid");
    if (!*kid || !(*kid)[0] || strlen(*kid) >= GR_AUTH_STR_MAX)
        return GR_EUNAUTH;
    *why = "typ is not at+jwt";
    typ = jstr(h, "typ");
    if (!typ || (strcasecmp(typ, "at+jwt") != 0 && strcasecmp(typ, "application/at+jwt") != 0))
        return GR_EUNAUTH;
    return 0;
}

/* Reads integer claim @name: 1 when present, 0 when absent, GR_EUNAUTH when not an integer. */
static int int_claim(const json_t *c, const char *name, long long *v)
{
    const json_t *j = json_object_get(c, name);

    if (!j)
        return 0;
    if (!json_is_integer(j))
        return GR_EUNAUTH;
    *v = json_integer_value(j);
    return 1;
}

/* Reads optional string claim @name (< GR_AUTH_STR_MAX bytes) into the arena. */
static int str_claim(const json_t *c, const char *name, struct gr_arena *a, const char **out)
{
    const json_t *j = json_object_get(c, name);

    *out = NULL;
    if (!j)
        return 0;
    if (!json_is_string(j) || json_string_length(j) >= GR_AUTH_STR_MAX)
        return GR_EUNAUTH;
    *out = gr_arena_strdup(a, json_string_value(j));
    return 0;
}

/* Reads an optional array of strings; absent gives an empty list. */
static int list_claim(const json_t *c, const char *name, struct gr_arena *a, const char ***out,
                      size_t *n)
{
    const json_t *arr = json_object_get(c, name), *v;
    size_t i, len;

    *out = NULL;
    *n = 0;
    if (!arr)
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > GR_AUTH_LIST_MAX)
        return GR_EUNAUTH;
    len = json_array_size(arr);
    *out = gr_arena_calloc(a, (len ? len : 1) * sizeof(**out));
    for (i = 0; i < len; i++) {
        v = json_array_get(arr, i);
        if (!json_is_string(v) || json_string_length(v) >= GR_AUTH_STR_MAX)
            return GR_EUNAUTH;
        (*out)[i] = gr_arena_strdup(a, json_string_value(v));
    }
    *n = len;
    return 0;
}

static bool aud_ok(const json_t *aud, const char *want)
{
    const json_t *v;
    size_t i;

    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (!json_is_array(aud) || json_array_size(aud) > GR_AUTH_LIST_MAX)
        return false;
    for (i = 0; i < json_array_size(aud); i++) {
        v = json_array_get(aud, i);
        if (!json_is_string(v))
            return false;
        if (strcmp(json_string_value(v), want) == 0)
            return true;
    }
    return false;
}

static int check_claims(const struct gr_auth *au, struct gr_arena *a, const json_t *c,
                        struct gr_principal *p, const char **why)
{
    long long now = (long long)gr_time_now_s(), exp = 0, nbf = 0, iat = 0;
    const char *iss;
    int rc;

    *why = "claims are not a JSON object";
    if (!json_is_object(c))
        return GR_EUNAUTH;
    *why = "wrong iss";
    iss = jstr(c, "iss");
    if (!iss || strcmp(iss, au->issuer) != 0)
        return GR_EUNAUTH;
    *why = "wrong aud";
    if (!aud_ok(json_object_get(c, "aud"), au->audience))
        return GR_EUNAUTH;
    *why = "exp missing or expired";
    if (int_claim(c, "exp", &exp) != 1 || exp <= now - GR_AUTH_LEEWAY_S)
        return GR_EUNAUTH;
    *why = "nbf in the future";
    rc = int_claim(c, "nbf", &nbf);
    if (rc < 0 || (rc == 1 && nbf > now + GR_AUTH_LEEWAY_S))
        return GR_EUNAUTH;
    *why = "iat in the future";
    rc = int_claim(c, "iat", &iat);
    if (rc < 0 || (rc == 1 && iat > now + GR_AUTH_LEEWAY_S))
        return GR_EUNAUTH;
    *why = "sub missing";
    if (str_claim(c, "sub", a, &p->sub) < 0 || !p->sub || !p->sub[0])
        return GR_EUNAUTH;
    *why = "bad jti";
    if (str_claim(c, "jti", a, &p->jti) < 0)
        return GR_EUNAUTH;
    *why = "bad roles or permissions";
    if (list_claim(c, "roles", a, &p->roles, &p->nroles) < 0 ||
        list_claim(c, "permissions", a, &p->perms, &p->nperms) < 0)
        return GR_EUNAUTH;
    p->exp = exp;
    return 0;
}

/* Splits @token into three non-empty parts; *d1 and *d2 point at the two dots. */
static int split(const char *token, size_t len, const char **d1, const char **d2)
{
    const char *end = token + len;

    *d1 = memchr(token, '.', len);
    if (!*d1)
        return GR_EUNAUTH;
    *d2 = memchr(*d1 + 1, '.', (size_t)(end - *d1 - 1));
    if (!*d2 || memchr(*d2 + 1, '.', (size_t)(end - *d2 - 1)))
        return GR_EUNAUTH;
    if (*d1 == token || *d2 == *d1 + 1 || *d2 + 1 == end)
        return GR_EUNAUTH;
    return 0;
}

int gr_auth_verify(struct gr_auth *au, struct gr_arena *a, const char *token, size_t len,
                   struct gr_principal *out)
{
    const char *d1, *d2, *kid, *why = "malformed token";
    unsigned char *buf = NULL, *hraw, *praw, *sraw;
    size_t hn = 0, pn = 0, sn = 0;
    json_t *hdr = NULL, *claims = NULL;
    json_error_t jerr;
    struct keyset *ks = NULL;
    const struct key *k;
    int alg = 0, rc = GR_EUNAUTH;

    memset(out, 0, sizeof(*out));
    if (!token || len == 0 || len > GR_AUTH_TOKEN_MAX || split(token, len, &d1, &d2) < 0)
        goto out;
    if (vcache_get(&au->cache, a, token, len, out))
        return 0;
    /* Decoded parts are shorter than their text, so one buffer of @len bytes holds all three. */
    buf = gr_xmalloc(len);
    hraw = buf;
    if (gr_b64url_decode(token, (size_t)(d1 - token), hraw, &hn) < 0)
        goto out;
    praw = hraw + hn;
    if (gr_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), praw, &pn) < 0)
        goto out;
    sraw = praw + pn;
    if (gr_b64url_decode(d2 + 1, (size_t)(token + len - d2 - 1), sraw, &sn) < 0)
        goto out;
    hdr = json_loadb((const char *)hraw, hn, JSON_REJECT_DUPLICATES, &jerr);
    if (check_header(hdr, &alg, &kid, &why) < 0)
        goto out;

    ks = keys_acquire(au);
    k = keyset_find(ks, kid);
    if (!k) {
        keys_release(au, ks);
        keys_refresh(au);
        ks = keys_acquire(au);
        if (!ks) {
            why = "jwks never loaded";
            rc = GR_EUNAVAIL;
            goto out;
        }
        why = "unknown kid";
        k = keyset_find(ks, kid);
        if (!k)
            goto out;
    }
    why = "alg does not match the key";
    /* k is non-NULL on every path here (both lookups jump to out when NULL). */
    /* cppcheck-suppress nullPointerRedundantCheck */
    if (k->alg != alg)
        goto out;
    why = "bad signature";
    if (gr_auth__verify_sig(k->pkey, alg, (const unsigned char *)token, (size_t)(d2 - token), sraw,
                            sn) < 0)
        goto out;
    claims = json_loadb((const char *)praw, pn, JSON_REJECT_DUPLICATES, &jerr);
    if (check_claims(au, a, claims, out, &why) < 0)
        goto out;
    vcache_put(&au->cache, token, len, out);
    rc = 0;
out:
    if (rc < 0) {
        memset(out, 0, sizeof(*out));
        if (gr_log_enabled(GR_LOG_DEBUG))
            gr_log_debug("token rejected", "reason", why);
    }
    keys_release(au, ks);
    json_decref(hdr);
    json_decref(claims);
    gr_free(buf);
    return rc;
}

/* ---- permissions ------------------------------------------------------------------------- */

bool gr_principal_can(const struct gr_principal *p, const char *perm)
{
    const char *q;
    size_t i, n;

    if (!p || !perm || !perm[0])
        return false;
    for (i = 0; i < p->nperms; i++) {
        q = p->perms[i];
        if (!q)
            continue;
        if (strcmp(q, "*") == 0 || strcmp(q, perm) == 0)
            return true;
        /* "products:*" grants "products:<anything non-empty>". */
        n = strlen(q);
        if (n >= 2 && q[n - 1] == '*' && q[n - 2] == ':' && strncmp(q, perm, n - 1) == 0 &&
            perm[n - 1] != '\0')
            return true;
    }
    return false;
}

bool gr_principal_has_role(const struct gr_principal *p, const char *role)
{
    size_t i;

    if (!p || !role)
        return false;
    for (i = 0; i < p->nroles; i++)
        if (p->roles[i] && strcmp(p->roles[i], role) == 0)
            return true;
    return false;
}
