/*
 * invoice.h - invoice-service's own declarations: the route table and the tax-rate handlers
 * (tax_rates.c). Only the tax-rate table of SERVICES §21 exists so far; invoices, credit notes
 * and payments come later (README.md).
 */
#ifndef INVOICE_H
#define INVOICE_H

#include "gr/http.h"
#include "gr/router.h"

#define INVOICE_NROUTES 2

#define TAX_NAME_MAX   100 /* characters of a rate's display name */
#define TAX_REGION_MAX 3   /* characters of an ISO 3166-2 subdivision suffix ("CA", "BY") */
#define TAX_RATE_MAX   10000

extern const struct gr_route invoice_routes[INVOICE_NROUTES];

/** GET /api/v1/tax-rates?country=&region=&limit=&cursor=: public, newest first. */
int tax_rates_list(struct gr_req *req, struct gr_resp *resp);
/** POST /api/v1/tax-rates (tax_rates:write): 201, or 409 tax_rate_exists for (country, region). */
int tax_rates_create(struct gr_req *req, struct gr_resp *resp);

#endif
