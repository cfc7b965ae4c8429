/*
 * service.c - user-service (SERVICES §06): profiles, addresses, preferences, and GDPR export
 * and erasure, on :8002 under /api/v1/users. Everything shared (config, DB and migrations,
 * JWT, HTTP, platform routes, the bus and its consumer) is gr_main's; the init hook reads the
 * service's own configuration (USER_ZONEINFO_DIR) into the state handlers reach as req->app.
 */
#include <stdio.h>
#include <sys/stat.h>

#include "gr/config.h"
#include "gr/log.h"
#include "gr/service.h"
#include "user.h"

/*
 * USER_ZONEINFO_DIR, checked before gr_main so that a bad value stops start-up like the common
 * variables do (exit status 2, one line naming it): time zones are validated against this
 * directory, and without it every one would be a 422. NULL when it is not a directory.
 */
static const char *zoneinfo_dir(void)
{
    const char *dir = NULL;
    char err[256];
    struct stat st;

    if (gr_config_str("USER_ZONEINFO_DIR", USER_ZONEINFO_DEFAULT, NULL, &dir, err, sizeof(err)) <
        0) {
        fprintf(stderr, "06-user-service: %s\n", err);
        return NULL;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr,
                "06-user-service: USER_ZONEINFO_DIR: must be a zoneinfo directory (install tzdata),"
                " got '%s'\n",
                dir);
        return NULL;
    }
    return dir;
}

static int user_init(struct gr_ctx *ctx, void **app)
{
    const char *dir = zoneinfo_dir();
    struct user_app *ua;

    (void)ctx;
    if (dir == NULL)
        return GR_ECONFIG;
    ua = gr_xcalloc(1, sizeof(*ua));
    ua->zoneinfo_dir = gr_xstrdup(dir);
    *app = ua;
    return 0;
}

static void user_fini(struct gr_ctx *ctx, void *app)
{
    struct user_app *ua = app;

    (void)ctx;
    gr_free(ua->zoneinfo_dir);
    gr_free(ua);
}

static const struct gr_service user_service = {
    .name = "user-service",
    .id = "06-user-service",
    .version = "0.1.0",
    .port = 8002,
    .routes = user_routes,
    .nroutes = USER_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Profiles are not money, stock or order data (ARCHITECTURE §6): synchronous=NORMAL. */
    .sqlite_sync_full = false,
    .subs = user_subs,
    .nsubs = USER_NSUBS,
    .init = user_init,
    .fini = user_fini,
};

int main(int argc, char **argv)
{
    /* Flags (--describe, --routes, --openapi, …) need no configuration. */
    if (argc == 1 && zoneinfo_dir() == NULL)
        return 2;
    return gr_main(&user_service, argc, argv);
}
