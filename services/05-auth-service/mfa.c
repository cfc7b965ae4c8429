/*
 * mfa.c - TOTP multi-factor authentication (RFC 6238 via totp.c) with recovery codes.
 *
 * POST /mfa/totp starts an enrolment: a new secret (stored sealed, not yet enabled), its
 * otpauth:// URI and ten recovery codes (only their hashes are kept), shown this once.
 * POST /mfa/totp/verify {code} enables it once the user proves the authenticator works.
 * DELETE /mfa/totp {code} (a current TOTP code or an unused recovery code) turns it off.
 * Login then needs `totp`: a code (at most one step of drift, each step usable once: the
 * matched step is stored and only later steps pass) or a recovery code (usable once).
 */
#include <string.h>

#include "auth.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "totp.h"

struct mfa_state {
    const char *email;
    const char *secret_enc;
    bool enabled;
    long long last_step;
};

static int load(struct gr_req *req, struct mfa_state *m)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(req->db, req->arena,
                         "SELECT email, totp_secret_enc, totp_enabled, totp_last_step"
                         " FROM credentials WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, &rows);

    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return GR_ENOTFOUND; /* a service token: no account */
    m->email = gr_db_text(rows, 0, 0);
    m->secret_enc = gr_db_isnull(rows, 0, 1) ? NULL : gr_db_text(rows, 0, 1);
    m->enabled = gr_db_int(rows, 0, 2) != 0;
    m->last_step = gr_db_int(rows, 0, 3);
    return 0;
}

int auth_mfa_check(struct gr_req *req, const char *user_id, const char *secret_enc,
                   long long last_step, const char *code)
{
    struct auth_app *app = req->app;
    long long changes = 0, step = 0;
    char *secret = NULL;
    int rc;

    if (strchr(code, '-') || strlen(code) > 6) {
        char h[TOTP_RC_HASH_LEN];

        totp_recovery_hash(code, h);
        if (!h[0])
            return GR_EUNAUTH;
        rc = gr_req_begin(req);
        if (rc == 0)
            rc = gr_db_exec(req->db,
                            "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND"
                            " code_hash = $2 AND used_at IS NULL",
                            (struct gr_db_val[]){ GR_DB_TEXT(user_id), GR_DB_TEXT(h),
                                                  GR_DB_INT(gr_time_now_s()) },
                            3, &changes);
    } else {
        rc = auth_open(app, req->arena, secret_enc, &secret, NULL);
        if (rc == 0)
            rc = totp_verify(secret, code, gr_time_now_s(), last_step, &step);
        if (rc < 0)
            return GR_EUNAUTH;
        /* Claim the step: of two requests with one code, one wins. */
        rc = gr_req_begin(req);
        if (rc == 0)
            rc = gr_db_exec(req->db,
                            "UPDATE credentials SET totp_last_step = $2 WHERE id = $1"
                            " AND totp_last_step < $2",
                            (struct gr_db_val[]){ GR_DB_TEXT(user_id), GR_DB_INT(step) }, 2,
                            &changes);
    }
    if (rc == 0 && changes == 0)
        rc = GR_EUNAUTH;
    if (rc == 0)
        return gr_db_commit(req->db);
    (void)gr_db_rollback(req->db);
    return rc;
}

/* POST /api/v1/auth/mfa/totp */
int auth_mfa_totp_enroll(struct gr_req *req, struct gr_resp *resp)
{
    struct auth_app *app = req->app;
    struct mfa_state m;
    char secret[TOTP_SECRET_B32_MAX + 1], uri[512], codes[TOTP_RC_COUNT][TOTP_RC_LEN];
    const char *sealed = NULL;
    json_t *list;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    rc = load(req, &m);
    if (rc == GR_ENOTFOUND)
        return gr_resp_problem(req, resp, GR_EFORBIDDEN, NULL, "only accounts can enrol");
    if (rc < 0)
        return rc;
    if (m.enabled)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "mfa_enabled",
                               "TOTP is already enabled; delete it first");
    rc = totp_secret_new(secret, sizeof(secret));
    if (rc == 0)
        rc = totp_uri(secret, app->ctx->cfg.jwt_issuer, m.email, uri, sizeof(uri));
    if (rc == 0)
        rc = totp_recovery_codes(codes, TOTP_RC_COUNT);
    if (rc == 0)
        rc = auth_seal(app, req->arena, secret, strlen(secret), &sealed);
    if (rc == 0)
        rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET totp_secret_enc = $2, totp_enabled = 0,"
                        " totp_last_step = 0 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub), GR_DB_TEXT(sealed) },
                        2, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM recovery_codes WHERE user_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, NULL);
    list = json_array();
    for (int i = 0; rc == 0 && i < TOTP_RC_COUNT; i++) {
        char h[TOTP_RC_HASH_LEN];

        totp_recovery_hash(codes[i], h);
        rc = gr_db_exec(req->db, "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub), GR_DB_TEXT(h) }, 2,
                        NULL);
        json_array_append_new(list, json_string(codes[i]));
    }
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0) {
        json_decref(list);
        return rc;
    }
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 201,
                 json_pack("{s:s,s:s,s:o,s:b}", "secret", secret, "otpauth_uri", uri,
                           "recovery_codes", list, "enabled", 0));
    return 0;
}

/* POST /api/v1/auth/mfa/totp/verify {code} */
int auth_mfa_totp_verify(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "code", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *code = NULL;
    struct mfa_state m;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "code", GR_JSON_REQUIRED, 6, 6, &code, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = load(req, &m);
    if (rc == GR_ENOTFOUND || (rc == 0 && !m.secret_enc))
        return gr_resp_problem(req, resp, GR_ECONFLICT, "mfa_not_enrolled",
                               "start with POST /api/v1/auth/mfa/totp");
    if (rc < 0)
        return rc;
    if (m.enabled)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "mfa_enabled", "TOTP is already enabled");
    rc = auth_mfa_check(req, req->principal->sub, m.secret_enc, m.last_step, code);
    if (rc == GR_EUNAUTH) {
        gr_resp_field_error(req, resp, "/code", "does not match the authenticator");
        return gr_resp_problem(req, resp, GR_EVALID, "invalid_totp", "invalid TOTP code");
    }
    if (rc == 0)
        rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db, "UPDATE credentials SET totp_enabled = 1 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_pack("{s:b}", "enabled", 1));
    return 0;
}

/* DELETE /api/v1/auth/mfa/totp {code} */
int auth_mfa_totp_delete(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "code", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *code = NULL;
    struct mfa_state m;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "code", GR_JSON_REQUIRED, 6, 32, &code, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = load(req, &m);
    if (rc == GR_ENOTFOUND || (rc == 0 && !m.enabled))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "TOTP is not enabled");
    if (rc < 0)
        return rc;
    rc = auth_mfa_check(req, req->principal->sub, m.secret_enc, m.last_step, code);
    if (rc == GR_EUNAUTH)
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_totp",
                               "invalid or already used code");
    if (rc == 0)
        rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET totp_enabled = 0, totp_secret_enc = NULL WHERE"
                        " id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM recovery_codes WHERE user_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}
