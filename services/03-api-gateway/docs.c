/*
 * docs.c - /docs: Swagger UI (npm swagger-ui-dist) and the merged OpenAPI document of the
 * routed services (see docs.h).
 */
#include "docs.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/time.h"

#define ERR_MAX  512
#define URL_MAX  (GW_HOST_MAX + 64)
#define ETAG_MAX 24
#define DEPTH    256 /* nesting the $ref rewrite follows (jansson's parser stops at 2048) */
#define TICK_MS  250

/* ---- Swagger UI files ------------------------------------------------------------------------ */

struct asset {
    const char *name;
    const char *ctype;
};

/* The files of swagger-ui-dist the page may load; nothing else is ever opened. */
static const struct asset assets[] = {
    { "swagger-ui.css", "text/css; charset=utf-8" },
    { "index.css", "text/css; charset=utf-8" },
    { "swagger-ui-bundle.js", "text/javascript; charset=utf-8" },
    { "swagger-ui-standalone-preset.js", "text/javascript; charset=utf-8" },
    { "oauth2-redirect.html", "text/html; charset=utf-8" },
    { "oauth2-redirect.js", "text/javascript; charset=utf-8" },
    { "favicon-16x16.png", "image/png" },
    { "favicon-32x32.png", "image/png" },
};
#define NASSETS (sizeof(assets) / sizeof(assets[0]))

/* Our configuration of the UI (replaces the package's petstore one). */
#define INITIALIZER "swagger-initializer.js"
static const char initializer_js[] =
    "window.onload = function () {\n"
    "  window.ui = SwaggerUIBundle({\n"
    "    url: \"/docs/openapi.json\",\n"
    "    dom_id: \"#swagger-ui\",\n"
    "    deepLinking: true,\n"
    "    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],\n"
    "    plugins: [SwaggerUIBundle.plugins.DownloadUrl],\n"
    "    layout: \"StandaloneLayout\"\n"
    "  });\n"
    "};\n";

static const char index_html[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "  <meta charset=\"UTF-8\">\n"
    "  <title>Gravity API</title>\n"
    "  <link rel=\"stylesheet\" type=\"text/css\" href=\"/docs/swagger-ui.css\">\n"
    "  <link rel=\"stylesheet\" type=\"text/css\" href=\"/docs/index.css\">\n"
    "  <link rel=\"icon\" type=\"image/png\" href=\"/docs/favicon-32x32.png\" sizes=\"32x32\">\n"
    "  <link rel=\"icon\" type=\"image/png\" href=\"/docs/favicon-16x16.png\" sizes=\"16x16\">\n"
    "</head>\n"
    "<body>\n"
    "  <div id=\"swagger-ui\"></div>\n"
    "  <script src=\"/docs/swagger-ui-bundle.js\" charset=\"UTF-8\"></script>\n"
    "  <script src=\"/docs/swagger-ui-standalone-preset.js\" charset=\"UTF-8\"></script>\n"
    "  <script src=\"/docs/" INITIALIZER "\" charset=\"UTF-8\"></script>\n"
    "</body>\n"
    "</html>\n";

struct loaded {
    char *data; /* gr_xmalloc'd, immutable once set */
    size_t len;
    char etag[ETAG_MAX];
};

/* ---- the merged document --------------------------------------------------------------------- */

/* One published merged document, shared by the requests that send it. */
struct pub_doc {
    atomic_int refs;
    char *data;
    size_t len;
    char etag[ETAG_MAX];
};

/* A fetched service document (builder thread only). */
struct ent {
    char service[GW_NAME_MAX];
    char id[GW_NAME_MAX]; /* the instance it came from */
    char host[GW_HOST_MAX];
    int port;
    char where[GW_HOST_MAX + 16]; /* "host:port" */
    json_t *doc;                  /* NULL when the fetch failed */
    char error[ERR_MAX];
    int64_t at_ms; /* monotonic time of the fetch */
};

static struct {
    pthread_mutex_t mu;   /* guards the fields down to doc_ok */
    pthread_cond_t wake;  /* the builder waits on it */
    pthread_cond_t built; /* requests waiting for the first build */
    bool active;          /* a /docs request came: the builder works */
    bool hit;             /* the document was asked for since the last build */
    bool kick;            /* rebuild now */
    struct pub_doc *doc;  /* current, NULL before the first build */
    bool started;
    pthread_t thread;
    atomic_bool stop;
    const char *version;
    char dir[GW_DOCS_DIR_MAX];
    json_t *self_doc; /* the gateway's own document, parsed once */
    char init_etag[ETAG_MAX];
    pthread_mutex_t amu; /* guards files[] */
    struct loaded files[NASSETS];
    /* builder thread only */
    struct ent *cache;
    size_t ncache;
} D = { .mu = PTHREAD_MUTEX_INITIALIZER,
        .wake = PTHREAD_COND_INITIALIZER,
        .built = PTHREAD_COND_INITIALIZER,
        .amu = PTHREAD_MUTEX_INITIALIZER };

/* ---- helpers --------------------------------------------------------------------------------- */

static void etag_of(const char *p, size_t n, char out[ETAG_MAX])
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    snprintf(out, ETAG_MAX, "\"%016llx\"", (unsigned long long)h);
}

/* True when the request's If-None-Match names @etag (or is "*"). */
static bool not_modified(const struct gr_req *req, const char *etag)
{
    const char *inm = gr_req_header(req, "If-None-Match");
    size_t el = strlen(etag);

    if (!inm)
        return false;
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        if (*p == '*' || (strncmp(p, etag, el) == 0 &&
                          (p[el] == '\0' || p[el] == ',' || p[el] == ' ' || p[el] == '\t')))
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

/* A 503 problem+json with @detail (the fix, also in the start-up warning). */
static int unavailable(struct gr_req *req, struct gr_resp *resp, const char *detail,
                       const char *retry_after)
{
    if (retry_after)
        gr_resp_header(req, resp, "Retry-After", retry_after);
    return gr_resp_problem(req, resp, GR_EUNAVAIL, "docs_unavailable", "%s", detail);
}

static void wake_builder(bool hit)
{
    pthread_mutex_lock(&D.mu);
    if (!D.active || hit) {
        D.active = true;
        D.hit = D.hit || hit;
        pthread_cond_signal(&D.wake);
    }
    pthread_mutex_unlock(&D.mu);
}

/* The loaded file @i, reading it on first use; NULL when it cannot be read. */
static const struct loaded *asset_get(size_t i)
{
    struct loaded *l = &D.files[i];
    const struct loaded *out = NULL;

    pthread_mutex_lock(&D.amu);
    if (!l->data && D.dir[0]) {
        struct gr_buf b = GR_BUF_INIT;
        char path[GW_DOCS_DIR_MAX + 64];
        int n = snprintf(path, sizeof(path), "%s/%s", D.dir, assets[i].name);

        gr_buf_init(&b, GW_DOCS_ASSET_MAX);
        if (n > 0 && (size_t)n < sizeof(path) && gr_buf_read_file(&b, path) == 0 && b.len > 0) {
            l->data = gr_buf_detach(&b, &l->len);
            etag_of(l->data, l->len, l->etag);
        }
        gr_buf_release(&b);
    }
    if (l->data)
        out = l;
    pthread_mutex_unlock(&D.amu);
    return out;
}

static int missing_files(struct gr_req *req, struct gr_resp *resp)
{
    /* The directory itself is named in the start-up warning only (no paths to clients). */
    return unavailable(req, resp,
                       "the Swagger UI files (npm swagger-ui-dist) are not installed: run `make` "
                       "(it installs them into <build>/share/swagger-ui) or set GATEWAY_DOCS_DIR "
                       "to a directory holding them",
                       NULL);
}

/* ---- handlers -------------------------------------------------------------------------------- */

int gw_docs_index(struct gr_req *req, struct gr_resp *resp)
{
    size_t bundle = 2;

    GR_ASSERT(strcmp(assets[bundle].name, "swagger-ui-bundle.js") == 0);
    wake_builder(false); /* the page asks for the document next: have it ready */
    if (!asset_get(bundle))
        return missing_files(req, resp);
    resp->status = 200;
    resp->body = index_html;
    resp->body_len = sizeof(index_html) - 1;
    resp->content_type = "text/html; charset=utf-8";
    gr_resp_header(req, resp, "Cache-Control", "no-cache");
    return 0;
}

static void send_bytes(struct gr_req *req, struct gr_resp *resp, const char *data, size_t len,
                       const char *ctype, const char *etag, const char *cache)
{
    gr_resp_header(req, resp, "ETag", etag);
    gr_resp_header(req, resp, "Cache-Control", cache);
    if (not_modified(req, etag)) {
        resp->status = 304;
        return;
    }
    resp->status = 200;
    resp->body = data;
    resp->body_len = len;
    resp->content_type = ctype;
}

int gw_docs_asset(struct gr_req *req, struct gr_resp *resp)
{
    const char *name = gr_req_param(req, "asset");

    if (name && strcmp(name, INITIALIZER) == 0) {
        send_bytes(req, resp, initializer_js, sizeof(initializer_js) - 1,
                   "text/javascript; charset=utf-8", D.init_etag, "no-cache");
        return 0;
    }
    for (size_t i = 0; name && i < NASSETS; i++) {
        if (strcmp(name, assets[i].name) == 0) {
            const struct loaded *l = asset_get(i);

            if (!l)
                return missing_files(req, resp);
            send_bytes(req, resp, l->data, l->len, assets[i].ctype, l->etag,
                       "public, max-age=3600");
            return 0;
        }
    }
    return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such docs file");
}

static void doc_unref(void *p)
{
    struct pub_doc *d = p;

    if (d && atomic_fetch_sub(&d->refs, 1) == 1) {
        gr_free(d->data);
        gr_free(d);
    }
}

int gw_docs_openapi(struct gr_req *req, struct gr_resp *resp)
{
    struct pub_doc *d;

    pthread_mutex_lock(&D.mu);
    D.active = true;
    D.hit = true;
    pthread_cond_signal(&D.wake);
    if (!D.doc) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += GW_DOCS_FIRST_WAIT_MS / 1000;
        ts.tv_nsec += (long)(GW_DOCS_FIRST_WAIT_MS % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!D.doc && !atomic_load(&D.stop))
            if (pthread_cond_timedwait(&D.built, &D.mu, &ts) == ETIMEDOUT)
                break;
    }
    d = D.doc;
    if (d)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&D.mu);
    if (!d)
        return unavailable(req, resp, "the merged OpenAPI document is being built", "1");
    gr_arena_defer(req->arena, doc_unref, d);
    send_bytes(req, resp, d->data, d->len, "application/json", d->etag, "no-cache");
    return 0;
}

/* ---- merging --------------------------------------------------------------------------------- */

static const char *const sections[] = { "schemas",       "responses", "parameters",      "examples",
                                        "requestBodies", "headers",   "securitySchemes", "links",
                                        "callbacks",     "pathItems" };
static const char *const methods[] = { "get",     "put",  "post",  "delete",
                                       "options", "head", "patch", "trace" };

/* "#/components/<section>/<name>" → "#/components/<section>/<ns>.<name>"; NULL if not one. */
static char *ref_ns(const char *ref, const char *ns)
{
    static const char pre[] = "#/components/";
    const char *sec, *slash;
    size_t n;
    char *out;

    if (strncmp(ref, pre, sizeof(pre) - 1) != 0)
        return NULL;
    sec = ref + sizeof(pre) - 1;
    slash = strchr(sec, '/');
    if (!slash || slash[1] == '\0')
        return NULL;
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
        if (strlen(sections[i]) == (size_t)(slash - sec) &&
            strncmp(sections[i], sec, (size_t)(slash - sec)) == 0) {
            n = strlen(ref) + strlen(ns) + 2;
            out = gr_xmalloc(n);
            snprintf(out, n, "%.*s%s.%s", (int)(slash + 1 - ref), ref, ns, slash + 1);
            return out;
        }
    }
    return NULL;
}

static void rewrite_str(json_t *s, const char *ns)
{
    char *r = ref_ns(json_string_value(s), ns);

    if (r) {
        (void)json_string_set(s, r);
        gr_free(r);
    }
}

/* Rewrites every internal component $ref (and discriminator mapping) under @v in place. */
static void rewrite(json_t *v, const char *ns, int depth)
{
    const char *k;
    json_t *x;
    size_t i;

    if (depth > DEPTH)
        return;
    if (json_is_object(v)) {
        json_object_foreach(v, k, x)
        {
            if (json_is_string(x) && strcmp(k, "$ref") == 0) {
                rewrite_str(x, ns);
            } else if (strcmp(k, "mapping") == 0 && json_is_object(x)) {
                const char *mk;
                json_t *mv;

                json_object_foreach(x, mk, mv)
                {
                    if (json_is_string(mv))
                        rewrite_str(mv, ns);
                    else
                        rewrite(mv, ns, depth + 2);
                }
            } else {
                rewrite(x, ns, depth + 1);
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x)
        {
            rewrite(x, ns, depth + 1);
        }
    }
}

/* A security requirement list with the scheme names namespaced (new reference). */
static json_t *security_ns(json_t *sec, const char *ns)
{
    json_t *out = json_array(), *req;
    size_t i;

    json_array_foreach(sec, i, req)
    {
        json_t *o = json_object();
        const char *k;
        json_t *v;

        if (json_is_object(req)) {
            json_object_foreach(req, k, v)
            {
                size_t n = strlen(ns) + strlen(k) + 2;
                char *key = gr_xmalloc(n);

                snprintf(key, n, "%s.%s", ns, k);
                json_object_set_new(o, key, json_deep_copy(v));
                gr_free(key);
            }
        }
        json_array_append_new(out, o);
    }
    return out;
}

static void merge_components(json_t *out_comp, json_t *comp, const char *ns)
{
    for (size_t s = 0; s < sizeof(sections) / sizeof(sections[0]); s++) {
        json_t *in = json_object_get(comp, sections[s]), *dst, *v;
        const char *name;

        if (!json_is_object(in) || json_object_size(in) == 0)
            continue;
        dst = json_object_get(out_comp, sections[s]);
        if (!dst) {
            dst = json_object();
            json_object_set_new(out_comp, sections[s], dst);
        }
        json_object_foreach(in, name, v)
        {
            size_t n = strlen(ns) + strlen(name) + 2;
            char *key = gr_xmalloc(n);
            json_t *c = json_deep_copy(v);

            snprintf(key, n, "%s.%s", ns, name);
            if (c) {
                rewrite(c, ns, 0);
                json_object_set_new(dst, key, c);
            }
            gr_free(key);
        }
    }
}

/* Copies one path item of @s into @paths (namespaced, tagged). */
static void add_path(json_t *paths, const struct gw_docs_src *s, const char *path, json_t *item,
                     json_t *top_sec)
{
    json_t *c = json_deep_copy(item);

    if (!c)
        return;
    rewrite(c, s->service, 0);
    json_object_del(c, "servers"); /* they would name the instance, not the gateway */
    for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
        json_t *op = json_object_get(c, methods[m]), *sec;

        if (!json_is_object(op))
            continue;
        json_object_del(op, "servers");
        json_object_set_new(op, "tags", json_pack("[s]", s->service));
        sec = json_object_get(op, "security");
        if (json_is_array(sec))
            json_object_set_new(op, "security", security_ns(sec, s->service));
        else if (json_is_array(top_sec))
            json_object_set_new(op, "security", security_ns(top_sec, s->service));
    }
    json_object_set_new(paths, path, c);
}

json_t *gw_docs_merge(const struct gw_docs_src *src, size_t n, const struct gw_table *t,
                      const char *version)
{
    json_t *out = json_object(), *paths = json_object(), *comp = json_object();
    json_t *tags = json_array(), *svcs = json_array();

    json_object_set_new(out, "openapi", json_string("3.1.0"));
    json_object_set_new(
        out, "info",
        json_pack("{s:s,s:s,s:s}", "title", "Gravity API", "version", version ? version : "0",
                  "description",
                  "Every service routed by this gateway, merged from their own OpenAPI "
                  "documents. Components are named <service>.<name>; x-gravity-services lists "
                  "the services and any whose document could not be read."));
    json_object_set_new(out, "servers",
                        json_pack("[{s:s,s:s}]", "url", "/", "description", "this gateway"));
    for (size_t i = 0; i < n; i++) {
        const struct gw_docs_src *s = &src[i];
        json_t *e = json_pack("{s:s,s:s}", "service", s->service, "instance",
                              s->instance ? s->instance : "");
        json_t *sp, *item, *info, *conflicts = json_array();
        const char *path;
        int kept = 0, skipped = 0;

        if (!s->doc) {
            json_object_set_new(e, "status", json_string("error"));
            json_object_set_new(e, "error", json_string(s->error ? s->error : "unavailable"));
            json_object_set_new(e, "paths", json_integer(0));
            json_array_append_new(svcs, e);
            json_decref(conflicts);
            continue;
        }
        sp = json_object_get(s->doc, "paths");
        json_object_foreach(sp, path, item)
        {
            const struct gw_route *r;

            if (!json_is_object(item) || path[0] != '/')
                continue;
            if (!s->self && t) {
                r = gw_table_match(t, path, strlen(path));
                if (!r || strcmp(r->service, s->service) != 0) {
                    skipped++; /* the gateway does not send this path to the service */
                    continue;
                }
            }
            if (json_object_get(paths, path)) {
                json_array_append_new(conflicts, json_string(path));
                continue;
            }
            add_path(paths, s, path, item, json_object_get(s->doc, "security"));
            kept++;
        }
        if (json_is_object(json_object_get(s->doc, "components")))
            merge_components(comp, json_object_get(s->doc, "components"), s->service);
        info = json_object_get(s->doc, "info");
        {
            const char *title = json_string_value(json_object_get(info, "title"));
            const char *ver = json_string_value(json_object_get(info, "version"));
            json_t *tag = json_pack("{s:s}", "name", s->service);
            char *d = NULL;
            size_t dl;

            if (title || ver) {
                dl = (title ? strlen(title) : 0) + (ver ? strlen(ver) : 0) + 4;
                d = gr_xmalloc(dl);
                snprintf(d, dl, "%s%s%s", title ? title : s->service, ver ? " " : "",
                         ver ? ver : "");
                json_object_set_new(tag, "description", json_string(d));
                gr_free(d);
            }
            json_array_append_new(tags, tag);
            if (ver)
                json_object_set_new(e, "version", json_string(ver));
        }
        json_object_set_new(e, "status", json_string("ok"));
        json_object_set_new(e, "paths", json_integer(kept));
        if (skipped)
            json_object_set_new(e, "unrouted_paths", json_integer(skipped));
        if (json_array_size(conflicts))
            json_object_set_new(e, "conflicting_paths", conflicts);
        else
            json_decref(conflicts);
        json_array_append_new(svcs, e);
    }
    json_object_set_new(out, "tags", tags);
    json_object_set_new(out, "paths", paths);
    json_object_set_new(out, "components", comp);
    json_object_set_new(out, "x-gravity-services", svcs);
    return out;
}

/* ---- the builder ----------------------------------------------------------------------------- */

struct job {
    struct ent *e;
    size_t ei;                      /* index of e while the entry array grows */
    const struct gw_instance *inst; /* the service's instances (the table, held) */
    size_t ninst;
    size_t start; /* first instance tried (spreads the fetches) */
    size_t tries;
    CURL *h;
    struct gr_buf body;
    bool too_big;
    char url[URL_MAX];
};

static size_t on_body(char *p, size_t sz, size_t nmemb, void *ud)
{
    struct job *j = ud;
    size_t n = sz * nmemb;

    if (gr_buf_append(&j->body, p, n) < 0) {
        j->too_big = true;
        return 0;
    }
    return n;
}

/* Starts fetching from the job's next instance; false when it could not start. */
static bool job_begin(CURLM *m, struct job *j)
{
    const struct gw_instance *in = &j->inst[(j->start + j->tries++) % j->ninst];

    if (strchr(in->host, ':'))
        snprintf(j->url, sizeof(j->url), "http://[%s]:%d/openapi.json", in->host, in->port);
    else
        snprintf(j->url, sizeof(j->url), "http://%s:%d/openapi.json", in->host, in->port);
    snprintf(j->e->host, sizeof(j->e->host), "%s", in->host);
    snprintf(j->e->id, sizeof(j->e->id), "%s", in->id);
    j->e->port = in->port;
    if (strchr(in->host, ':'))
        snprintf(j->e->where, sizeof(j->e->where), "[%s]:%d", in->host, in->port);
    else
        snprintf(j->e->where, sizeof(j->e->where), "%s:%d", in->host, in->port);
    gr_buf_reset(&j->body);
    j->too_big = false;
    j->h = curl_easy_init();
    if (!j->h) {
        snprintf(j->e->error, sizeof(j->e->error), "cannot start a request");
        return false;
    }
    curl_easy_setopt(j->h, CURLOPT_URL, j->url);
    curl_easy_setopt(j->h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(j->h, CURLOPT_TIMEOUT_MS, GW_DOCS_FETCH_MS);
    curl_easy_setopt(j->h, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
    curl_easy_setopt(j->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)GW_DOCS_DOC_MAX);
    curl_easy_setopt(j->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(j->h, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(j->h, CURLOPT_PRIVATE, j);
    if (curl_multi_add_handle(m, j->h) != CURLM_OK) {
        curl_easy_cleanup(j->h);
        j->h = NULL;
        snprintf(j->e->error, sizeof(j->e->error), "cannot start a request");
        return false;
    }
    return true;
}

/* Records the finished fetch of @j in its entry; true on a usable document. */
static bool job_end(CURLM *m, struct job *j, CURLcode cc)
{
    long status = 0;
    json_error_t jerr;
    json_t *doc;
    const char *v;

    curl_easy_getinfo(j->h, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(m, j->h);
    curl_easy_cleanup(j->h);
    j->h = NULL;
    if (j->too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        snprintf(j->e->error, sizeof(j->e->error), "the document is larger than %zu bytes",
                 GW_DOCS_DOC_MAX);
        return false;
    }
    if (cc != CURLE_OK) {
        snprintf(j->e->error, sizeof(j->e->error), "GET /openapi.json: %s", curl_easy_strerror(cc));
        return false;
    }
    if (status != 200) {
        snprintf(j->e->error, sizeof(j->e->error), "GET /openapi.json answered HTTP %ld", status);
        return false;
    }
    doc = json_loadb(j->body.ptr ? j->body.ptr : "", j->body.len, 0, &jerr);
    if (!doc) {
        snprintf(j->e->error, sizeof(j->e->error), "the document is not JSON (line %d: %s)",
                 jerr.line, jerr.text);
        return false;
    }
    v = json_string_value(json_object_get(doc, "openapi"));
    if (!json_is_object(doc) || !v || strncmp(v, "3.", 2) != 0 ||
        !json_is_object(json_object_get(doc, "paths"))) {
        json_decref(doc);
        snprintf(j->e->error, sizeof(j->e->error), "not an OpenAPI 3 document");
        return false;
    }
    j->e->doc = doc;
    j->e->error[0] = '\0';
    return true;
}

/* Runs the jobs, each on up to two instances, until done or stopping. */
static void fetch_all(struct job *jobs, size_t n)
{
    CURLM *m = curl_multi_init();
    int pending = 0, running = 0, left;
    CURLMsg *msg;

    if (!m) {
        for (size_t i = 0; i < n; i++)
            snprintf(jobs[i].e->error, sizeof(jobs[i].e->error), "cannot start a request");
        return;
    }
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)GW_DOCS_PARALLEL);
    for (size_t i = 0; i < n; i++)
        if (job_begin(m, &jobs[i]))
            pending++;
    while (pending > 0 && !atomic_load(&D.stop)) {
        if (curl_multi_perform(m, &running) != CURLM_OK)
            break;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            struct job *j = NULL;

            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
            pending--;
            if (!job_end(m, j, msg->data.result) && j->tries < j->ninst && j->tries < 2 &&
                job_begin(m, j))
                pending++;
        }
        if (pending > 0 && curl_multi_poll(m, NULL, 0, 200, NULL) != CURLM_OK)
            break;
    }
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].h) { /* stopping */
            curl_multi_remove_handle(m, jobs[i].h);
            curl_easy_cleanup(jobs[i].h);
            jobs[i].h = NULL;
            snprintf(jobs[i].e->error, sizeof(jobs[i].e->error), "interrupted");
        }
    }
    curl_multi_cleanup(m);
}

static bool routed_instance(const struct gw_route *r, const struct ent *e)
{
    for (size_t i = 0; i < r->ninst; i++)
        if (r->inst[i].port == e->port && strcmp(r->inst[i].host, e->host) == 0 &&
            strcmp(r->inst[i].id, e->id) == 0)
            return true;
    return false;
}

static int by_service(const void *a, const void *b)
{
    return strcmp(((const struct ent *)a)->service, ((const struct ent *)b)->service);
}

static int dump_cb(const char *p, size_t n, void *ud)
{
    return gr_buf_append(ud, p, n) < 0 ? -1 : 0;
}

/* Fetches what is missing or stale, merges and returns the new document (NULL: stopping). */
static struct pub_doc *build(const struct gw_table *t, bool *had_errors)
{
    struct ent *ents = NULL;
    struct job *jobs = NULL;
    size_t n = 0, njobs = 0, cap = 0;
    int64_t now = gr_time_mono_ms();
    struct gw_docs_src *src;
    struct pub_doc *d = NULL;
    struct gr_buf b = GR_BUF_INIT;
    json_t *merged;

    *had_errors = false;
    /* one entry per routed service with passing instances */
    for (size_t i = 0; t && i < t->n; i++) {
        const struct gw_route *r = &t->routes[i];
        bool seen = false;

        if (r->ninst == 0)
            continue;
        for (size_t k = 0; k < n && !seen; k++)
            seen = strcmp(ents[k].service, r->service) == 0;
        if (seen)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ents = gr_xrealloc(ents, cap * sizeof(*ents));
            jobs = gr_xrealloc(jobs, cap * sizeof(*jobs));
        }
        memset(&ents[n], 0, sizeof(ents[n]));
        snprintf(ents[n].service, sizeof(ents[n].service), "%s", r->service);
        /* reuse a fresh document from an instance that is still routed */
        for (size_t k = 0; k < D.ncache; k++) {
            struct ent *o = &D.cache[k];

            if (o->doc && strcmp(o->service, r->service) == 0 && now - o->at_ms < GW_DOCS_TTL_MS &&
                routed_instance(r, o)) {
                ents[n] = *o;
                o->doc = NULL; /* moved */
                break;
            }
        }
        if (!ents[n].doc) {
            struct job *j = &jobs[njobs++];

            memset(j, 0, sizeof(*j));
            j->ei = n;
            j->inst = r->inst;
            j->ninst = r->ninst;
            j->start = (size_t)((uint64_t)now % r->ninst); /* spread over the instances */
            ents[n].at_ms = now;
            gr_buf_init(&j->body, GW_DOCS_DOC_MAX);
        }
        n++;
    }
    /* the entry array may have moved while growing: bind the jobs now */
    for (size_t k = 0; k < njobs; k++)
        jobs[k].e = &ents[jobs[k].ei];
    fetch_all(jobs, njobs);
    for (size_t k = 0; k < njobs; k++)
        gr_buf_release(&jobs[k].body);
    gr_free(jobs);
    /* the old cache goes; the new entries become the cache */
    for (size_t k = 0; k < D.ncache; k++)
        json_decref(D.cache[k].doc);
    gr_free(D.cache);
    if (n)
        qsort(ents, n, sizeof(*ents), by_service);
    D.cache = ents;
    D.ncache = n;
    if (atomic_load(&D.stop))
        return NULL;

    src = gr_xcalloc(n + 1, sizeof(*src));
    src[0].service = "api-gateway";
    src[0].doc = D.self_doc;
    src[0].instance = "";
    src[0].error = "the gateway's own document is not valid JSON";
    src[0].self = true;
    for (size_t i = 0; i < n; i++) {
        src[i + 1].service = ents[i].service;
        src[i + 1].doc = ents[i].doc;
        src[i + 1].instance = ents[i].where;
        src[i + 1].error = ents[i].error;
        if (!ents[i].doc)
            *had_errors = true;
    }
    merged = gw_docs_merge(src, n + 1, t, D.version);
    gr_free(src);
    gr_buf_init(&b, GW_DOCS_MERGED_MAX);
    if (json_dump_callback(merged, dump_cb, &b, JSON_COMPACT) != 0) {
        gr_log_warn("the merged OpenAPI document is too large");
        gr_buf_reset(&b);
        (void)gr_buf_puts(&b, "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"Gravity API\","
                              "\"version\":\"0\"},\"paths\":{},\"x-gravity-error\":"
                              "\"the merged document is too large\"}");
    }
    json_decref(merged);
    d = gr_xcalloc(1, sizeof(*d));
    atomic_init(&d->refs, 1);
    d->data = gr_buf_detach(&b, &d->len);
    etag_of(d->data, d->len, d->etag);
    return d;
}

static void *builder(void *arg)
{
    uint64_t built_gen = 0;
    int64_t built_ms = 0;
    bool have = false, had_errors = false;

    (void)arg;
    pthread_mutex_lock(&D.mu);
    while (!atomic_load(&D.stop)) {
        struct gw_table *t;
        uint64_t gen;
        int64_t now = gr_time_mono_ms();
        bool due;
        struct pub_doc *d, *old;

        if (!D.active) {
            pthread_cond_wait(&D.wake, &D.mu);
            continue;
        }
        t = gw_table_get();
        gen = t ? t->generation : 0;
        due = D.kick || !have || gen != built_gen ||
              (D.hit && now - built_ms >= (had_errors ? 2000 : GW_DOCS_TTL_MS));
        if (!due) {
            struct timespec ts;

            if (t)
                gw_table_put(t);
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += TICK_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            (void)pthread_cond_timedwait(&D.wake, &D.mu, &ts);
            continue;
        }
        D.kick = false;
        D.hit = false;
        pthread_mutex_unlock(&D.mu);
        d = build(t, &had_errors);
        if (t)
            gw_table_put(t);
        pthread_mutex_lock(&D.mu);
        if (!d)
            break;
        old = D.doc;
        D.doc = d;
        have = true;
        built_gen = gen;
        built_ms = gr_time_mono_ms();
        pthread_cond_broadcast(&D.built);
        pthread_mutex_unlock(&D.mu);
        doc_unref(old);
        pthread_mutex_lock(&D.mu);
    }
    pthread_mutex_unlock(&D.mu);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void find_dir(void)
{
    const char *env = getenv("GATEWAY_DOCS_DIR");
    char exe[GW_DOCS_DIR_MAX];
    ssize_t n;
    char *slash;

    D.dir[0] = '\0';
    if (env && *env) {
        snprintf(D.dir, sizeof(D.dir), "%s", env);
        return;
    }
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0 || (size_t)n >= sizeof(exe) - 1)
        return;
    exe[n] = '\0';
    slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    if ((size_t)snprintf(D.dir, sizeof(D.dir), "%s/../share/swagger-ui", exe) >= sizeof(D.dir))
        D.dir[0] = '\0';
}

int gw_docs_start(const char *version)
{
    json_error_t jerr;
    char path[GW_DOCS_DIR_MAX + 64];

    D.version = version;
    etag_of(initializer_js, sizeof(initializer_js) - 1, D.init_etag);
    atomic_init(&D.stop, false);
    find_dir();
    D.self_doc = json_loads(gr_svc_openapi_json, 0, &jerr);
    snprintf(path, sizeof(path), "%s/swagger-ui-bundle.js", D.dir);
    if (!D.dir[0] || access(path, R_OK) != 0)
        gr_log_warn("the Swagger UI files are missing, /docs answers 503: run `make` (it "
                    "installs npm swagger-ui-dist into <build>/share/swagger-ui) or set "
                    "GATEWAY_DOCS_DIR to a directory holding them",
                    "dir", D.dir);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (pthread_create(&D.thread, NULL, builder, NULL) != 0) {
        json_decref(D.self_doc);
        D.self_doc = NULL;
        return GR_EINTERNAL;
    }
    D.started = true;
    return 0;
}

void gw_docs_changed(void)
{
    pthread_mutex_lock(&D.mu);
    D.kick = true;
    pthread_cond_signal(&D.wake);
    pthread_mutex_unlock(&D.mu);
}

void gw_docs_stop(void)
{
    if (D.started) {
        pthread_mutex_lock(&D.mu);
        atomic_store(&D.stop, true);
        pthread_cond_broadcast(&D.wake);
        pthread_cond_broadcast(&D.built);
        pthread_mutex_unlock(&D.mu);
        pthread_join(D.thread, NULL);
        D.started = false;
    }
    for (size_t k = 0; k < D.ncache; k++)
        json_decref(D.cache[k].doc);
    gr_free(D.cache);
    D.cache = NULL;
    D.ncache = 0;
    doc_unref(D.doc);
    D.doc = NULL;
    D.active = D.hit = D.kick = false;
    json_decref(D.self_doc);
    D.self_doc = NULL;
    for (size_t i = 0; i < NASSETS; i++) {
        gr_free(D.files[i].data);
        D.files[i].data = NULL;
        D.files[i].len = 0;
    }
}
