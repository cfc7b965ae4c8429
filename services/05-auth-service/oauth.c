/*
 * oauth.c - login through an external provider (SERVICES §05), like Keycloak's identity
 * brokering: the OAuth 2.1 authorization code flow with PKCE (S256) and, for OpenID Connect
 * providers, a verified id_token.
 *
 *   GET …/oauth/{provider}/authorize[?redirect_uri=]  stores a pending authorization (state,
 *       PKCE verifier, OIDC nonce, redirect URI; 10 minutes) and answers 302 to the provider.
 *   GET …/oauth/{provider}/callback?code=&state=      consumes the state (single use), trades
 *       the code for tokens at the provider's token endpoint, verifies the identity (id_token
 *       signature against the provider's JWKS with alg pinned to RS256/ES256, iss, aud/azp,
 *       exp, iat, nbf, nonce; or GitHub's API for the primary verified email), finds or links
 *       the account and answers 200 with a new session (auth_issue_session).
 *
 * Configuration (environment; checked at start-up by auth_oauth_config_check, and again on
 * each request, where a bad provider answers 503 and the log names the variable):
 *   AUTH_OAUTH_PROVIDERS         comma list of provider names (a-z 0-9 _); unset: none
 *   AUTH_OAUTH_<NAME>_CLIENT_ID, _CLIENT_SECRET (required for the google and github presets)
 *   AUTH_OAUTH_<NAME>_REDIRECT_URI  our callback URL(s) registered at the provider, a comma
 *                                list; the first is the default, the others may be chosen with
 *                                ?redirect_uri= (exact match only)
 *   AUTH_OAUTH_<NAME>_TYPE       oidc | github (default: github for "github", else oidc)
 *   AUTH_OAUTH_<NAME>_AUTHORIZE_URL, _TOKEN_URL, _USERINFO_URL, _EMAILS_URL, _ISSUER,
 *   _JWKS_URL, _SCOPES           endpoints; the google and github presets fill them, and any
 *                                of them can be overridden (tests point google at a double).
 *                                OIDC takes the identity from the id_token (USERINFO_URL is
 *                                not called); github calls USERINFO_URL and EMAILS_URL
 *                                (default USERINFO_URL + "/emails").
 *   AUTH_OAUTH_<NAME>_TOKEN_AUTH client_secret_post (default) | client_secret_basic
 *   AUTH_OAUTH_TIMEOUT_MS        per outbound call, default 5000
 *   AUTH_OAUTH_ALLOW_HTTP        true allows plain http endpoints on any host (default: https,
 *                                or http on a loopback address only)
 *
 * Account linking: an existing link (provider, subject) logs its account in. Otherwise the
 * provider's verified email finds or creates the account (auth_account_for_email) and the
 * link is added. Two cases are refused rather than linked, because an email that nobody
 * verified is no proof of ownership: an account that has a password and an unverified email
 * (a "pre-hijacked" account: whoever registered it would keep the password), and an account
 * with TOTP (the provider cannot stand in for the second factor). A disabled account is
 * refused too.
 *
 * Every refusal is an RFC 9457 problem and changes nothing, except that a state once presented
 * with a code is spent whatever the outcome. Codes, tokens, secrets and the PKCE verifier are
 * never logged; the verifier is stored sealed (auth_seal) and the state only as its SHA-256.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/sha.h>

#include "auth.h"
#include "gr/buf.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"

/* Checks every configured provider; one line on stderr naming the variable. (For auth.h.) */

#define OAUTH_STATE_TTL_S   600
#define OAUTH_NAME_MAX      32
#define OAUTH_PROVIDERS_MAX 16
#define OAUTH_REDIRECTS_MAX 8
#define OAUTH_URL_MAX       2048
#define OAUTH_VALUE_MAX     1024 /* client id, client secret, scopes */
#define OAUTH_CODE_MAX      2048
#define OAUTH_ATOKEN_MAX    8192 /* the provider's access token */
#define OAUTH_SUB_MAX       255
#define OAUTH_FORM_MAX      (32 * 1024) /* > every bounded input percent-encoded (x3) */
#define OAUTH_TOKEN_RESP    (64 * 1024)
#define OAUTH_USER_RESP     (64 * 1024)
#define OAUTH_JWKS_RESP     GR_AUTH_JWKS_MAX
#define OAUTH_JWKS_KEYS     GR_AUTH_KEYS_MAX
#define OAUTH_AUD_MAX       32
#define OAUTH_EMAILS_MAX    100
#define OAUTH_TIMEOUT_MS    5000
#define OAUTH_UA            "gravity-auth-service/0.1"

enum { KIND_OIDC = 1, KIND_GITHUB = 2 };
enum { TOKEN_AUTH_POST = 1, TOKEN_AUTH_BASIC = 2 };
enum { ALG_RS256 = 1, ALG_ES256 = 2 };

/* One provider's configuration, read from the environment into the request arena. */
struct provider {
    const char *name; /* lowercase, as in the path */
    int kind;
    int token_auth;
    const char *client_id;
    const char *client_secret; /* NULL: a public client (PKCE only) */
    const char *redirects[OAUTH_REDIRECTS_MAX];
    size_t nredirects;
    const char *authorize_url, *token_url, *userinfo_url, *emails_url;
    const char *issuer, *issuer_alt, *jwks_url, *scopes;
    long timeout_ms;
};

struct preset {
    const char *name;
    int kind;
    const char *authorize_url, *token_url, *userinfo_url, *issuer, *issuer_alt, *jwks_url;
    const char *scopes;
};

/* clang-format off */
static const struct preset presets[] = {
    /* Google's id_tokens carry iss "https://accounts.google.com" or "accounts.google.com". */
    { "google", KIND_OIDC, "https://accounts.google.com/o/oauth2/v2/auth",
      "https://oauth2.googleapis.com/token", "https://openidconnect.googleapis.com/v1/userinfo",
      "https://accounts.google.com", "accounts.google.com",
      "https://www.googleapis.com/oauth2/v3/certs", "openid email profile" },
    { "github", KIND_GITHUB, "https://github.com/login/oauth/authorize",
      "https://github.com/login/oauth/access_token", "https://api.github.com/user",
      NULL, NULL, NULL, "read:user user:email" },
};
/* clang-format on */

/* The identity a provider vouches for (arena strings). */
struct ident {
    const char *sub;
    const char *email; /* as the provider gave it; NULL when none */
    bool verified;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > OAUTH_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* Visible ASCII only, @min..@max bytes: safe in a header, a form and a log-free detail. */
static bool visible(const char *s, size_t min, size_t max)
{
    size_t n = strlen(s);

    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static bool b64url_token(const char *s, size_t len)
{
    if (strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* application/x-www-form-urlencoded and URL query values: unreserved bytes stay, the rest %XX. */
static void pct(struct gr_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            gr_buf_putc(b, (char)c);
        } else {
            gr_buf_putc(b, '%');
            gr_buf_putc(b, hex[c >> 4]);
            gr_buf_putc(b, hex[c & 15]);
        }
    }
}

/*
 * Moves @b's text into the arena and wipes and releases @b. Callers size their buffers so that
 * the bounded inputs always fit (OAUTH_FORM_MAX).
 */
static const char *buf_take(struct gr_arena *a, struct gr_buf *b)
{
    const char *s = gr_arena_strndup(a, gr_buf_cstr(b), b->len);

    if (b->ptr)
        OPENSSL_cleanse(b->ptr, b->len); /* forms hold secrets */
    gr_buf_release(b);
    return s;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* A provider's error code, kept only if it looks like one (it ends up in a problem detail). */
static const char *err_code(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > 64)
        return "unknown";
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
            return "unknown";
    return s;
}

/* ---- configuration -------------------------------------------------------------------------- */

static const char *env_get(struct gr_arena *a, const char *name, const char *field,
                           const char **var)
{
    char *v = gr_arena_printf(a, "AUTH_OAUTH_%s_%s", name, field);
    const char *val;

    for (char *p = v; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    *var = v;
    val = getenv(v);
    return val && *val ? val : NULL;
}

static bool loopback(const char *host)
{
    static const char *const names[] = { "127.0.0.1", "localhost", "[::1]" };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t n = strlen(names[i]);

        if (strncmp(host, names[i], n) == 0 &&
            (host[n] == '\0' || host[n] == ':' || host[n] == '/' || host[n] == '?'))
            return true;
    }
    return false;
}

/* An absolute https URL (http only on loopback, or anywhere with AUTH_OAUTH_ALLOW_HTTP). */
static bool url_ok(const char *u, bool allow_http)
{
    const char *host;
    size_t hostlen;

    if (!visible(u, 10, OAUTH_URL_MAX) || strchr(u, '#'))
        return false;
    if (strncmp(u, "https://", 8) == 0)
        host = u + 8;
    else if (strncmp(u, "http://", 7) == 0)
        host = u + 7;
    else
        return false;
    hostlen = strcspn(host, "/?");
    if (hostlen == 0 || host[0] == ':' || memchr(host, '@', hostlen))
        return false;
    return host == u + 8 || allow_http || loopback(host);
}

static int cfg_fail(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);

/* Formats the one-line configuration error into @err; returns GR_ECONFIG. */
static int cfg_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return GR_ECONFIG;
}

/* Splits the comma list @s into at most @max trimmed, non-empty arena strings. */
static int split_list(struct gr_arena *a, const char *s, const char **out, size_t max, size_t *n)
{
    const char *p = s;

    *n = 0;
    while (*p) {
        size_t len = strcspn(p, ","), b = 0, e = len;

        while (b < e && (p[b] == ' ' || p[b] == '\t'))
            b++;
        while (e > b && (p[e - 1] == ' ' || p[e - 1] == '\t'))
            e--;
        if (e == b || *n == max)
            return GR_EINVAL;
        out[(*n)++] = gr_arena_strndup(a, p + b, e - b);
        p += len;
        if (*p == ',')
            p++;
    }
    return *n > 0 ? 0 : GR_EINVAL;
}

static int providers_list(struct gr_arena *a, const char **names, size_t *n, char *err,
                          size_t errlen)
{
    const char *list = getenv("AUTH_OAUTH_PROVIDERS");

    *n = 0;
    if (!list || !*list)
        return 0;
    if (split_list(a, list, names, OAUTH_PROVIDERS_MAX, n) < 0)
        return cfg_fail(err, errlen, "%s: must be a comma list of at most 16 names, got '%.64s'",
                        "AUTH_OAUTH_PROVIDERS", list);
    for (size_t i = 0; i < *n; i++) {
        char *low = gr_arena_strdup(a, names[i]);

        for (char *p = low; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
        if (!name_ok(low))
            return cfg_fail(err, errlen, "%s: '%.40s' is not a provider name (a-z 0-9 _, 1..32)",
                            "AUTH_OAUTH_PROVIDERS", names[i]);
        names[i] = low;
    }
    return 0;
}

/* An endpoint: the variable, else the preset's value; NULL when neither (not an error here). */
static int endpoint(struct gr_arena *a, const char *name, const char *field, const char *def,
                    bool allow_http, const char **out, char *err, size_t errlen)
{
    const char *var, *v = env_get(a, name, field, &var);

    *out = v ? v : def;
    if (*out && !url_ok(*out, allow_http))
        return cfg_fail(err, errlen,
                        "%s: must be an https URL (http only on 127.0.0.1/localhost unless "
                        "AUTH_OAUTH_ALLOW_HTTP=true), got '%.100s'",
                        var, *out);
    return 0;
}

static int require(const char *val, struct gr_arena *a, const char *name, const char *field,
                   char *err, size_t errlen)
{
    char *var = gr_arena_printf(a, "AUTH_OAUTH_%s_%s", name, field);

    if (val)
        return 0;
    for (char *p = var; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    return cfg_fail(err, errlen, "%s: is required", var);
}

static int global_opts(long *timeout_ms, bool *allow_http, char *err, size_t errlen)
{
    const char *t = getenv("AUTH_OAUTH_TIMEOUT_MS"), *h = getenv("AUTH_OAUTH_ALLOW_HTTP");

    *timeout_ms = OAUTH_TIMEOUT_MS;
    *allow_http = false;
    if (t && *t) {
        char *end;
        long v = strtol(t, &end, 10);

        if (*end || v < 100 || v > 60000)
            return cfg_fail(err, errlen, "%s: must be an integer in 100..60000, got '%.32s'",
                            "AUTH_OAUTH_TIMEOUT_MS", t);
        *timeout_ms = v;
    }
    if (h && *h) {
        if (strcmp(h, "true") == 0 || strcmp(h, "1") == 0 || strcmp(h, "yes") == 0)
            *allow_http = true;
        else if (strcmp(h, "false") != 0 && strcmp(h, "0") != 0 && strcmp(h, "no") != 0)
            return cfg_fail(err, errlen, "%s: must be true or false, got '%.32s'",
                            "AUTH_OAUTH_ALLOW_HTTP", h);
    }
    return 0;
}

/*
 * Loads provider @name (already lowercase and valid) into @p. GR_ENOTFOUND when it is not
 * listed in AUTH_OAUTH_PROVIDERS; GR_ECONFIG with one line in @err when its settings are bad.
 */
static int provider_load(struct gr_arena *a, const char *name, struct provider *p, char *err,
                         size_t errlen)
{
    const char *names[OAUTH_PROVIDERS_MAX], *var, *v, *redir;
    const struct preset *pre = NULL;
    bool listed = false, allow_http;
    size_t n;
    int rc;

    memset(p, 0, sizeof(*p));
    rc = providers_list(a, names, &n, err, errlen);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        listed = listed || strcmp(names[i], name) == 0;
    if (!listed)
        return GR_ENOTFOUND;
    rc = global_opts(&p->timeout_ms, &allow_http, err, errlen);
    if (rc < 0)
        return rc;
    p->name = name;
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        if (strcmp(presets[i].name, name) == 0)
            pre = &presets[i];
    p->kind = pre ? pre->kind : KIND_OIDC;
    v = env_get(a, name, "TYPE", &var);
    if (v && strcmp(v, "oidc") == 0)
        p->kind = KIND_OIDC;
    else if (v && strcmp(v, "github") == 0)
        p->kind = KIND_GITHUB;
    else if (v)
        return cfg_fail(err, errlen, "%s: must be oidc or github, got '%.32s'", var, v);
    /* A preset's issuer and JWKS only make sense for the kind it was made for. */
    if (pre && pre->kind != p->kind)
        pre = NULL;

    p->client_id = env_get(a, name, "CLIENT_ID", &var);
    if (p->client_id && !visible(p->client_id, 1, OAUTH_VALUE_MAX))
        return cfg_fail(err, errlen, "%s: must be 1..1024 visible ASCII characters", var);
    p->client_secret = env_get(a, name, "CLIENT_SECRET", &var);
    if (p->client_secret && !visible(p->client_secret, 1, OAUTH_VALUE_MAX))
        return cfg_fail(err, errlen, "%s: must be 1..1024 visible ASCII characters", var);
    p->scopes = env_get(a, name, "SCOPES", &var);
    if (!p->scopes)
        p->scopes = pre ? pre->scopes : "openid email";
    if (strlen(p->scopes) > OAUTH_VALUE_MAX || strspn(p->scopes, " ") == strlen(p->scopes))
        return cfg_fail(err, errlen, "%s: must be a space-separated scope list", var);
    if (p->kind == KIND_OIDC && !strstr(p->scopes, "openid"))
        return cfg_fail(err, errlen, "%s: must include openid for an OIDC provider", var);
    v = env_get(a, name, "TOKEN_AUTH", &var);
    p->token_auth = TOKEN_AUTH_POST;
    if (v && strcmp(v, "client_secret_basic") == 0)
        p->token_auth = TOKEN_AUTH_BASIC;
    else if (v && strcmp(v, "client_secret_post") != 0)
        return cfg_fail(err, errlen,
                        "%s: must be client_secret_post or client_secret_basic, got '%.32s'", var,
                        v);

    redir = env_get(a, name, "REDIRECT_URI", &var);
    if (redir) {
        if (split_list(a, redir, p->redirects, OAUTH_REDIRECTS_MAX, &p->nredirects) < 0)
            return cfg_fail(err, errlen, "%s: must be a comma list of at most 8 URLs", var);
        for (size_t i = 0; i < p->nredirects; i++)
            if (!url_ok(p->redirects[i], allow_http))
                return cfg_fail(err, errlen,
                                "%s: must be https URLs (http only on 127.0.0.1/localhost unless "
                                "AUTH_OAUTH_ALLOW_HTTP=true), got '%.100s'",
                                var, p->redirects[i]);
    }
    rc = endpoint(a, name, "AUTHORIZE_URL", pre ? pre->authorize_url : NULL, allow_http,
                  &p->authorize_url, err, errlen);
    if (rc == 0)
        rc = endpoint(a, name, "TOKEN_URL", pre ? pre->token_url : NULL, allow_http, &p->token_url,
                      err, errlen);
    if (rc == 0)
        rc = endpoint(a, name, "USERINFO_URL", pre ? pre->userinfo_url : NULL, allow_http,
                      &p->userinfo_url, err, errlen);
    if (rc == 0)
        rc = endpoint(a, name, "EMAILS_URL",
                      p->userinfo_url && p->kind == KIND_GITHUB
                          ? gr_arena_printf(a, "%s/emails", p->userinfo_url)
                          : NULL,
                      allow_http, &p->emails_url, err, errlen);
    if (rc == 0)
        rc = endpoint(a, name, "JWKS_URL", pre ? pre->jwks_url : NULL, allow_http, &p->jwks_url,
                      err, errlen);
    if (rc < 0)
        return rc;
    p->issuer = env_get(a, name, "ISSUER", &var);
    if (p->issuer && !visible(p->issuer, 1, OAUTH_URL_MAX))
        return cfg_fail(err, errlen, "%s: must be 1..2048 visible ASCII characters", var);
    if (!p->issuer && pre) {
        p->issuer = pre->issuer;
        p->issuer_alt = pre->issuer_alt;
    }

    rc = require(p->client_id, a, name, "CLIENT_ID", err, errlen);
    if (rc == 0 && pre)
        rc = require(p->client_secret, a, name, "CLIENT_SECRET", err, errlen);
    if (rc == 0)
        rc = require(redir, a, name, "REDIRECT_URI", err, errlen);
    if (rc == 0)
        rc = require(p->authorize_url, a, name, "AUTHORIZE_URL", err, errlen);
    if (rc == 0)
        rc = require(p->token_url, a, name, "TOKEN_URL", err, errlen);
    if (rc == 0 && p->kind == KIND_OIDC)
        rc = require(p->issuer, a, name, "ISSUER", err, errlen);
    if (rc == 0 && p->kind == KIND_OIDC)
        rc = require(p->jwks_url, a, name, "JWKS_URL", err, errlen);
    if (rc == 0 && p->kind == KIND_GITHUB)
        rc = require(p->userinfo_url, a, name, "USERINFO_URL", err, errlen);
    return rc;
}

int auth_oauth_config_check(void)
{
    const char *names[OAUTH_PROVIDERS_MAX];
    struct gr_arena a;
    struct provider p;
    char err[512];
    size_t n = 0;
    int rc;

    gr_arena_init(&a);
    rc = providers_list(&a, names, &n, err, sizeof(err));
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = provider_load(&a, names[i], &p, err, sizeof(err));
    if (rc < 0)
        fprintf(stderr, "05-auth-service: %s\n", err);
    gr_arena_release(&a);
    return rc < 0 ? GR_ECONFIG : 0;
}

/* The route's provider: 404 when it is not configured, 503 when its configuration is bad. */
static int provider_get(struct gr_req *req, struct gr_resp *resp, struct provider *p)
{
    const char *name = gr_req_param(req, "provider");
    char err[512];
    int rc;

    if (!name || !name_ok(name))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such OAuth provider");
    rc = provider_load(req->arena, name, p, err, sizeof(err));
    if (rc == GR_ENOTFOUND)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such OAuth provider");
    if (rc < 0) {
        gr_log_error("oauth provider misconfigured", "provider", name, "error", err);
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "oauth_provider_misconfigured",
                               "OAuth provider '%s' is misconfigured", name);
    }
    return 0;
}

/* ---- outbound HTTP -------------------------------------------------------------------------- */

struct sink {
    struct gr_buf b;
    bool toobig;
};

static size_t sink_write(char *ptr, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;

    if (gr_buf_append(&s->b, ptr, size * n) < 0) {
        s->toobig = true;
        return 0;
    }
    return size * n;
}

/*
 * One call to the provider: a form POST when @form is non-NULL, else a GET; @headers is a
 * NULL-terminated list. The response body (at most @max bytes) comes back NUL-terminated in
 * the arena, with its status. Redirects are not followed. Errors: GR_ETOOBIG (body over @max),
 * GR_ETIMEOUT, GR_EUNAVAIL (anything else on the way), each logged without the URL's query.
 */
static int http_call(struct gr_req *req, const struct provider *p, const char *what,
                     const char *url, const char *form, const char *const *headers, size_t max,
                     long *status, struct gr_str *body)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL, *t;
    struct sink s = { .toobig = false };
    CURLcode cc = CURLE_FAILED_INIT;
    int rc = GR_EUNAVAIL;

    gr_buf_init(&s.b, max);
    *status = 0;
    if (!c)
        goto out;
    for (size_t i = 0; headers && headers[i]; i++) {
        t = curl_slist_append(h, headers[i]);
        if (!t)
            goto out;
        h = t;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_USERAGENT, OAUTH_UA);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, p->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, p->timeout_ms < 3000 ? p->timeout_ms : 3000L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    if (form) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(form));
    }
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
        body->len = s.b.len;
        body->ptr = gr_arena_strndup(req->arena, gr_buf_cstr(&s.b), s.b.len);
        rc = 0;
    } else if (s.toobig || cc == CURLE_FILESIZE_EXCEEDED) {
        rc = GR_ETOOBIG;
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = GR_ETIMEOUT;
    }
out:
    if (rc < 0)
        gr_log_warn("oauth provider call failed", "provider", p->name, "endpoint", what, "error",
                    rc == GR_ETOOBIG ? "response too large" : curl_easy_strerror(cc));
    curl_slist_free_all(h);
    if (c)
        curl_easy_cleanup(c);
    if (s.b.ptr)
        OPENSSL_cleanse(s.b.ptr, s.b.len); /* token responses */
    gr_buf_release(&s.b);
    return rc;
}

static json_t *parse_json(struct gr_req *req, struct gr_str body)
{
    json_t *j = NULL;

    if (gr_json_parse(req->arena, body.ptr, body.len, &j, NULL) < 0)
        return NULL;
    return j;
}

static int provider_down(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                         const char *what)
{
    gr_log_warn("oauth provider unusable", "provider", p->name, "reason", what);
    return gr_resp_problem(req, resp, GR_EUNAVAIL, "oauth_provider_unavailable",
                           "the %s provider did not answer usably (%s); try again later", p->name,
                           what);
}

/* ---- id_token verification ------------------------------------------------------------------ */

static int b64_part(struct gr_arena *a, const char *s, size_t n, unsigned char **out,
                    size_t *outlen)
{
    unsigned char *buf = gr_arena_alloc(a, n * 3 / 4 + 1);

    if (n == 0 || gr_b64url_decode(s, n, buf, outlen) < 0)
        return GR_EINVAL;
    buf[*outlen] = 0;
    *out = buf;
    return 0;
}

static int b64_member(struct gr_arena *a, json_t *jwk, const char *name, unsigned char **out,
                      size_t *n, size_t max)
{
    const char *s = jstr(jwk, name);
    size_t len = s ? strlen(s) : 0;

    if (len == 0 || len * 3 / 4 > max)
        return GR_EINVAL;
    return b64_part(a, s, len, out, n);
}

static int pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **pk)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    int rc = GR_EINVAL;

    if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, pk, EVP_PKEY_PUBLIC_KEY, params) == 1)
        rc = 0;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return rc;
}

/* RSA of 2048..8192 bits from a JWK's n and e. */
static int rsa_pkey(struct gr_arena *a, json_t *jwk, EVP_PKEY **pk)
{
    unsigned char *nb, *eb;
    size_t nn = 0, en = 0;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int rc = GR_EINVAL;

    if (b64_member(a, jwk, "n", &nb, &nn, 1024) < 0 || b64_member(a, jwk, "e", &eb, &en, 8) < 0)
        goto out;
    n = BN_bin2bn(nb, (int)nn, NULL);
    e = BN_bin2bn(eb, (int)en, NULL);
    if (!n || !e || BN_num_bits(n) < 2048 || BN_is_zero(e) || !BN_is_odd(e) || BN_is_one(e))
        goto out;
    bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        rc = pkey_fromdata("RSA", bld, pk);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return rc;
}

/* A P-256 point from a JWK's x and y, checked to lie on the curve. */
static int ec_pkey(struct gr_arena *a, json_t *jwk, EVP_PKEY **pk)
{
    unsigned char pt[65], *x, *y;
    size_t xn = 0, yn = 0;
    const char *crv = jstr(jwk, "crv");
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *chk = NULL;
    int rc = GR_EINVAL;

    if (!crv || strcmp(crv, "P-256") != 0 || b64_member(a, jwk, "x", &x, &xn, 32) < 0 ||
        b64_member(a, jwk, "y", &y, &yn, 32) < 0 || xn != 32 || yn != 32)
        goto out;
    pt[0] = 0x04; /* uncompressed */
    memcpy(pt + 1, x, 32);
    memcpy(pt + 33, y, 32);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)))
        goto out;
    rc = pkey_fromdata("EC", bld, pk);
    if (rc < 0)
        goto out;
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

/* SHA-256 signature check; ES256 signatures are JOSE r||s (64 bytes), RS256 PKCS#1 v1.5. */
static bool sig_ok(EVP_PKEY *pk, int alg, const char *msg, size_t n, const unsigned char *sig,
                   size_t siglen)
{
    EVP_MD_CTX *md = NULL;
    ECDSA_SIG *es = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    const unsigned char *vsig = sig;
    size_t vlen = siglen;
    bool ok = false;

    if (alg == ALG_ES256) {
        int dlen;

        if (siglen != 64)
            goto out;
        es = ECDSA_SIG_new();
        r = BN_bin2bn(sig, 32, NULL);
        s = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1)
            goto out;
        r = s = NULL; /* es owns them now */
        dlen = i2d_ECDSA_SIG(es, &der);
        if (dlen <= 0)
            goto out;
        vsig = der;
        vlen = (size_t)dlen;
    } else if (EVP_PKEY_get_size(pk) <= 0 || siglen != (size_t)EVP_PKEY_get_size(pk)) {
        goto out;
    }
    md = EVP_MD_CTX_new();
    ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
         EVP_DigestVerify(md, vsig, vlen, (const unsigned char *)msg, n) == 1;
out:
    EVP_MD_CTX_free(md);
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(s);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

/*
 * The provider's key for (@alg, @kid) from its JWKS, fetched now (so a rotation is seen at
 * once). A token without kid is accepted only when exactly one key of its type is published.
 * GR_EUNAVAIL when the JWKS cannot be had, GR_EUNAUTH (with *@why) when no key fits.
 */
static int jwks_key(struct gr_req *req, const struct provider *p, int alg, const char *kid,
                    EVP_PKEY **pk, const char **why)
{
    static const char *const hdrs[] = { "Accept: application/json", NULL };
    const char *kty = alg == ALG_RS256 ? "RSA" : "EC";
    const char *algname = alg == ALG_RS256 ? "RS256" : "ES256";
    json_t *doc, *keys, *jwk, *chosen = NULL;
    struct gr_str body;
    size_t i, candidates = 0;
    long status;
    int rc;

    rc = http_call(req, p, "jwks", p->jwks_url, NULL, hdrs, OAUTH_JWKS_RESP, &status, &body);
    if (rc < 0 || status != 200) {
        *why = "the provider's JWKS could not be fetched";
        return GR_EUNAVAIL;
    }
    doc = parse_json(req, body);
    keys = json_object_get(doc, "keys");
    if (!json_is_object(doc) || !json_is_array(keys)) {
        *why = "the provider's JWKS is not a key set";
        return GR_EUNAVAIL;
    }
    json_array_foreach(keys, i, jwk)
    {
        const char *k = jstr(jwk, "kid"), *use = jstr(jwk, "use"), *ka = jstr(jwk, "alg");

        if (i >= OAUTH_JWKS_KEYS)
            break;
        if (!json_is_object(jwk) || !jstr(jwk, "kty") || strcmp(jstr(jwk, "kty"), kty) != 0)
            continue;
        if (kid && (!k || strcmp(k, kid) != 0))
            continue;
        if ((json_object_get(jwk, "use") && (!use || strcmp(use, "sig") != 0)) ||
            (json_object_get(jwk, "alg") && (!ka || strcmp(ka, algname) != 0)))
            continue;
        candidates++;
        chosen = jwk;
        if (kid)
            break;
    }
    if (!chosen || (!kid && candidates > 1)) {
        *why = chosen ? "the id_token has no kid and the JWKS has several keys"
                      : "no key of the provider's JWKS matches the id_token";
        return GR_EUNAUTH;
    }
    rc = alg == ALG_RS256 ? rsa_pkey(req->arena, chosen, pk) : ec_pkey(req->arena, chosen, pk);
    ERR_clear_error();
    if (rc < 0) {
        *why = "the provider's key for the id_token is unusable";
        return GR_EUNAUTH;
    }
    return 0;
}

static int refuse(const char **why, const char *msg)
{
    *why = msg;
    return GR_EUNAUTH;
}

/* OIDC Core 3.1.3.7 checks on the verified claims. 0, or GR_EUNAUTH with *@why. */
static int claims_check(const struct provider *p, json_t *c, const char *nonce, struct ident *id,
                        const char **why)
{
    const long long now = gr_time_now_s(), leeway = GR_AUTH_LEEWAY_S;
    const char *iss = jstr(c, "iss"), *tn = jstr(c, "nonce"), *sub = jstr(c, "sub");
    json_t *aud = json_object_get(c, "aud"), *azp = json_object_get(c, "azp"), *v;
    json_t *exp = json_object_get(c, "exp"), *iat = json_object_get(c, "iat");
    json_t *nbf = json_object_get(c, "nbf"), *ev = json_object_get(c, "email_verified");
    bool aud_ok = false;
    size_t naud = 0, i;

    if (!iss || (strcmp(iss, p->issuer) != 0 && !(p->issuer_alt && !strcmp(iss, p->issuer_alt))))
        return refuse(why, "iss is not the provider's issuer");
    if (json_is_string(aud)) {
        naud = 1;
        aud_ok = strcmp(json_string_value(aud), p->client_id) == 0;
    } else if (json_is_array(aud) && json_array_size(aud) <= OAUTH_AUD_MAX) {
        naud = json_array_size(aud);
        json_array_foreach(aud, i, v)
        {
            if (!json_is_string(v))
                return refuse(why, "aud holds a non-string");
            aud_ok = aud_ok || strcmp(json_string_value(v), p->client_id) == 0;
        }
    }
    if (!aud_ok)
        return refuse(why, "aud does not name our client id");
    if (azp && (!json_is_string(azp) || strcmp(json_string_value(azp), p->client_id) != 0))
        return refuse(why, "azp is not our client id");
    if (naud > 1 && !azp)
        return refuse(why, "several audiences and no azp");
    if (!json_is_integer(exp) || json_integer_value(exp) <= now - leeway)
        return refuse(why, "the id_token has expired");
    if (!json_is_integer(iat) || json_integer_value(iat) > now + leeway)
        return refuse(why, "iat is missing or in the future");
    if (nbf && (!json_is_integer(nbf) || json_integer_value(nbf) > now + leeway))
        return refuse(why, "the id_token is not valid yet");
    if (!nonce || !tn || strlen(tn) != strlen(nonce) ||
        CRYPTO_memcmp(tn, nonce, strlen(nonce)) != 0)
        return refuse(why, "nonce does not match the authorization request");
    if (!sub || !*sub || strlen(sub) > OAUTH_SUB_MAX)
        return refuse(why, "sub is missing or too long");
    id->sub = sub;
    id->email = jstr(c, "email");
    /* Google sent email_verified as the string "true" in older tokens. */
    id->verified =
        json_is_true(ev) || (json_is_string(ev) && !strcmp(json_string_value(ev), "true"));
    return 0;
}

/* Verifies the compact JWS @tok as this provider's id_token for @nonce and takes its identity. */
static int idtoken_verify(struct gr_req *req, const struct provider *p, const char *tok,
                          const char *nonce, struct ident *id, const char **why)
{
    const char *d1, *d2, *alg_s;
    unsigned char *hb, *pb, *sb;
    size_t n = strlen(tok), hl, pl, sl;
    json_t *hdr = NULL, *claims = NULL, *kid;
    EVP_PKEY *pk = NULL;
    int alg, rc;

    *why = "the id_token is not a compact JWS";
    d1 = n <= GR_AUTH_TOKEN_MAX ? memchr(tok, '.', n) : NULL;
    d2 = d1 ? memchr(d1 + 1, '.', (size_t)(tok + n - d1 - 1)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', (size_t)(tok + n - d2 - 1)))
        return GR_EUNAUTH;
    if (b64_part(req->arena, tok, (size_t)(d1 - tok), &hb, &hl) < 0 ||
        b64_part(req->arena, d1 + 1, (size_t)(d2 - d1 - 1), &pb, &pl) < 0 ||
        b64_part(req->arena, d2 + 1, (size_t)(tok + n - d2 - 1), &sb, &sl) < 0 ||
        gr_json_parse(req->arena, (const char *)hb, hl, &hdr, NULL) < 0 ||
        gr_json_parse(req->arena, (const char *)pb, pl, &claims, NULL) < 0 ||
        !json_is_object(hdr) || !json_is_object(claims))
        return GR_EUNAUTH;
    alg_s = jstr(hdr, "alg");
    alg = alg_s && !strcmp(alg_s, "RS256")   ? ALG_RS256
          : alg_s && !strcmp(alg_s, "ES256") ? ALG_ES256
                                             : 0;
    kid = json_object_get(hdr, "kid");
    if (!alg)
        return refuse(why, "the id_token's alg is not RS256 or ES256");
    if (json_object_get(hdr, "crit") || (kid && !json_is_string(kid)))
        return refuse(why, "the id_token's header is not acceptable");
    rc = jwks_key(req, p, alg, json_string_value(kid), &pk, why);
    if (rc < 0)
        return rc;
    if (!sig_ok(pk, alg, tok, (size_t)(d2 - tok), sb, sl)) {
        EVP_PKEY_free(pk);
        return refuse(why, "the id_token's signature is invalid");
    }
    EVP_PKEY_free(pk);
    return claims_check(p, claims, nonce, id, why);
}

/* ---- the provider calls --------------------------------------------------------------------- */

/* Trades the code at the token endpoint; *@at and (OIDC) *@idt are arena strings. */
static int exchange(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                    const char *code, const char *verifier, const char *redirect, const char **at,
                    const char **idt)
{
    const char *hdrs[4] = { "Accept: application/json",
                            "Content-Type: application/x-www-form-urlencoded", NULL, NULL };
    struct gr_buf f = GR_BUF_INIT;
    const char *form, *e;
    struct gr_str body;
    json_t *j;
    long status;
    int rc;

    gr_buf_init(&f, OAUTH_FORM_MAX);
    gr_buf_puts(&f, "grant_type=authorization_code&code=");
    pct(&f, code);
    gr_buf_puts(&f, "&redirect_uri=");
    pct(&f, redirect);
    gr_buf_puts(&f, "&code_verifier=");
    pct(&f, verifier);
    if (p->token_auth == TOKEN_AUTH_BASIC && p->client_secret) {
        /* RFC 6749 2.3.1: both parts form-encoded, then base64. */
        struct gr_buf cred = GR_BUF_INIT;
        const char *c;
        unsigned char *b64;

        gr_buf_init(&cred, OAUTH_FORM_MAX);
        pct(&cred, p->client_id);
        gr_buf_putc(&cred, ':');
        pct(&cred, p->client_secret);
        c = buf_take(req->arena, &cred);
        b64 = gr_arena_alloc(req->arena, (strlen(c) + 2) / 3 * 4 + 1);
        EVP_EncodeBlock(b64, (const unsigned char *)c, (int)strlen(c));
        hdrs[2] = gr_arena_printf(req->arena, "Authorization: Basic %s", b64);
    } else {
        gr_buf_puts(&f, "&client_id=");
        pct(&f, p->client_id);
        if (p->client_secret) {
            gr_buf_puts(&f, "&client_secret=");
            pct(&f, p->client_secret);
        }
    }
    form = buf_take(req->arena, &f);
    rc = http_call(req, p, "token", p->token_url, form, hdrs, OAUTH_TOKEN_RESP, &status, &body);
    if (rc < 0)
        return provider_down(req, resp, p, "token endpoint unreachable");
    j = parse_json(req, body);
    e = json_is_object(j) ? jstr(j, "error") : NULL;
    if (e && (!strcmp(e, "invalid_client") || !strcmp(e, "unauthorized_client"))) {
        gr_log_error("oauth provider refused our client credentials", "provider", p->name);
        return provider_down(req, resp, p, "client credentials refused");
    }
    /* RFC 6749 5.2 errors come as 400 (401 for client authentication); GitHub reports a bad
     * code as 200 {"error": ...}. Anything else is the provider's trouble, not the user's. */
    if (e && (status == 400 || status == 401 || status == 200)) {
        gr_log_info("oauth code exchange refused", "provider", p->name, "error", err_code(e));
        return gr_resp_problem(req, resp, GR_EUNAUTH, "oauth_exchange_failed",
                               "the %s provider refused the authorization code ('%s')", p->name,
                               err_code(e));
    }
    if (status != 200 || !json_is_object(j))
        return provider_down(req, resp, p, "bad token endpoint response");
    *at = jstr(j, "access_token");
    *idt = jstr(j, "id_token");
    if (!*at || !visible(*at, 1, OAUTH_ATOKEN_MAX))
        return provider_down(req, resp, p, "no usable access_token");
    if (p->kind == KIND_OIDC && !*idt)
        return provider_down(req, resp, p, "no id_token");
    return 0;
}

/* GitHub: the user's id and primary verified email through its API. */
static int github_ident(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                        const char *at, struct ident *id)
{
    const char *hdrs[] = { "Accept: application/vnd.github+json",
                           "X-GitHub-Api-Version: 2022-11-28",
                           gr_arena_printf(req->arena, "Authorization: Bearer %s", at), NULL };
    struct gr_str body;
    json_t *u, *emails, *e, *uid;
    long status;
    size_t i;
    int rc;

    rc =
        http_call(req, p, "userinfo", p->userinfo_url, NULL, hdrs, OAUTH_USER_RESP, &status, &body);
    u = rc == 0 && status == 200 ? parse_json(req, body) : NULL;
    uid = json_object_get(u, "id");
    if (json_is_integer(uid) && json_integer_value(uid) > 0)
        id->sub = gr_arena_printf(req->arena, "%lld", (long long)json_integer_value(uid));
    else if (json_is_string(uid) && visible(json_string_value(uid), 1, OAUTH_SUB_MAX))
        id->sub = json_string_value(uid);
    else
        return provider_down(req, resp, p, "no user id from the user endpoint");
    rc = http_call(req, p, "emails", p->emails_url, NULL, hdrs, OAUTH_USER_RESP, &status, &body);
    emails = rc == 0 && status == 200 ? parse_json(req, body) : NULL;
    if (!json_is_array(emails))
        return provider_down(req, resp, p, "no email list from the emails endpoint");
    json_array_foreach(emails, i, e)
    {
        if (i >= OAUTH_EMAILS_MAX)
            break;
        if (json_is_true(json_object_get(e, "primary")) && jstr(e, "email")) {
            id->email = jstr(e, "email");
            id->verified = json_is_true(json_object_get(e, "verified"));
            break;
        }
    }
    return 0;
}

/* ---- accounts ------------------------------------------------------------------------------- */

/* Refuses a disabled account and one with TOTP (see the file comment). */
static int account_usable(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                          const char *status, long long totp)
{
    if (strcmp(status, "active") != 0)
        return gr_resp_problem(req, resp, GR_EUNAUTH, "account_disabled",
                               "this account is disabled");
    if (totp) {
        gr_log_info("oauth login refused: account uses totp", "provider", p->name);
        return gr_resp_problem(req, resp, GR_EUNAUTH, "mfa_required",
                               "this account uses TOTP: log in with its password and code");
    }
    return 0;
}

/* The account of (provider, subject), linking it by verified @email on first use. */
static int account_for(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                       const char *sub, const char *email, const char **user_id)
{
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    long long added = 0;
    const char *uid = NULL;
    int rc;

    rc = gr_db_query(req->db, req->arena,
                     "SELECT o.user_id, c.status, c.totp_enabled FROM oauth_accounts o"
                     " JOIN credentials c ON c.id = o.user_id"
                     " WHERE o.provider = $1 AND o.subject = $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(p->name), GR_DB_TEXT(sub) }, 2, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        rc = account_usable(req, resp, p, gr_db_text(rows, 0, 1), gr_db_int(rows, 0, 2));
        *user_id = gr_db_text(rows, 0, 0);
        return rc;
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, status, totp_enabled, password_hash IS NOT NULL, email_verified"
                     " FROM credentials WHERE email = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(email) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        rc = account_usable(req, resp, p, gr_db_text(rows, 0, 1), gr_db_int(rows, 0, 2));
        if (rc < 0)
            return rc;
        if (gr_db_int(rows, 0, 3) && !gr_db_int(rows, 0, 4)) {
            gr_log_info("oauth link refused: password account with unverified email", "provider",
                        p->name);
            return gr_resp_problem(req, resp, GR_ECONFLICT, "account_exists",
                                   "an account with this email has a password and an unverified "
                                   "email: log in with the password instead");
        }
    }
    rc = auth_account_for_email(req, email, &uid);
    if (rc < 0)
        return rc;
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO oauth_accounts (provider, subject, user_id, created_at)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (provider, subject) DO NOTHING",
                        (struct gr_db_val[]){ GR_DB_TEXT(p->name), GR_DB_TEXT(sub), GR_DB_TEXT(uid),
                                              GR_DB_TEXT(now) },
                        4, &added);
    /* The provider verified the address: the account's email is verified from now on. */
    if (rc == 0 && added)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET email_verified = 1, updated_at = $2"
                        " WHERE id = $1 AND email_verified = 0",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now) }, 2, NULL);
    if (rc == 0 && !added) /* a parallel first login linked it: use its link */
        rc = gr_db_query(req->db, req->arena,
                         "SELECT user_id FROM oauth_accounts WHERE provider = $1 AND subject = $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(p->name), GR_DB_TEXT(sub) }, 2, &rows);
    if (rc == 0 && !added && gr_db_nrows(rows) > 0)
        uid = gr_db_text(rows, 0, 0);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    if (added)
        gr_log_info("oauth account linked", "provider", p->name, "user_id", uid);
    *user_id = uid;
    return 0;
}

/* ---- handlers ------------------------------------------------------------------------------- */

/* GET /api/v1/auth/oauth/{provider}/authorize[?redirect_uri=] → 302 to the provider */
int auth_oauth_authorize(struct gr_req *req, struct gr_resp *resp)
{
    struct auth_app *app = req->app;
    const char *want = gr_req_query(req, "redirect_uri"), *redirect = NULL, *sealed = NULL;
    const char *url, *challenge;
    char state[AUTH_TOKEN_B64 + 1], verifier[AUTH_TOKEN_B64 + 1], nonce[AUTH_TOKEN_B64 + 1];
    char hash[AUTH_SHA256_HEX];
    unsigned char dig[SHA256_DIGEST_LENGTH];
    struct gr_buf b = GR_BUF_INIT;
    struct provider p;
    bool oidc;
    int rc;

    rc = provider_get(req, resp, &p);
    if (rc < 0)
        return rc;
    oidc = p.kind == KIND_OIDC;
    for (size_t i = 0; want && !redirect && i < p.nredirects; i++)
        if (strcmp(want, p.redirects[i]) == 0)
            redirect = p.redirects[i];
    if (want && !redirect) {
        gr_resp_field_error(req, resp, "query.redirect_uri",
                            "must be one of the redirect URIs configured for this provider");
        return GR_EVALID;
    }
    if (!redirect)
        redirect = p.redirects[0];
    rc = auth_random_token(state);
    if (rc == 0)
        rc = auth_random_token(verifier);
    if (rc == 0)
        rc = auth_random_token(nonce);
    if (rc == 0)
        rc = auth_seal(app, req->arena, verifier, AUTH_TOKEN_B64, &sealed);
    if (rc < 0)
        return rc;
    SHA256((const unsigned char *)verifier, AUTH_TOKEN_B64, dig);
    gr_buf_init(&b, 64);
    (void)gr_b64url_encode(&b, dig, sizeof(dig));
    challenge = buf_take(req->arena, &b);
    auth_sha256_hex(state, AUTH_TOKEN_B64, hash);

    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM oauth_states WHERE expires_at <= $1",
                        (struct gr_db_val[]){ GR_DB_INT(gr_time_now_s()) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO oauth_states (state, provider, code_verifier, nonce,"
                        " redirect_uri, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                        (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_TEXT(p.name),
                                              GR_DB_TEXT(sealed), GR_DB_TEXT(oidc ? nonce : NULL),
                                              GR_DB_TEXT(redirect),
                                              GR_DB_INT(gr_time_now_s() + OAUTH_STATE_TTL_S) },
                        6, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;

    gr_buf_init(&b, OAUTH_FORM_MAX);
    gr_buf_puts(&b, p.authorize_url);
    gr_buf_puts(&b, strchr(p.authorize_url, '?') ? "&" : "?");
    gr_buf_puts(&b, "response_type=code&client_id=");
    pct(&b, p.client_id);
    gr_buf_puts(&b, "&redirect_uri=");
    pct(&b, redirect);
    gr_buf_puts(&b, "&scope=");
    pct(&b, p.scopes);
    gr_buf_puts(&b, "&state=");
    pct(&b, state);
    gr_buf_puts(&b, "&code_challenge=");
    pct(&b, challenge);
    gr_buf_puts(&b, "&code_challenge_method=S256");
    if (oidc) {
        gr_buf_puts(&b, "&nonce=");
        pct(&b, nonce);
    }
    url = buf_take(req->arena, &b);
    gr_resp_header(req, resp, "Location", url);
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 302, json_pack("{s:s}", "authorization_url", url));
    return 0;
}

/* Spends the state: its verifier, nonce and redirect URI, or 400 when it is not a live one. */
static int state_take(struct gr_req *req, struct gr_resp *resp, const struct provider *p,
                      const char *state, char **verifier, const char **nonce, const char **redirect)
{
    struct auth_app *app = req->app;
    struct gr_db_rows *rows = NULL;
    char hash[AUTH_SHA256_HEX];
    int rc;

    if (b64url_token(state, AUTH_TOKEN_B64)) {
        auth_sha256_hex(state, AUTH_TOKEN_B64, hash);
        rc = gr_req_begin(req);
        if (rc == 0)
            rc = gr_db_query(req->db, req->arena,
                             "DELETE FROM oauth_states WHERE state = $1 AND provider = $2 AND"
                             " expires_at > $3 RETURNING code_verifier, nonce, redirect_uri",
                             (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_TEXT(p->name),
                                                   GR_DB_INT(gr_time_now_s()) },
                             3, &rows);
        if (rc == 0 && gr_db_nrows(rows) == 0)
            rc = gr_db_rollback(req->db);
        else if (rc == 0)
            rc = gr_db_commit(req->db);
        if (rc < 0)
            return rc;
    }
    if (!rows || gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_oauth_state",
                               "unknown, expired or already used state");
    rc = auth_open(app, req->arena, gr_db_text(rows, 0, 0), verifier, NULL);
    if (rc < 0) {
        gr_log_error("oauth state verifier cannot be opened (key secret changed?)");
        return GR_EINTERNAL;
    }
    *nonce = gr_db_text(rows, 0, 1);
    *redirect = gr_db_text(rows, 0, 2);
    return 0;
}

/* GET /api/v1/auth/oauth/{provider}/callback?code=&state= (or ?error=) → 200 tokens */
int auth_oauth_callback(struct gr_req *req, struct gr_resp *resp)
{
    const char *error = gr_req_query(req, "error"), *code = gr_req_query(req, "code");
    const char *state = gr_req_query(req, "state"), *nonce = NULL, *redirect = NULL;
    const char *at = NULL, *idt = NULL, *why = NULL, *email, *user_id = NULL;
    char *verifier = NULL;
    struct ident id = { 0 };
    struct provider p;
    int rc;

    rc = provider_get(req, resp, &p);
    if (rc < 0)
        return rc;
    /* The provider's refusal; the state stays unspent (a 4xx changes nothing). */
    if (error) {
        gr_log_info("oauth login refused by the provider", "provider", p.name, "error",
                    err_code(error));
        return gr_resp_problem(req, resp, GR_EUNAUTH, "oauth_denied",
                               "the %s provider did not authorize the login ('%s')", p.name,
                               err_code(error));
    }
    if (!code)
        gr_resp_field_error(req, resp, "query.code", "is required");
    else if (!visible(code, 1, OAUTH_CODE_MAX))
        gr_resp_field_error(req, resp, "query.code", "must be 1..2048 visible ASCII characters");
    if (!state)
        gr_resp_field_error(req, resp, "query.state", "is required");
    if (resp->errs.n > 0)
        return GR_EVALID;

    rc = state_take(req, resp, &p, state, &verifier, &nonce, &redirect);
    if (rc == 0)
        rc = exchange(req, resp, &p, code, verifier, redirect, &at, &idt);
    if (verifier)
        OPENSSL_cleanse(verifier, strlen(verifier));
    if (rc < 0)
        return rc;
    if (p.kind == KIND_OIDC) {
        rc = idtoken_verify(req, &p, idt, nonce, &id, &why);
        if (rc == GR_EUNAVAIL)
            return provider_down(req, resp, &p, why);
        if (rc < 0) {
            gr_log_warn("oauth id_token rejected", "provider", p.name, "reason", why);
            return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_id_token",
                                   "the %s provider's id_token was rejected: %s", p.name, why);
        }
    } else {
        rc = github_ident(req, resp, &p, at, &id);
        if (rc < 0)
            return rc;
    }
    email = id.email && id.verified ? auth_email_norm(req->arena, id.email) : NULL;
    if (!email)
        return gr_resp_problem(req, resp, GR_EUNAUTH, "oauth_email_unverified",
                               "the %s provider gave no verified email address", p.name);
    rc = account_for(req, resp, &p, id.sub, email, &user_id);
    if (rc < 0)
        return rc;
    return auth_issue_session(req, resp, user_id, gr_arena_printf(req->arena, "oauth_%s", p.name));
}
