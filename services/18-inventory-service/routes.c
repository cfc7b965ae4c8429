/*
 * routes.c - the inventory service's route table (STYLE R19). Reads need inventory:read (or
 * inventory:write: writers may read), checked by the handlers; writes need inventory:write.
 * The literal segments (reservations, adjustments, transfers) win over {sku} (SERVICES §0).
 */
#include "inventory.h"

#define I         "/api/v1/inventory"
#define W         "/api/v1/warehouses"
#define WR        "inventory:write"
#define RC        (GR_R_TX | GR_R_READ_COMMITTED) /* see inventory.h */
#define W_JSON_IK (GR_R_JSON | RC | GR_R_IK)

/* clang-format off */
const struct gr_route inv_routes[INV_NROUTES] = {
    {"GET",  I,                              stock_list,      GR_R_AUTH, NULL, "skus,below,limit,cursor", 0},
    {"POST", I "/adjustments",               stock_adjust,    W_JSON_IK, WR, NULL, 0},
    {"POST", I "/transfers",                 stock_transfer,  W_JSON_IK, WR, NULL, 0},
    {"POST", I "/reservations",              res_create,      W_JSON_IK, WR, NULL, 0},
    {"GET",  I "/reservations/{id}",         res_get,         GR_R_AUTH, NULL, NULL, 0},
    {"POST", I "/reservations/{id}/confirm", res_confirm,     RC, WR, NULL, 0},
    {"POST", I "/reservations/{id}/commit",  res_commit,      RC, WR, NULL, 0},
    {"POST", I "/reservations/{id}/release", res_release,     RC, WR, NULL, 0},
    {"GET",  I "/{sku}",                     stock_get,       GR_R_AUTH, NULL, NULL, 0},
    {"GET",  I "/{sku}/movements",           stock_movements, GR_R_AUTH, NULL, "warehouse_id,limit,cursor", 0},
    {"GET",  W,                              wh_list,         GR_R_AUTH, NULL, "limit,cursor", 0},
    {"POST", W,                              wh_create,       GR_R_JSON | GR_R_TX | GR_R_IK, WR, NULL, 0},
    {"GET",  W "/{id}",                      wh_get,          GR_R_AUTH, NULL, NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(inv_routes) / sizeof(inv_routes[0]) == INV_NROUTES,
               "INV_NROUTES must match the route table");
