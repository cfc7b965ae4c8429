/*
 * routes.c - the gateway control plane's route table (STYLE R19). Every admin route needs
 * gateway:admin; the core enforces it (401/403), the allowed query parameters (422) and the
 * JSON body (415/400/413) before the handler runs. Writes are single statements, so the
 * handlers run without GR_R_TX and rebuild the routing table after their commit.
 */
#include "gateway.h"

#define G     GW_ROUTES_PREFIX
#define ADMIN "gateway:admin"

/* clang-format off */
const struct gr_route gw_routes[GW_NROUTES] = {
    {"GET",    G "/routes",        gw_routes_list,    GR_R_AUTH, ADMIN, "limit,cursor", 0},
    {"POST",   G "/routes",        gw_routes_create,  GR_R_JSON, ADMIN, NULL, 0},
    {"GET",    G "/routes/{id}",   gw_routes_get,     GR_R_AUTH, ADMIN, NULL, 0},
    {"PUT",    G "/routes/{id}",   gw_routes_put,     GR_R_JSON, ADMIN, NULL, 0},
    {"DELETE", G "/routes/{id}",   gw_routes_delete,  GR_R_AUTH, ADMIN, NULL, 0},
    {"GET",    G "/upstreams",     gw_upstreams_list, GR_R_AUTH, ADMIN, "service", 0},
    {"GET",    G "/api-keys",      gw_apikeys_list,   GR_R_AUTH, ADMIN, "limit,cursor,owner_id", 0},
    {"POST",   G "/api-keys",      gw_apikeys_create, GR_R_JSON, ADMIN, NULL, 0},
    {"DELETE", G "/api-keys/{id}", gw_apikeys_delete, GR_R_AUTH, ADMIN, NULL, 0},
    GW_DOCS_ROUTES,
};
/* clang-format on */
