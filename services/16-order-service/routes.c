/*
 * routes.c - order-service's route table (STYLE R19). The core enforces each route's flags
 * before the handler runs. The writes that call other services (create, cancel, status) run
 * without GR_R_TX: their handlers open short transactions of their own around the calls.
 */
#include "order.h"

#define O          "/api/v1/orders"
#define LIST_QUERY "status,from,to,limit,cursor"

/* clang-format off */
const struct gr_route order_routes[ORDER_NROUTES] = {
    {"POST", O,                      orders_create,     GR_R_AUTH | GR_R_JSON | GR_R_IK_REQUIRED | GR_R_IK_LAZY, NULL, NULL, 0},
    {"GET",  O,                      orders_list,       GR_R_AUTH, "orders:read", LIST_QUERY, 0},
    {"GET",  O "/user/{user_id}",    orders_list_user,  GR_R_AUTH, NULL, LIST_QUERY, 0},
    {"GET",  O "/{id}",              orders_get,        GR_R_AUTH, NULL, NULL, 0},
    {"GET",  O "/{id}/history",      orders_history,    GR_R_AUTH, NULL, NULL, 0},
    {"GET",  O "/{id}/saga",         orders_saga,       GR_R_AUTH, NULL, NULL, 0},
    {"PUT",  O "/{id}/status",       orders_set_status, GR_R_AUTH | GR_R_JSON, "orders:write", NULL, 0},
    {"POST", O "/{id}/cancel",       orders_cancel,     GR_R_AUTH, NULL, NULL, 0},
};
/* clang-format on */
