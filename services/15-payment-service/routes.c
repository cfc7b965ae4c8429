/*
 * routes.c - payment-service's route table (STYLE R19). The core enforces each route's flags
 * before the handler runs. The provider-facing writes run without GR_R_TX (pay.h): their
 * handlers open their own short transactions around the provider call.
 */
#include "pay.h"

#define P  "/api/v1/payments"
#define M  "/api/v1/payment-methods"
#define IK (GR_R_AUTH | GR_R_JSON | GR_R_IK_REQUIRED)

/* clang-format off */
const struct gr_route pay_routes[PAY_NROUTES] = {
    {"POST",   P,                       payments_create,  IK, NULL, NULL, 0},
    {"GET",    P "/history",            payments_history, GR_R_AUTH, NULL, "status,from,to,user_id,limit,cursor", 0},
    {"POST",   P "/webhooks/{provider}", webhooks_receive, GR_R_PUBLIC, NULL, NULL, 0},
    {"GET",    P "/{id}",               payments_get,     GR_R_AUTH, NULL, NULL, 0},
    {"POST",   P "/{id}/refund",        payments_refund,  IK, "payments:write", NULL, 0},
    {"POST",   P "/{id}/capture",       payments_capture, GR_R_AUTH, "payments:write", NULL, 0},
    {"POST",   P "/{id}/cancel",        payments_cancel,  GR_R_AUTH, NULL, NULL, 0},
    {"POST",   P "/{id}/confirm",       payments_confirm, GR_R_AUTH, NULL, NULL, 0},
    {"GET",    M,                       methods_list,     GR_R_AUTH, NULL, "limit,cursor", 0},
    {"POST",   M,                       methods_create,   GR_R_AUTH | GR_R_JSON | GR_R_IK, NULL, NULL, 0},
    {"DELETE", M "/{id}",               methods_delete,   GR_R_AUTH | GR_R_TX, NULL, NULL, 0},
    {"GET",    "/api/v1/refunds/{id}",  refunds_get,      GR_R_AUTH, NULL, NULL, 0},
};
/* clang-format on */
