/*
 * routes.c - the discount service's route table (STYLE R19). The core enforces each route's
 * flags before the handler runs: permission (401/403), allowed query parameters (422), JSON
 * body (415/400/413) and the transaction that wraps every write. Reservations run their own
 * transaction (redemptions.c) so that they can retry longer under contention.
 */
#include "discount.h"

#define C         "/api/v1/coupons"
#define R         "/api/v1/coupon-redemptions"
#define W_JSON    (GR_R_JSON | GR_R_TX)
#define W_JSON_IK (W_JSON | GR_R_IK)
#define ADMIN     "coupons:write"
#define READ      "coupons:read"
#define REDEEM    "coupon-redemptions:write"

/* clang-format off */
const struct gr_route discount_routes[] = {
    {"GET",    C,                   coupons_list,        GR_R_PUBLIC, ADMIN, "limit,cursor", 0},
    {"POST",   C,                   coupons_create,      W_JSON_IK, ADMIN, NULL, 0},
    {"POST",   C "/validate",       coupons_validate,    GR_R_JSON | GR_R_AUTH, NULL, NULL, 0},
    {"GET",    C "/{id}",           coupons_get,         GR_R_PUBLIC, ADMIN, NULL, 0},
    {"PATCH",  C "/{id}",           coupons_patch,       W_JSON, ADMIN, NULL, 0},
    {"DELETE", C "/{id}",           coupons_delete,      GR_R_TX, ADMIN, NULL, 0},
    {"GET",    C "/{id}/redemptions", coupons_redemptions, GR_R_PUBLIC, READ, "status,limit,cursor", 0},
    {"POST",   R,                   redemptions_create,  GR_R_JSON | GR_R_IK, REDEEM, NULL, 0},
    {"GET",    R "/{id}",           redemptions_get,     GR_R_PUBLIC, READ, NULL, 0},
    {"POST",   R "/{id}/confirm",   redemptions_confirm, GR_R_TX, REDEEM, NULL, 0},
    {"POST",   R "/{id}/release",   redemptions_release, GR_R_TX, REDEEM, NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(discount_routes) / sizeof(discount_routes[0]) == DISCOUNT_NROUTES,
               "DISCOUNT_NROUTES must match the route table");
