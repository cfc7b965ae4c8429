/*
 * keys.c - the signing keys (SERVICES §05 "new signing keys appear in the JWKS before use").
 *
 * signing_keys holds every key with its public JWK and its private key sealed under the KEK
 * (secrets.c). The JWKS publishes each key whose retire_at is unset or in the future; the key
 * that signs is the one with the latest signs_from at or before now, so a rotation inserts the
 * new key with signs_from = now + delay: it is published at once and signs only after every
 * verifier's cached JWKS had the chance to see it (verifiers also refetch on an unknown kid).
 * The old key retires AUTH_ACCESS_TTL_S (+ leeway) after the new one starts signing, when the
 * last token it signed has expired. Every instance reads the same table; one that did not do
 * the rotation reloads it at most every KEYS_MAX_AGE_MS (JWKS requests) and at start-up.
 */
#include <string.h>

#include "auth.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/time.h"

#define KEYS_MAX        16
#define RETIRE_LEEWAY_S 120

struct loaded_key {
    struct gr_jwt_key *k;
    int64_t signs_from;
};

static struct loaded_key loaded[KEYS_MAX]; /* app->keys_mu */
static size_t nloaded;

/* Creates a key of @alg signing from @signs_from and inserts it (in @db's transaction). */
static int key_create(struct auth_app *app, struct gr_db_conn *db, struct gr_arena *a,
                      const char *alg, int64_t signs_from, const char **kid_out)
{
    char kid[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct gr_jwt_key *k = NULL;
    struct gr_buf pem;
    json_t *jwk = NULL;
    const char *sealed = NULL;
    char *jwk_text = NULL;
    int rc;

    gr_id_new(kid);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_jwt_key_generate(alg, kid, &k);
    if (rc < 0)
        return rc;
    gr_buf_init(&pem, 16384);
    rc = gr_jwt_key_pem(k, &pem);
    if (rc == 0)
        rc = auth_seal(app, a, pem.ptr, pem.len, &sealed);
    gr_buf_release(&pem);
    if (rc == 0)
        rc = gr_jwt_key_jwk(k, &jwk);
    if (rc == 0) {
        jwk_text = json_dumps(jwk, JSON_COMPACT);
        rc = jwk_text ? 0 : GR_EINTERNAL;
    }
    if (rc == 0)
        rc = gr_db_exec(db,
                        "INSERT INTO signing_keys (kid, alg, public_jwk, private_enc, signs_from,"
                        " created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                        (struct gr_db_val[]){ GR_DB_TEXT(kid), GR_DB_TEXT(alg),
                                              GR_DB_TEXT(jwk_text), GR_DB_TEXT(sealed),
                                              GR_DB_INT(signs_from), GR_DB_TEXT(now) },
                        6, NULL);
    gr_free(jwk_text);
    json_decref(jwk);
    gr_jwt_key_free(k);
    if (rc == 0 && kid_out)
        *kid_out = gr_arena_strdup(a, kid);
    return rc;
}

/* Reads the live keys and swaps them in, with the JWKS document, for the verifier too. */
static int keys_load(struct auth_app *app)
{
    struct gr_db_conn *db;
    struct gr_db_rows *rows = NULL;
    struct gr_arena a;
    struct loaded_key fresh[KEYS_MAX];
    size_t nfresh = 0;
    json_t *keys = json_array(), *doc;
    char *jwks = NULL;
    int64_t now = gr_time_now_s();
    int rc;

    gr_arena_init(&a);
    rc = gr_db_conn(app->ctx->db, &db);
    if (rc == 0)
        rc = gr_db_query(db, &a,
                         "SELECT kid, alg, public_jwk, private_enc, signs_from FROM signing_keys"
                         " WHERE retire_at IS NULL OR retire_at > $1"
                         " ORDER BY signs_from DESC, kid DESC LIMIT $2",
                         (struct gr_db_val[]){ GR_DB_INT(now), GR_DB_INT(KEYS_MAX) }, 2, &rows);
    for (size_t i = 0; rc == 0 && i < gr_db_nrows(rows); i++) {
        json_error_t jerr;
        json_t *jwk = json_loads(gr_db_text(rows, i, 2), 0, &jerr);
        char *pem = NULL;
        size_t pem_len = 0;
        struct gr_jwt_key *k = NULL;

        if (!jwk) {
            rc = GR_EINTERNAL;
            break;
        }
        json_array_append_new(keys, jwk);
        rc = auth_open(app, &a, gr_db_text(rows, i, 3), &pem, &pem_len);
        if (rc == 0)
            rc = gr_jwt_key_load_pem(pem, pem_len, gr_db_text(rows, i, 1), gr_db_text(rows, i, 0),
                                     &k);
        if (rc < 0) {
            gr_log_error("signing key cannot be opened (wrong AUTH_KEY_SECRET?)", "kid",
                         gr_db_text(rows, i, 0));
            break;
        }
        fresh[nfresh].k = k;
        fresh[nfresh].signs_from = gr_db_int(rows, i, 4);
        nfresh++;
    }
    if (rc == 0 && nfresh == 0)
        rc = GR_ENOTFOUND;
    if (rc == 0) {
        doc = json_pack("{s:o}", "keys", keys);
        keys = NULL;
        jwks = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        rc = jwks ? gr_auth_set_jwks(app->ctx->auth, jwks, strlen(jwks)) : GR_EINTERNAL;
    }
    json_decref(keys);
    if (rc < 0) {
        for (size_t i = 0; i < nfresh; i++)
            gr_jwt_key_free(fresh[i].k);
        gr_free(jwks);
        gr_arena_release(&a);
        return rc;
    }
    pthread_rwlock_wrlock(&app->keys_mu);
    for (size_t i = 0; i < nloaded; i++)
        gr_jwt_key_free(loaded[i].k);
    memcpy(loaded, fresh, nfresh * sizeof(fresh[0]));
    nloaded = nfresh;
    gr_free(app->jwks);
    app->jwks = jwks;
    app->keys_loaded_ms = gr_time_mono_ms();
    pthread_rwlock_unlock(&app->keys_mu);
    gr_arena_release(&a);
    return 0;
}

int auth_keys_init(struct auth_app *app)
{
    struct gr_db_conn *db;
    struct gr_arena a;
    int rc = keys_load(app);

    if (rc != GR_ENOTFOUND)
        return rc;
    /* A fresh database: the first key signs at once (nobody has a JWKS to update yet). */
    gr_arena_init(&a);
    rc = gr_db_conn(app->ctx->db, &db);
    if (rc == 0)
        rc = gr_db_begin(db);
    if (rc == 0) {
        rc = key_create(app, db, &a, app->signing_alg, gr_time_now_s(), NULL);
        rc = rc == 0 ? gr_db_commit(db) : (gr_db_rollback(db), rc);
    }
    gr_arena_release(&a);
    if (rc == 0) {
        gr_log_info("created the first signing key", "alg", app->signing_alg);
        rc = keys_load(app);
    }
    return rc;
}

int auth_keys_refresh(struct auth_app *app, int64_t max_age_ms)
{
    int64_t age;

    pthread_rwlock_rdlock(&app->keys_mu);
    age = gr_time_mono_ms() - app->keys_loaded_ms;
    pthread_rwlock_unlock(&app->keys_mu);
    return age < max_age_ms ? 0 : keys_load(app);
}

int auth_keys_rotate(struct auth_app *app, struct gr_req *req, const char *alg, int delay_s,
                     const char **kid_out)
{
    int64_t from = gr_time_now_s() + delay_s;
    const char *kid = NULL;
    char data[256];
    int rc = gr_req_begin(req);

    if (rc == 0)
        rc = key_create(app, req->db, req->arena, alg, from, &kid);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL"
                        " AND kid <> $2",
                        (struct gr_db_val[]){ GR_DB_INT(from + AUTH_ACCESS_TTL_S + RETIRE_LEEWAY_S),
                                              GR_DB_TEXT(kid) },
                        2, NULL);
    if (rc == 0) {
        snprintf(data, sizeof(data), "{\"kid\":\"%s\",\"alg\":\"%s\",\"signs_from\":%lld}", kid,
                 alg, (long long)from);
        rc = gr_req_emit(req, "auth.keys.rotated", kid, data);
    }
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc == 0)
        rc = keys_load(app);
    if (rc == 0)
        *kid_out = kid;
    return rc;
}

int auth_keys_sign(struct auth_app *app, json_t *claims, char **out)
{
    int64_t now = gr_time_now_s();
    struct gr_jwt_key *k = NULL;
    int64_t best = 0;
    int rc;

    pthread_rwlock_rdlock(&app->keys_mu);
    for (size_t i = 0; i < nloaded; i++) {
        if (loaded[i].signs_from <= now && (!k || loaded[i].signs_from > best)) {
            k = loaded[i].k;
            best = loaded[i].signs_from;
        }
    }
    rc = k ? gr_jwt_sign(k, "at+jwt", claims, out) : GR_EUNAVAIL;
    pthread_rwlock_unlock(&app->keys_mu);
    return rc;
}
