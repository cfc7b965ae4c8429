/*
 * router.c - compiles a service's static route tables into a segment trie and matches request
 * paths against it. Literal segments win over `{param}` segments (SERVICES §0); matching
 * backtracks to the parameter branch when the literal branch has no route for the rest of the
 * path. Path segments are percent-decoded here, once, and rejected when they could smuggle a
 * different path past the matcher (encoded '/', NUL, "." and "..").
 */
#include <string.h>

#include "gr/log.h"
#include "gr/router.h"

#define MAX_SEGMENTS 32
#define MAX_METHODS  8

struct node {
    char *literal;    /* NULL for the parameter child */
    char *param_name; /* set on parameter nodes */
    struct node **kids;
    size_t nkids;
    struct node *param;
    const struct gr_route *routes[MAX_METHODS];
    size_t nroutes;
};

struct gr_router {
    struct node *root;
};

static struct node *node_new(void)
{
    return gr_xcalloc(1, sizeof(struct node));
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    node_free(n->param);
    gr_free(n->kids);
    gr_free(n->literal);
    gr_free(n->param_name);
    gr_free(n);
}

void gr_router_free(struct gr_router *r)
{
    if (!r)
        return;
    node_free(r->root);
    gr_free(r);
}

static int add_route(struct gr_router *r, const struct gr_route *rt)
{
    struct node *n = r->root;
    const char *p = rt->pattern;

    if (!p || p[0] != '/' || !rt->method || !rt->handler)
        return GR_EINVAL;
    while (*p == '/') {
        const char *seg = p + 1, *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);

        if (len == 0)
            return GR_EINVAL;
        if (seg[0] == '{') {
            if (len < 3 || seg[len - 1] != '}')
                return GR_EINVAL;
            if (!n->param) {
                n->param = node_new();
                n->param->param_name = gr_xstrndup(seg + 1, len - 2);
            } else if (strncmp(n->param->param_name, seg + 1, len - 2) != 0 ||
                       n->param->param_name[len - 2] != '\0') {
                return GR_EINVAL; /* two names for one position would be ambiguous */
            }
            n = n->param;
        } else {
            struct node *k = NULL;

            for (size_t i = 0; i < n->nkids; i++) {
                if (strlen(n->kids[i]->literal) == len &&
                    memcmp(n->kids[i]->literal, seg, len) == 0) {
                    k = n->kids[i];
                    break;
                }
            }
            if (!k) {
                k = node_new();
                k->literal = gr_xstrndup(seg, len);
                n->kids = gr_xrealloc(n->kids, (n->nkids + 1) * sizeof(*n->kids));
                n->kids[n->nkids++] = k;
            }
            n = k;
        }
        p = seg + len;
    }
    if (*p != '\0')
        return GR_EINVAL;
    for (size_t i = 0; i < n->nroutes; i++) {
        if (strcmp(n->routes[i]->method, rt->method) == 0)
            return GR_EINVAL; /* duplicate route */
    }
    if (n->nroutes >= MAX_METHODS)
        return GR_EINVAL;
    n->routes[n->nroutes++] = rt;
    return 0;
}

int gr_router_new(const struct gr_route *const *tables, const size_t *counts, size_t ntables,
                  struct gr_router **out)
{
    struct gr_router *r = gr_xcalloc(1, sizeof(*r));
    int rc = 0;

    r->root = node_new();
    for (size_t t = 0; t < ntables && rc == 0; t++) {
        for (size_t i = 0; i < counts[t]; i++) {
            rc = add_route(r, &tables[t][i]);
            if (rc < 0) {
                gr_log_error("invalid route", "method", tables[t][i].method, "pattern",
                             tables[t][i].pattern);
                break;
            }
        }
    }
    if (rc < 0) {
        gr_router_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int gr_url_decode(struct gr_arena *a, const char *s, size_t n, bool plus_space, const char **out)
{
    char *d = gr_arena_alloc(a, n + 1);
    size_t j = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi, lo;

            if (n - i < 3)
                return GR_EINVAL;
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return GR_EINVAL;
            d[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '+' && plus_space) {
            d[j++] = ' ';
        } else if (s[i] == '\0') {
            return GR_EINVAL;
        } else {
            d[j++] = s[i];
        }
    }
    d[j] = '\0';
    *out = d;
    return 0;
}

struct seg {
    const char *s; /* decoded */
};

struct taken {
    const struct node *node;
    size_t seg;
};

static const struct node *walk(const struct node *n, const struct seg *segs, size_t nsegs, size_t i,
                               struct taken *params, size_t *nparam_nodes)
{
    const struct node *found;

    if (i == nsegs)
        return n->nroutes ? n : NULL;
    for (size_t k = 0; k < n->nkids; k++) {
        if (strcmp(n->kids[k]->literal, segs[i].s) == 0) {
            found = walk(n->kids[k], segs, nsegs, i + 1, params, nparam_nodes);
            if (found)
                return found;
            break;
        }
    }
    if (n->param) {
        size_t saved = *nparam_nodes;

        params[*nparam_nodes].node = n->param;
        params[*nparam_nodes].seg = i;
        (*nparam_nodes)++;
        found = walk(n->param, segs, nsegs, i + 1, params, nparam_nodes);
        if (found)
            return found;
        *nparam_nodes = saved;
    }
    return NULL;
}

int gr_router_match(const struct gr_router *r, struct gr_arena *a, const char *method,
                    const char *path, const struct gr_route **route, struct gr_kv *params,
                    size_t *nparams, const char **allow)
{
    struct seg segs[MAX_SEGMENTS];
    struct taken pnodes[MAX_SEGMENTS];
    size_t nsegs = 0, npn = 0;
    const char *p = path;
    const struct node *n;
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;

    *route = NULL;
    *nparams = 0;
    if (!p || p[0] != '/')
        return GR_ENOTFOUND;
    while (*p == '/') {
        const char *seg = p + 1, *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        const char *dec;

        if (len == 0)
            return GR_ENOTFOUND; /* "//" or a trailing slash */
        if (nsegs == MAX_SEGMENTS)
            return GR_ENOTFOUND;
        if (gr_url_decode(a, seg, len, false, &dec) < 0)
            return GR_EINVAL;
        if (strchr(dec, '/') || strcmp(dec, ".") == 0 || strcmp(dec, "..") == 0)
            return GR_EINVAL;
        segs[nsegs++].s = dec;
        p = seg + len;
    }
    if (*p != '\0')
        return GR_ENOTFOUND;
    n = walk(r->root, segs, nsegs, 0, pnodes, &npn);
    if (!n)
        return GR_ENOTFOUND;
    for (size_t i = 0; i < n->nroutes; i++) {
        if (strcmp(n->routes[i]->method, want) == 0) {
            *route = n->routes[i];
            break;
        }
    }
    if (!*route) {
        struct gr_buf b = GR_BUF_INIT;
        bool has_get = false;

        for (size_t i = 0; i < n->nroutes; i++) {
            if (b.len)
                (void)gr_buf_puts(&b, ", ");
            (void)gr_buf_puts(&b, n->routes[i]->method);
            has_get = has_get || strcmp(n->routes[i]->method, "GET") == 0;
        }
        if (has_get)
            (void)gr_buf_puts(&b, ", HEAD");
        *allow = gr_arena_strdup(a, gr_buf_cstr(&b));
        gr_buf_release(&b);
        return GR_EMETHOD;
    }
    for (size_t i = 0; i < npn && i < GR_ROUTE_MAX_PARAMS; i++) {
        params[i].key = pnodes[i].node->param_name;
        params[i].value = segs[pnodes[i].seg].s;
    }
    *nparams = npn < GR_ROUTE_MAX_PARAMS ? npn : GR_ROUTE_MAX_PARAMS;
    return 0;
}
