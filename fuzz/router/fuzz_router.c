/*
 * fuzz_router.c - libFuzzer target for the route matcher and the percent-decoder: the input's
 * first line is the method, the rest the path. Matching must never crash, must only return
 * the documented codes, and every path parameter must be NUL-free and '/'-free.
 */
#include <stdint.h>
#include <string.h>

#include "gr/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int h(struct gr_req *req, struct gr_resp *resp)
{
    (void)req;
    (void)resp;
    return 0;
}

static const struct gr_route routes[] = {
    { "GET", "/api/v1/products", h, 0, NULL, NULL, 0 },
    { "POST", "/api/v1/products", h, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/products/variants", h, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/products/{id}", h, 0, NULL, NULL, 0 },
    { "PATCH", "/api/v1/products/{id}", h, 0, NULL, NULL, 0 },
    { "PATCH", "/api/v1/products/{id}/variants/{vid}", h, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/categories/{id}", h, 0, NULL, NULL, 0 },
    { "GET", "/health", h, 0, NULL, NULL, 0 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct gr_router *r;
    const struct gr_route *const tables[] = { routes };
    const size_t counts[] = { sizeof(routes) / sizeof(routes[0]) };
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    const struct gr_route *rt;
    const char *allow, *dec;
    size_t np, split;
    char *buf;
    int rc;

    if (!r && gr_router_new(tables, counts, 1, &r) < 0)
        __builtin_trap();
    buf = gr_arena_strndup(&a, (const char *)data, size);
    split = strcspn(buf, "\n");
    if (buf[split] == '\n')
        buf[split++] = '\0';
    rc = gr_router_match(r, &a, buf, buf + split, &rt, params, &np, &allow);
    if (rc != 0 && rc != GR_ENOTFOUND && rc != GR_EMETHOD && rc != GR_EINVAL)
        __builtin_trap();
    if (rc == 0) {
        for (size_t i = 0; i < np; i++) {
            if (strchr(params[i].value, '/') || params[i].value[0] == '\0')
                __builtin_trap();
        }
    }
    (void)gr_url_decode(&a, (const char *)data, size, true, &dec);
    gr_arena_release(&a);
    return 0;
}
