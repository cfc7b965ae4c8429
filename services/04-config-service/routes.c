/*
 * routes.c - the config service's route table (STYLE R19). Writes open their own transaction
 * (gr_req_tx) so that the long-polls are woken only after the commit.
 */
#include "cfgsvc.h"

#define P "/api/v1/configs/{service}/{env}"

/* clang-format off */
const struct gr_route cfg_routes[CFG_NROUTES] = {
    {"GET",    P,                    cfg_merged_get,   GR_R_AUTH, "configs:read", "index,wait", 0},
    {"GET",    P "/{key}",           cfg_entry_get,    GR_R_AUTH, "configs:read", NULL, 0},
    {"PUT",    P "/{key}",           cfg_entry_put,    GR_R_JSON, "configs:write", NULL, CFG_BODY_MAX},
    {"DELETE", P "/{key}",           cfg_entry_delete, GR_R_AUTH, "configs:delete", "expected_revision", 0},
    {"GET",    P "/{key}/history",   cfg_history,      GR_R_AUTH, "configs:read", "limit,cursor", 0},
    {"POST",   P "/{key}/rollback",  cfg_rollback,     GR_R_JSON, "configs:write", NULL, 0},
};
/* clang-format on */
