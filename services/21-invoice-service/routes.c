/*
 * routes.c - invoice-service's route table (STYLE R19); the core enforces each route's flags.
 * Tax rates are public to read (checkout and the order service price with them) and need
 * tax_rates:write to create.
 */
#include "invoice.h"

#define T "/api/v1/tax-rates"

/* clang-format off */
const struct gr_route invoice_routes[INVOICE_NROUTES] = {
    {"GET",  T, tax_rates_list,   GR_R_PUBLIC, NULL, "country,region,limit,cursor", 0},
    {"POST", T, tax_rates_create, GR_R_JSON | GR_R_TX | GR_R_IK, "tax_rates:write", NULL, 0},
};
/* clang-format on */
