/*
 * events.c - the events auth-service consumes (SERVICES §05: sub user.deleted). The handler
 * runs in the consumer's transaction with the inbox record, so a redelivery changes nothing.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/time.h"

#define SOURCE "/gravity/auth-service"

/*
 * user.deleted (erasure in 06): the account is disabled and forgets its email and password,
 * every session is revoked (auth.token.revoked), and the account's tokens stop working at
 * once here (auth_caller refuses a disabled account).
 */
static int on_user_deleted(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    const char *uid = ev->subject;
    struct gr_db_rows *fam = NULL;
    char data[256], anon[96];
    int rc;

    (void)app;
    if (!uid || !gr_id_valid(uid, strlen(uid))) {
        gr_log_warn("user.deleted without a user id, ignored", "event_id", ev->id);
        return 0;
    }
    snprintf(anon, sizeof(anon), "deleted+%s@invalid.invalid", uid);
    rc = gr_db_exec(db,
                    "UPDATE credentials SET status = 'disabled', email = $2, username = NULL,"
                    " password_hash = NULL, totp_secret_enc = NULL, totp_enabled = 0,"
                    " version = version + 1 WHERE id = $1 AND status <> 'disabled'",
                    (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(anon) }, 2, NULL);
    if (rc == 0)
        rc = gr_db_exec(db, "DELETE FROM oauth_accounts WHERE user_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_query(db, a,
                         "SELECT DISTINCT family_id FROM refresh_tokens WHERE user_id = $1 AND"
                         " revoked_at IS NULL",
                         (struct gr_db_val[]){ GR_DB_TEXT(uid) }, 1, &fam);
    if (rc == 0 && gr_db_nrows(fam) > 0) {
        rc = gr_db_exec(db,
                        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND"
                        " revoked_at IS NULL",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_INT(gr_time_now_ms()) }, 2,
                        NULL);
        snprintf(data, sizeof(data),
                 "{\"user_id\":\"%s\",\"family_id\":null,\"jti\":null,\"reason\":\"user_deleted\"}",
                 uid);
        if (rc == 0)
            rc = gr_bus_emit(db, SOURCE, "auth.token.revoked", uid, data, ev->traceparent, NULL);
    }
    return rc;
}

const struct gr_sub auth_subs[AUTH_NSUBS] = {
    { "user.deleted", on_user_deleted },
};
