/*
 * service.c - invoice-service (SERVICES §21) on :8011 under /api/v1/invoices and
 * /api/v1/tax-rates. So far it keeps the tax-rate table that the order service prices with
 * (decisions 15 and 22); invoicing comes later. Everything shared (config, DB and migrations,
 * JWT, HTTP, platform routes, drain) is gr_main's.
 */
#include "gr/service.h"
#include "invoice.h"

static const struct gr_service invoice_service = {
    .name = "invoice-service",
    .id = "21-invoice-service",
    .version = "0.1.0",
    .port = 8011,
    .routes = invoice_routes,
    .nroutes = INVOICE_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Invoices are money tables (ARCHITECTURE §6). */
    .sqlite_sync_full = true,
};

int main(int argc, char **argv)
{
    return gr_main(&invoice_service, argc, argv);
}
