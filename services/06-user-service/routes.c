/*
 * routes.c - the user service's route table (STYLE R19). The core enforces each route's flags
 * before the handler runs: a token (401) or a permission (403), allowed query parameters (422),
 * JSON body (415/400/413) and the transaction that wraps every write. Owners act on their own
 * records under /users/me; users:read and users:delete reach other users' profiles.
 */
#include "user.h"

#define U         "/api/v1/users"
#define ME        U "/me"
#define AUTH      GR_R_AUTH
#define W         (GR_R_AUTH | GR_R_TX)
#define W_JSON    (W | GR_R_JSON)
#define PREFS_MAX (64 * 1024) /* the document itself is limited to USER_PREFS_MAX */
#define SMALL_MAX (16 * 1024) /* profile and address bodies */

/* clang-format off */
const struct gr_route user_routes[] = {
    {"GET",    U,                              profiles_list,         AUTH, "users:read", "email,q,limit,cursor", 0},
    {"GET",    ME,                             profiles_me_get,       AUTH, NULL, NULL, 0},
    {"PATCH",  ME,                             profiles_me_patch,     W_JSON, NULL, NULL, SMALL_MAX},
    {"GET",    ME "/addresses",                addresses_list,        AUTH, NULL, "default,limit,cursor", 0},
    {"POST",   ME "/addresses",                addresses_create,      W_JSON | GR_R_IK, NULL, NULL, SMALL_MAX},
    {"PATCH",  ME "/addresses/{id}",           addresses_patch,       W_JSON, NULL, NULL, SMALL_MAX},
    {"DELETE", ME "/addresses/{id}",           addresses_delete,      W, NULL, NULL, 0},
    {"POST",   ME "/addresses/{id}/default",   addresses_set_default, W, NULL, NULL, 1024},
    {"GET",    ME "/preferences",              preferences_get,       AUTH, NULL, NULL, 0},
    {"PUT",    ME "/preferences",              preferences_put,       W_JSON, NULL, NULL, PREFS_MAX},
    {"POST",   ME "/exports",                  exports_create,        W | GR_R_IK, NULL, NULL, 1024},
    {"GET",    ME "/exports/{id}",             exports_get,           AUTH, NULL, NULL, 0},
    {"GET",    U "/{id}",                      profiles_get,          AUTH, NULL, NULL, 0},
    {"DELETE", U "/{id}",                      profiles_delete,       W, NULL, NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(user_routes) / sizeof(user_routes[0]) == USER_NROUTES,
               "USER_NROUTES must match the route table");
