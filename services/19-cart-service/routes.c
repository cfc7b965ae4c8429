/*
 * routes.c - cart-service's route table (STYLE R19); the core enforces each route's flags.
 *
 * Carts are public routes: an anonymous cart is reached with its X-Cart-Token, a signed-in
 * one with its owner's bearer token (cart_db.c decides, so that a cart the caller may not see
 * is a 404). Routes that must run after a call to another service (adding a line, totals,
 * checkout) open their transaction themselves, after the call.
 */
#include "cart.h"

#define C      "/api/v1/carts"
#define W_JSON (GR_R_JSON | GR_R_TX)

/* clang-format off */
const struct gr_route cart_routes[CART_NROUTES] = {
    {"POST",   C,                             carts_create,        W_JSON, NULL, NULL, 0},
    {"GET",    C "/me",                       carts_me,            GR_R_AUTH, NULL, NULL, 0},
    {"GET",    C "/{id}",                     carts_get,           GR_R_PUBLIC, NULL, NULL, 0},
    {"POST",   C "/{id}/items",               carts_item_add,      GR_R_JSON, NULL, NULL, 0},
    {"PATCH",  C "/{id}/items/{item_id}",     carts_item_patch,    W_JSON, NULL, NULL, 0},
    {"DELETE", C "/{id}/items/{item_id}",     carts_item_delete,   GR_R_TX, NULL, NULL, 0},
    {"PUT",    C "/{id}/coupon",              carts_coupon_put,    W_JSON, NULL, NULL, 0},
    {"DELETE", C "/{id}/coupon",              carts_coupon_delete, GR_R_TX, NULL, NULL, 0},
    {"GET",    C "/{id}/totals",              carts_totals,        GR_R_PUBLIC, NULL, NULL, 0},
    {"POST",   C "/{id}/merge",               carts_merge,         GR_R_AUTH | GR_R_TX, NULL, NULL, 0},
    {"POST",   C "/{id}/checkout",            carts_checkout,      GR_R_JSON | GR_R_AUTH | GR_R_IK_REQUIRED, NULL, NULL, 0},
};
/* clang-format on */
