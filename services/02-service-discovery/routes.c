/*
 * routes.c - the registry's route table (STYLE R19). Writes need registry:write; reads are
 * public: the registry is internal and Prometheus scrapes /prometheus-targets without a token.
 */
#include "registry.h"

#define R "/api/v1/registry"

/* clang-format off */
const struct gr_route registry_routes[] = {
    {"POST",   R "/instances",                 instances_register,   GR_R_JSON, "registry:write", NULL, 0},
    {"GET",    R "/instances/{id}",            instances_get,        GR_R_PUBLIC, NULL, NULL, 0},
    {"PUT",    R "/instances/{id}/heartbeat",  instances_heartbeat,  GR_R_AUTH, "registry:write", NULL, 0},
    {"DELETE", R "/instances/{id}",            instances_deregister, GR_R_AUTH, "registry:write", NULL, 0},
    {"GET",    R "/services",                  services_list,        GR_R_PUBLIC, NULL, "index,wait", 0},
    {"GET",    R "/services/{name}/instances", services_instances,   GR_R_PUBLIC, NULL, "tag,index,wait", 0},
    {"GET",    R "/prometheus-targets",        prometheus_targets,   GR_R_PUBLIC, NULL, NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(registry_routes) / sizeof(registry_routes[0]) == REGISTRY_NROUTES,
               "REGISTRY_NROUTES must match the route table");
