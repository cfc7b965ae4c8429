/*
 * service.c - product-service (SERVICES §17): the catalogue of products, their variants (SKU
 * and price), categories and images, on :8007 under /api/v1/products and /api/v1/categories.
 * Everything shared (config, DB and migrations, JWT, HTTP, platform routes) is gr_main's; the
 * init hook back-fills the products' stored documents (product_doc.c).
 */
#include "gr/service.h"
#include "gr/db.h"
#include "product.h"

/*
 * Renders the stored documents of products written before migration 0003 (product_doc.c);
 * nothing to do on a database whose documents are all there. No service state.
 */
static int init_docs(struct gr_ctx *ctx, void **app)
{
    *app = NULL;
    if (ctx->db == NULL)
        return 0;
    return product_doc_backfill(ctx->db);
}

static const struct gr_service product_service = {
    .name = "product-service",
    .id = "17-product-service",
    .version = "0.1.0",
    .port = 8007,
    .routes = product_routes,
    .nroutes = PRODUCT_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* The catalogue is not a money, stock or order table (ARCHITECTURE §6): WAL with
     * synchronous=NORMAL survives a crash of the process; orders keep their own prices. */
    .sqlite_sync_full = false,
    .init = init_docs,
    .subs = product_subs,
    .nsubs = PRODUCT_NSUBS,
};

int main(int argc, char **argv)
{
    return gr_main(&product_service, argc, argv);
}
