/*
 * service.c - auth-service (SERVICES §05) on :8001 under /api/v1/auth: accounts, passwords,
 * access and refresh tokens, the JWKS every service verifies against, login defences.
 * Everything shared is gr_main's; the init hook loads the key-encryption key and the signing
 * keys (creating the first on a fresh database), points this process's own token verifier at
 * them, and creates the first super_admin when asked (decision 11).
 *
 * Configuration (besides ARCHITECTURE §1): AUTH_KEY_SECRET (>= 32 bytes; else a key file in
 * DATA_DIR), AUTH_SIGNING_ALG (ES256 | RS256, default ES256), AUTH_BOOTSTRAP_ADMIN_EMAIL and
 * AUTH_BOOTSTRAP_ADMIN_PASSWORD, NOTIFICATION_URL and AUTH_RESET_LINK_BASE (password reset),
 * AUTH_MAX_HASHING (concurrent Argon2 computations, default 4), AUTH_LOGIN_LIMIT_PER_USER and
 * AUTH_LOGIN_LIMIT_PER_IP (logins a minute, default 5 and 60), AUTH_BOOTSTRAP_CLIENT_ID and
 * AUTH_BOOTSTRAP_CLIENT_SECRET (a service client made at start-up, for `gravity up`).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "gr/log.h"
#include "gr/redis.h"
#include "password.h"

static struct auth_app the_app;

/* An integer variable in [lo, hi], or @def when unset; -1 (with a message) when malformed. */
static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    char *end;
    long x;

    if (!v || !*v)
        return def;
    x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi) {
        fprintf(stderr, "05-auth-service: %s must be %d..%d\n", name, lo, hi);
        return -1;
    }
    return (int)x;
}

static int init(struct gr_ctx *ctx, void **app_out)
{
    struct auth_app *app = &the_app;
    const char *alg = getenv("AUTH_SIGNING_ALG");
    const char *maxh = getenv("AUTH_MAX_HASHING");
    int rc;

    /* Argon2 takes 19 MiB per hash: keep such blocks mmap'd so that each is returned to the
     * system when freed (glibc would otherwise raise its threshold and keep them in arenas). */
    (void)mallopt(M_MMAP_THRESHOLD, 1 << 20);
    app->ctx = ctx;
    app->signing_alg = alg && *alg ? alg : "ES256";
    if (strcmp(app->signing_alg, "ES256") != 0 && strcmp(app->signing_alg, "RS256") != 0) {
        fprintf(stderr, "05-auth-service: AUTH_SIGNING_ALG must be ES256 or RS256, got '%.32s'\n",
                app->signing_alg);
        return GR_ECONFIG;
    }
    if (maxh && *maxh) {
        char *end;
        long v = strtol(maxh, &end, 10);

        if (*end || v < 1 || v > 256) {
            fprintf(stderr, "05-auth-service: AUTH_MAX_HASHING must be 1..256\n");
            return GR_ECONFIG;
        }
        pw_set_max_concurrent((int)v);
    }
    /* Decision 19; raise them only for load tests or behind a proxy that limits itself. */
    app->rl_user = env_int("AUTH_LOGIN_LIMIT_PER_USER", 5, 1, 1000000);
    app->rl_ip = env_int("AUTH_LOGIN_LIMIT_PER_IP", 60, 1, 1000000);
    if (app->rl_user < 0 || app->rl_ip < 0)
        return GR_ECONFIG;
    if (!ctx->db) {
        gr_log_error("auth-service needs a database");
        return GR_ECONFIG;
    }
    pthread_rwlock_init(&app->keys_mu, NULL);
    rc = auth_oauth_config_check();
    if (rc < 0)
        return rc;
    if (ctx->cfg.redis_url) {
        char err[256];

        rc = gr_redis_new(ctx->cfg.redis_url, &app->redis, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "05-auth-service: %s\n", err);
            return rc;
        }
    }
    app->rl = app->redis ? gr_rl_new_redis(app->redis, 65536) : gr_rl_new(65536);
    rc = auth_kek_load(app, ctx->cfg.data_dir);
    if (rc == 0)
        rc = auth_keys_init(app);
    if (rc == 0)
        rc = auth_bootstrap_admin(app);
    if (rc == 0)
        rc = auth_bootstrap_client(app);
    if (rc < 0)
        return rc;
    *app_out = app;
    return 0;
}

static void fini(struct gr_ctx *ctx, void *p)
{
    struct auth_app *app = p;

    (void)ctx;
    auth_links_stop();
    gr_rl_free(app->rl);
    gr_redis_free(app->redis);
    app->redis = NULL;
    gr_free(app->jwks);
    app->jwks = NULL;
    gr_seal_key_wipe(&app->kek); /* last: the links thread has stopped */
}

static const struct gr_service auth_service = {
    .name = "auth-service",
    .id = "05-auth-service",
    .version = "0.1.0",
    .port = 8001,
    .routes = auth_routes,
    .nroutes = AUTH_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Credentials and sessions: a lost commit after a power cut must not resurrect a revoked
     * session or a reset token. */
    .sqlite_sync_full = true,
    .init = init,
    .fini = fini,
    .subs = auth_subs,
    .nsubs = AUTH_NSUBS,
};

int main(int argc, char **argv)
{
    return gr_main(&auth_service, argc, argv);
}
