/*
 * routes.c - auth-service's route table (STYLE R19); the core enforces each route's flags.
 * Handlers: users.c (register), session.c (login, tokens, keys, password reset), admin.c
 * (roles, sessions, service clients, imports), mfa.c (TOTP), oauth.c (OAuth2/OIDC login).
 */
#include "auth.h"

#define A "/api/v1/auth"
#define J GR_R_JSON

/* clang-format off */
const struct gr_route auth_routes[] = {
    {"POST",   A "/register",                 auth_register,               J, NULL, NULL, 0},
    {"POST",   A "/login",                    auth_login,                  J, NULL, NULL, 0},
    {"POST",   A "/refresh",                  auth_refresh,                J, NULL, NULL, 0},
    {"POST",   A "/logout",                   auth_logout,                 J | GR_R_AUTH, NULL, NULL, 0},
    {"POST",   A "/validate-token",           auth_validate,               J, NULL, NULL, 0},
    {"GET",    A "/me",                       auth_me,                     GR_R_AUTH, NULL, NULL, 0},
    {"GET",    A "/jwks",                     auth_jwks,                   GR_R_PUBLIC, NULL, NULL, 0},
    {"POST",   A "/token",                    auth_token,                  GR_R_OWN_AUTHZ, NULL, NULL, 0},
    {"POST",   A "/password-reset",           auth_password_reset,         J, NULL, NULL, 0},
    {"POST",   A "/password-reset/confirm",   auth_password_reset_confirm, J, NULL, NULL, 0},
    {"POST",   A "/verify-email",             auth_verify_email_request,   GR_R_AUTH, NULL, NULL, 0},
    {"POST",   A "/verify-email/confirm",     auth_verify_email_confirm,   J, NULL, NULL, 0},
    {"POST",   A "/mfa/totp",                 auth_mfa_totp_enroll,        GR_R_AUTH, NULL, NULL, 0},
    {"POST",   A "/mfa/totp/verify",          auth_mfa_totp_verify,        J | GR_R_AUTH, NULL, NULL, 0},
    {"DELETE", A "/mfa/totp",                 auth_mfa_totp_delete,        J | GR_R_AUTH, NULL, NULL, 0},
    {"GET",    A "/oauth/{provider}/authorize", auth_oauth_authorize,      GR_R_PUBLIC, NULL, "redirect_uri", 0},
    {"GET",    A "/oauth/{provider}/callback",  auth_oauth_callback,       GR_R_PUBLIC, NULL, "code,state,error,error_description", 0},
    {"GET",    A "/sessions",                 auth_sessions_list,          GR_R_AUTH, NULL, NULL, 0},
    {"DELETE", A "/sessions/{id}",            auth_sessions_delete,        GR_R_AUTH, NULL, NULL, 0},
    {"GET",    A "/roles",                    auth_roles_list,             GR_R_PUBLIC, "auth:admin", NULL, 0},
    {"POST",   A "/roles",                    auth_roles_create,           J, "auth:admin", NULL, 0},
    {"PUT",    A "/roles/{name}/permissions", auth_role_permissions_put,   J, "auth:admin", NULL, 0},
    {"PUT",    A "/users/{id}/roles",         auth_user_roles_put,         J, "auth:admin", NULL, 0},
    {"POST",   A "/users/import",             auth_users_import,           J, "auth:admin", NULL, 0},
    {"POST",   A "/clients",                  auth_clients_create,         J, "auth:admin", NULL, 0},
    {"POST",   A "/keys/rotate",              auth_keys_rotate_h,          J, "auth:admin", NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(auth_routes) / sizeof(auth_routes[0]) == AUTH_NROUTES,
               "AUTH_NROUTES must match the route table");
