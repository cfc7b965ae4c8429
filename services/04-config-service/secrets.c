/*
 * secrets.c - config-service's use of gr/seal.h: the master key comes from CONFIG_MASTER_KEY
 * (64 hex characters, the same on every instance) or, when that is unset, from
 * DATA_DIR/config-master-key, 32 random bytes made on first start with mode 0600. Never from
 * the database. Secret values are sealed with "service/env/key" as associated data, so a
 * sealed value cannot be moved to another key.
 */
#include <stdio.h>
#include <string.h>

#include "cfgsvc.h"

int cfg_key_load(struct cfg_app *app, const char *data_dir)
{
    const struct gr_seal_key_opts o = {
        .env = "CONFIG_MASTER_KEY",
        .format = GR_SEAL_ENV_HEX,
        .file = "config-master-key",
        .what = "master key",
        .data_dir = data_dir,
        .create = true,
    };
    char err[GR_SEAL_ERR_MAX];
    int rc;

    rc = gr_seal_key_load(&app->key, &o, err, sizeof(err));
    if (rc < 0 && err[0])
        fprintf(stderr, "04-config-service: %s\n", err);
    return rc;
}

int cfg_seal(const struct cfg_app *app, struct gr_arena *a, const char *aad, const void *p,
             size_t n, const char **out)
{
    if (n > CFG_VALUE_MAX)
        return GR_ETOOBIG;
    return gr_seal(&app->key, a, aad, p, n, out);
}

int cfg_open(const struct cfg_app *app, struct gr_arena *a, const char *aad, const char *sealed,
             const char **out)
{
    char *plain = NULL;
    int rc;

    if (sealed && strlen(sealed) > GR_SEAL_TEXT_LEN(CFG_VALUE_MAX))
        return GR_EINVAL;
    rc = gr_seal_open(&app->key, a, aad, sealed, &plain, NULL);
    if (rc == 0)
        *out = plain;
    return rc;
}
