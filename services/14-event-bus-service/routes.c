/*
 * routes.c - the event-bus service's route table (STYLE R19). The core enforces each route's
 * flags before the handler runs: permission (401/403), allowed query parameters (422), JSON
 * body (415/400/413). The publish route reads its own body (three media types) and the
 * handlers that must wake waiters after their commit run their own transactions.
 */
#include "eventbus.h"

#define E  "/api/v1/events"
#define S  "/api/v1/event-subscriptions"
#define SC "/api/v1/event-schemas"
#define W  (GR_R_JSON | GR_R_TX)

/* clang-format off */
const struct gr_route eb_routes[EB_NROUTES] = {
    {"POST",   E,                        eb_events_publish,    GR_R_AUTH, "events:write", NULL, EB_BODY_MAX},
    {"GET",    E,                        eb_events_list,       GR_R_AUTH, "events:read", "type,after_seq,limit,cursor", 0},
    {"GET",    E "/{seq}",               eb_events_get,        GR_R_AUTH, "events:read", NULL, 0},
    {"GET",    S,                        eb_subs_list,         GR_R_AUTH, "events:admin", "limit,cursor", 0},
    {"POST",   S,                        eb_subs_create,       W, "events:admin", NULL, 0},
    {"GET",    S "/{id}",                eb_subs_get,          GR_R_AUTH, "events:admin", NULL, 0},
    {"DELETE", S "/{id}",                eb_subs_delete,       GR_R_TX, "events:admin", NULL, 0},
    {"POST",   S "/{id}/pull",           eb_subs_pull,         GR_R_JSON, "events:admin", NULL, 0},
    {"POST",   S "/{id}/ack",            eb_subs_ack,          W, "events:admin", NULL, 0},
    {"POST",   S "/{id}/nak",            eb_subs_nak,          GR_R_JSON, "events:admin", NULL, 0},
    {"POST",   S "/{id}/replay",         eb_subs_replay,       GR_R_JSON, "events:admin", NULL, 0},
    {"GET",    S "/{id}/dead-letters",   eb_subs_dead_letters, GR_R_TX, "events:admin", "limit,cursor", 0},
    {"PUT",    SC "/{type}",             eb_schemas_put,       W, "events:admin", NULL, 0},
    {"GET",    SC "/{type}",             eb_schemas_get,       GR_R_AUTH, "events:admin", NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(eb_routes) / sizeof(eb_routes[0]) == EB_NROUTES,
               "EB_NROUTES must match the route table");
