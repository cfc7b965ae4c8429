/*
 * docs.h - the gateway's interactive API docs at /docs (SERVICES §03, ARCHITECTURE §4), served
 * by the control plane (the data plane forwards /docs like every GW_SELF_PREFIXES path):
 *
 *   GET /docs               the Swagger UI page (our own small HTML)
 *   GET /docs/{asset}       a whitelisted file of npm's swagger-ui-dist (swagger-ui.css,
 *                           swagger-ui-bundle.js, ...) read from the docs directory, plus our
 *                           swagger-initializer.js; anything else is a 404
 *   GET /docs/openapi.json  the merged OpenAPI 3.1 document of every routed service that has
 *                           passing instances, plus the gateway's own API
 *
 * The docs directory is GATEWAY_DOCS_DIR, else <directory of the binary>/../share/swagger-ui,
 * where `make` installs swagger-ui-dist. Without the files /docs answers 503 problem+json that
 * names the fix; the merged document does not need them.
 *
 * The merged document is built by a background thread from the current routing table
 * (gw_table_get): one GET /openapi.json per service, on one of its instances, in parallel,
 * each bounded (GW_DOCS_DOC_MAX bytes, GW_DOCS_FETCH_MS). A service's document is kept
 * GW_DOCS_TTL_MS while the instance it came from is still routed. The thread starts work on
 * the first /docs request and rebuilds whenever the table's generation moves, so requests
 * never wait on upstreams (only the very first one waits, up to GW_DOCS_FIRST_WAIT_MS, for
 * the first build). A service whose document cannot be fetched or parsed is listed with the
 * error in the document's "x-gravity-services", never a 500.
 *
 * Module state is process-wide (one gateway per process, like front.c).
 */
#ifndef GW_DOCS_H
#define GW_DOCS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/http.h"
#include "gr/router.h"
#include "gw.h"

#define GW_DOCS_DOC_MAX       ((size_t)4 << 20)  /* bytes of one service's document */
#define GW_DOCS_MERGED_MAX    ((size_t)64 << 20) /* bytes of the merged document */
#define GW_DOCS_ASSET_MAX     ((size_t)16 << 20) /* bytes of one Swagger UI file */
#define GW_DOCS_FETCH_MS      3000L              /* limit of one document fetch */
#define GW_DOCS_TTL_MS        60000              /* a fetched document is reused this long */
#define GW_DOCS_FIRST_WAIT_MS 5000               /* the first request waits this for a build */
#define GW_DOCS_PARALLEL      16                 /* fetches at once */
#define GW_DOCS_DIR_MAX       4096

/* The routes to put in the gateway's route table (routes.c): public, no query parameters. */
#define GW_DOCS_NROUTES 3
/* clang-format off */
#define GW_DOCS_ROUTES                                                                             \
    {"GET", "/docs",              gw_docs_index,   GR_R_PUBLIC, NULL, NULL, 0},                    \
    {"GET", "/docs/openapi.json", gw_docs_openapi, GR_R_PUBLIC, NULL, NULL, 0},                    \
    {"GET", "/docs/{asset}",      gw_docs_asset,   GR_R_PUBLIC, NULL, NULL, 0}
/* clang-format on */

int gw_docs_index(struct gr_req *req, struct gr_resp *resp);
int gw_docs_openapi(struct gr_req *req, struct gr_resp *resp);
int gw_docs_asset(struct gr_req *req, struct gr_resp *resp);

/**
 * Sets up the module (docs directory, lock) and starts the builder thread, which stays idle
 * until the first /docs request. @version is the gateway's (borrowed, static). 0 or
 * GR_EINTERNAL when the thread cannot start. Call once, from the init hook.
 */
int gw_docs_start(const char *version);
/** Stops and joins the builder (returns within about 200 ms) and frees everything. */
void gw_docs_stop(void);
/** Asks for a rebuild now (optional: a generation change is noticed within 250 ms anyway). */
void gw_docs_changed(void);

/* ---- merging (exposed for the unit tests) --------------------------------------------------- */

struct gw_docs_src {
    const char *service;  /* "product-service" (borrowed); also the namespace of its components */
    json_t *doc;          /* its parsed OpenAPI document (borrowed), NULL when it failed */
    const char *instance; /* "host:port" it was fetched from, "" for the gateway's own */
    const char *error;    /* why doc is NULL (borrowed) */
    bool self;            /* the gateway's own document: every path kept */
};

/**
 * The merged OpenAPI 3.1 document (caller decrefs) of @n sources, in the given order: the
 * gateway's info and servers ("/"), the paths of each source that @t routes to that service
 * (every path for a self source; every path when @t is NULL), their components renamed
 * "<service>.<name>" with every internal $ref, discriminator mapping and security requirement
 * rewritten to match, operations tagged with their service (a source's top-level security is
 * copied onto its operations that have none), and "x-gravity-services": one entry per source
 * {service, status "ok"|"error", instance, paths, error?}. A path two sources claim is kept
 * from the first and reported in the second's entry.
 */
json_t *gw_docs_merge(const struct gw_docs_src *src, size_t n, const struct gw_table *t,
                      const char *version);

#endif
