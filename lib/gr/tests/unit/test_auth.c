/*
 * test_auth.c - unit tests for gr/auth.h: signing keys, good RS256/ES256 tokens, a long list
 * of forged and tampered tokens that must all be rejected, JWKS parsing and loading from
 * file:// and http:// (a tiny in-test server), the unknown-kid refetch rate limit driven by
 * the library clock, and permission matching.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "../../src/auth_int.h"
#include "gr/auth.h"
#include "gr/log.h"
#include "gr/time.h"

struct fx {
    struct gr_jwt_key *rs;    /* kid "rs1", in the JWKS */
    struct gr_jwt_key *es;    /* kid "es1", in the JWKS */
    struct gr_jwt_key *stray; /* kid "es9", not in the JWKS */
    char *jwks;               /* {"keys":[rs1, es1]}, gr_free */
    struct gr_auth *au;       /* static verifier, issuer and audience "gravity" */
    struct gr_arena arena;    /* test strings */
};

/* ---- helpers ----------------------------------------------------------------------------- */

static char *dump_arena(struct gr_arena *a, const json_t *j)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    char *s = gr_arena_alloc(a, n + 1);

    assert_int_equal(json_dumpb(j, s, n, JSON_COMPACT), n);
    s[n] = '\0';
    return s;
}

static char *b64(struct gr_arena *a, const void *p, size_t n)
{
    struct gr_buf b = GR_BUF_INIT;
    char *s;

    assert_int_equal(gr_b64url_encode(&b, p, n), 0);
    s = gr_arena_strdup(a, gr_buf_cstr(&b));
    gr_buf_release(&b);
    return s;
}

static char *b64s(struct gr_arena *a, const char *s)
{
    return b64(a, s, strlen(s));
}

static json_t *std_claims(void)
{
    long long now = (long long)gr_time_now_s();

    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:[s], s:[s,s]}", "iss", "gravity", "aud",
                     "gravity", "sub", "user-1", "iat", now, "nbf", now, "exp", now + 3600, "jti",
                     "jti-1", "roles", "admin", "permissions", "products:write", "orders:*");
}

/* Signs @claims (reference stolen) with @k; the token lives in the fixture arena. */
static char *mint(struct fx *fx, const struct gr_jwt_key *k, const char *typ, json_t *claims)
{
    char *tok = NULL, *copy;

    assert_int_equal(gr_jwt_sign(k, typ, claims, &tok), 0);
    json_decref(claims);
    copy = gr_arena_strdup(&fx->arena, tok);
    gr_free(tok);
    return copy;
}

static char *mint_raw(struct fx *fx, const struct gr_jwt_key *k, const char *hdr,
                      const char *payload)
{
    char *tok = NULL, *copy;

    assert_int_equal(gr_jwt_sign_raw(k, hdr, strlen(hdr), payload, strlen(payload), &tok), 0);
    copy = gr_arena_strdup(&fx->arena, tok);
    gr_free(tok);
    return copy;
}

static char *std_payload(struct fx *fx)
{
    json_t *c = std_claims();
    char *s = dump_arena(&fx->arena, c);

    json_decref(c);
    return s;
}

/* Claims with one member replaced (@val reference stolen) or removed (@val NULL). */
static char *claims_with(struct fx *fx, const char *name, json_t *val)
{
    json_t *c = std_claims();
    char *s;

    if (val)
        json_object_set_new(c, name, val);
    else
        json_object_del(c, name);
    s = dump_arena(&fx->arena, c);
    json_decref(c);
    return s;
}

static char *hdr(struct fx *fx, const char *alg, const char *kid, const char *typ)
{
    return gr_arena_printf(&fx->arena, "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"%s\"}", alg, kid,
                           typ);
}

static int verify_n(struct gr_auth *au, const char *tok, size_t len, struct gr_principal *p)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_principal tmp;
    int rc = gr_auth_verify(au, &a, tok, len, &tmp);

    if (p)
        *p = tmp;
    if (rc < 0)
        assert_null(tmp.sub);
    gr_arena_release(&a);
    if (p) {
        /* The strings went with the arena; only the scalar parts stay meaningful. */
        p->sub = NULL;
        p->jti = NULL;
        p->roles = NULL;
        p->perms = NULL;
    }
    return rc;
}

static int verify(struct gr_auth *au, const char *tok)
{
    return verify_n(au, tok, strlen(tok), NULL);
}

static char *jwks_of(const struct gr_jwt_key *const *keys, size_t n)
{
    json_t *arr = json_array(), *jwk, *root;
    size_t i, len;
    char *s;

    for (i = 0; i < n; i++) {
        assert_int_equal(gr_jwt_key_jwk(keys[i], &jwk), 0);
        json_array_append_new(arr, jwk);
    }
    root = json_pack("{s:o}", "keys", arr);
    len = json_dumpb(root, NULL, 0, JSON_COMPACT);
    s = gr_xmalloc(len + 1);
    assert_int_equal(json_dumpb(root, s, len, JSON_COMPACT), len);
    s[len] = '\0';
    json_decref(root);
    return s;
}

static EVP_PKEY *private_pkey(const struct gr_jwt_key *k)
{
    struct gr_buf pem = GR_BUF_INIT;
    BIO *bio;
    EVP_PKEY *pk;

    assert_int_equal(gr_jwt_key_pem(k, &pem), 0);
    bio = BIO_new_mem_buf(pem.ptr, (int)pem.len);
    pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    assert_non_null(pk);
    BIO_free(bio);
    gr_buf_release(&pem);
    return pk;
}

/* The classic alg confusion: HS256 keyed with the public key's PEM text. */
static char *forge_hs256(struct fx *fx, const struct gr_jwt_key *k, const char *kid)
{
    EVP_PKEY *pk = private_pkey(k);
    BIO *bio = BIO_new(BIO_s_mem());
    char *pub = NULL, *input;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    long publen;

    assert_int_equal(PEM_write_bio_PUBKEY(bio, pk), 1);
    publen = BIO_get_mem_data(bio, &pub);
    input = gr_arena_printf(&fx->arena, "%s.%s", b64s(&fx->arena, hdr(fx, "HS256", kid, "at+jwt")),
                            b64s(&fx->arena, std_payload(fx)));
    assert_non_null(HMAC(EVP_sha256(), pub, (int)publen, (const unsigned char *)input,
                         strlen(input), mac, &maclen));
    BIO_free(bio);
    EVP_PKEY_free(pk);
    return gr_arena_printf(&fx->arena, "%s.%s", input, b64(&fx->arena, mac, maclen));
}

/* An ES256 token whose signature is DER (as OpenSSL makes it) instead of JOSE r||s. */
static char *forge_es_der(struct fx *fx)
{
    EVP_PKEY *pk = private_pkey(fx->es);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char sig[128];
    size_t siglen = sizeof(sig);
    char *input =
        gr_arena_printf(&fx->arena, "%s.%s", b64s(&fx->arena, hdr(fx, "ES256", "es1", "at+jwt")),
                        b64s(&fx->arena, std_payload(fx)));

    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)),
                     1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    return gr_arena_printf(&fx->arena, "%s.%s", input, b64(&fx->arena, sig, siglen));
}

/* @tok with byte @i of its decoded signature XORed with @mask. */
static char *flip_sig(struct fx *fx, const char *tok, size_t i, unsigned char mask)
{
    const char *dot = strrchr(tok, '.');
    size_t n = strlen(dot + 1), sn = 0;
    unsigned char *sig = gr_arena_alloc(&fx->arena, n);

    assert_int_equal(gr_b64url_decode(dot + 1, n, sig, &sn), 0);
    assert_true(i < sn);
    sig[i] ^= mask;
    return gr_arena_printf(&fx->arena, "%.*s.%s", (int)(dot - tok), tok, b64(&fx->arena, sig, sn));
}

/* ---- fixture ----------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    struct fx *fx = gr_xcalloc(1, sizeof(*fx));
    const struct gr_jwt_key *keys[2];

    gr_log_setup("test_auth", GR_LOG_ERROR, true);
    gr_arena_init(&fx->arena);
    if (gr_jwt_key_generate("RS256", "rs1", &fx->rs) < 0 ||
        gr_jwt_key_generate("ES256", "es1", &fx->es) < 0 ||
        gr_jwt_key_generate("ES256", "es9", &fx->stray) < 0)
        return -1;
    keys[0] = fx->rs;
    keys[1] = fx->es;
    fx->jwks = jwks_of(keys, 2);
    if (gr_auth_new_jwks(fx->jwks, strlen(fx->jwks), "gravity", "gravity", &fx->au) < 0)
        return -1;
    *state = fx;
    return 0;
}

static int group_teardown(void **state)
{
    struct fx *fx = *state;

    gr_auth_free(fx->au);
    gr_free(fx->jwks);
    gr_jwt_key_free(fx->rs);
    gr_jwt_key_free(fx->es);
    gr_jwt_key_free(fx->stray);
    gr_arena_release(&fx->arena);
    gr_free(fx);
    gr_time_set_offset_ms(0);
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_b64url(void **state)
{
    struct gr_arena a = GR_ARENA_INIT;
    unsigned char out[16], bin[2] = { 0xfb, 0xff };
    size_t n = 0;

    (void)state;
    assert_string_equal(b64s(&a, ""), "");
    assert_string_equal(b64s(&a, "f"), "Zg");
    assert_string_equal(b64s(&a, "fo"), "Zm8");
    assert_string_equal(b64s(&a, "foo"), "Zm9v");
    assert_string_equal(b64(&a, bin, 2), "-_8");
    assert_int_equal(gr_b64url_decode("-_8", 3, out, &n), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(out, bin, 2);
    assert_int_equal(gr_b64url_decode("Zm9vYg", 6, out, &n), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "foob", 4);
    assert_int_equal(gr_b64url_decode("Zg==", 4, out, &n), GR_EINVAL);
    assert_int_equal(gr_b64url_decode("Zh", 2, out, &n), GR_EINVAL); /* stray bits */
    assert_int_equal(gr_b64url_decode("Zm9vY", 5, out, &n), GR_EINVAL);
    assert_int_equal(gr_b64url_decode("Zm+v", 4, out, &n), GR_EINVAL);
    assert_int_equal(gr_b64url_decode("Zm/v", 4, out, &n), GR_EINVAL);
    assert_int_equal(gr_b64url_decode("Zm v", 4, out, &n), GR_EINVAL);
    gr_arena_release(&a);
}

static void test_keys(void **state)
{
    struct fx *fx = *state;
    struct gr_jwt_key *k = NULL, *k2 = NULL;
    struct gr_buf pem = GR_BUF_INIT;
    json_t *jwk = NULL;

    assert_int_equal(gr_jwt_key_generate("HS256", "x", &k), GR_EINVAL);
    assert_null(k);
    assert_int_equal(gr_jwt_key_generate("ES256", "", &k), GR_EINVAL);
    assert_int_equal(gr_jwt_key_generate("none", "x", &k), GR_EINVAL);
    assert_string_equal(gr_jwt_key_alg(fx->rs), "RS256");
    assert_string_equal(gr_jwt_key_kid(fx->es), "es1");

    assert_int_equal(gr_jwt_key_jwk(fx->rs, &jwk), 0);
    assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "RSA");
    assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
    assert_string_equal(json_string_value(json_object_get(jwk, "e")), "AQAB");
    assert_int_equal(json_string_length(json_object_get(jwk, "n")), 342); /* 256 bytes */
    assert_null(json_object_get(jwk, "d"));
    json_decref(jwk);
    assert_int_equal(gr_jwt_key_jwk(fx->es, &jwk), 0);
    assert_string_equal(json_string_value(json_object_get(jwk, "crv")), "P-256");
    assert_string_equal(json_string_value(json_object_get(jwk, "alg")), "ES256");
    assert_int_equal(json_string_length(json_object_get(jwk, "x")), 43);
    assert_int_equal(json_string_length(json_object_get(jwk, "y")), 43);
    assert_null(json_object_get(jwk, "d"));
    json_decref(jwk);

    /* PEM round trip: the reloaded key signs tokens the original's JWKS accepts. */
    assert_int_equal(gr_jwt_key_pem(fx->es, &pem), 0);
    assert_non_null(strstr(gr_buf_cstr(&pem), "-----BEGIN PRIVATE KEY-----"));
    assert_int_equal(gr_jwt_key_load_pem(pem.ptr, pem.len, "RS256", "es1", &k), GR_EINVAL);
    assert_int_equal(gr_jwt_key_load_pem(pem.ptr, pem.len, NULL, "es1", &k), 0);
    assert_string_equal(gr_jwt_key_alg(k), "ES256");
    assert_int_equal(verify(fx->au, mint(fx, k, "at+jwt", std_claims())), 0);
    gr_buf_reset(&pem);
    assert_int_equal(gr_jwt_key_pem(fx->rs, &pem), 0);
    assert_int_equal(gr_jwt_key_load_pem(pem.ptr, pem.len, "RS256", "rs1", &k2), 0);
    assert_int_equal(verify(fx->au, mint(fx, k2, "at+jwt", std_claims())), 0);
    gr_jwt_key_free(k2);
    assert_int_equal(gr_jwt_key_load_pem("garbage", 7, NULL, "x", &k2), GR_EINVAL);
    assert_null(k2);
    gr_jwt_key_free(k);
    gr_buf_release(&pem);
}

static void test_good_tokens(void **state)
{
    struct fx *fx = *state;
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_principal p;
    const char *tok;
    json_t *c;
    long long now = (long long)gr_time_now_s();

    tok = mint(fx, fx->rs, "at+jwt", std_claims());
    assert_int_equal(gr_auth_verify(fx->au, &a, tok, strlen(tok), &p), 0);
    assert_string_equal(p.sub, "user-1");
    assert_string_equal(p.jti, "jti-1");
    assert_int_equal(p.nroles, 1);
    assert_string_equal(p.roles[0], "admin");
    assert_int_equal(p.nperms, 2);
    assert_string_equal(p.perms[0], "products:write");
    assert_string_equal(p.perms[1], "orders:*");
    assert_int_equal(p.exp, now + 3600);
    assert_true(gr_principal_can(&p, "products:write"));
    assert_true(gr_principal_has_role(&p, "admin"));

    tok = mint(fx, fx->es, "at+jwt", std_claims());
    assert_int_equal(gr_auth_verify(fx->au, &a, tok, strlen(tok), &p), 0);
    assert_string_equal(p.sub, "user-1");

    /* Not NUL-terminated: only @len bytes count. */
    tok = gr_arena_printf(&fx->arena, "%sXYZ", mint(fx, fx->es, "at+jwt", std_claims()));
    assert_int_equal(verify_n(fx->au, tok, strlen(tok) - 3, NULL), 0);

    /* Accepted variants. */
    assert_int_equal(verify(fx->au, mint(fx, fx->es, "AT+JWT", std_claims())), 0);
    assert_int_equal(verify(fx->au, mint(fx, fx->rs, "application/at+jwt", std_claims())), 0);
    c = std_claims();
    json_object_set_new(c, "aud", json_pack("[s,s]", "other", "gravity"));
    assert_int_equal(verify(fx->au, mint(fx, fx->es, "at+jwt", c)), 0);
    c = std_claims(); /* expired 10 s ago: inside the leeway */
    json_object_set_new(c, "exp", json_integer(now - 10));
    assert_int_equal(verify(fx->au, mint(fx, fx->es, "at+jwt", c)), 0);
    c = std_claims(); /* nbf 20 s ahead: inside the leeway */
    json_object_set_new(c, "nbf", json_integer(now + 20));
    assert_int_equal(verify(fx->au, mint(fx, fx->es, "at+jwt", c)), 0);
    c = std_claims(); /* no roles, permissions, jti, nbf, iat */
    json_object_del(c, "roles");
    json_object_del(c, "permissions");
    json_object_del(c, "jti");
    json_object_del(c, "nbf");
    json_object_del(c, "iat");
    tok = mint(fx, fx->rs, "at+jwt", c);
    assert_int_equal(gr_auth_verify(fx->au, &a, tok, strlen(tok), &p), 0);
    assert_int_equal(p.nroles, 0);
    assert_int_equal(p.nperms, 0);
    assert_null(p.jti);
    assert_false(gr_principal_can(&p, "products:read"));
    gr_arena_release(&a);
}

static void test_forged_tokens(void **state)
{
    struct fx *fx = *state;
    struct gr_arena *ar = &fx->arena;
    const char *good_rs = mint(fx, fx->rs, "at+jwt", std_claims());
    const char *good_es = mint(fx, fx->es, "at+jwt", std_claims());
    const char *pay = b64s(ar, std_payload(fx));
    const char *forged[160], *label[160];
    const char *t, *d1, *d2, *other;
    size_t n = 0, i, big = 100 * 1024;
    char *huge, *m;
    json_t *c;
    long long now = (long long)gr_time_now_s();
    int rc;

#define ADD(l, tok)                                                                                \
    do {                                                                                           \
        label[n] = (l);                                                                            \
        forged[n++] = (tok);                                                                       \
    } while (0)

    ADD("alg none", gr_arena_printf(ar, "%s.%s.", b64s(ar, hdr(fx, "none", "rs1", "at+jwt")), pay));
    ADD("alg None", gr_arena_printf(ar, "%s.%s.", b64s(ar, hdr(fx, "None", "rs1", "at+jwt")), pay));
    ADD("alg NONE", gr_arena_printf(ar, "%s.%s.", b64s(ar, hdr(fx, "NONE", "es1", "at+jwt")), pay));
    ADD("alg none with sig",
        gr_arena_printf(ar, "%s.%s.AAAA", b64s(ar, hdr(fx, "none", "rs1", "at+jwt")), pay));
    ADD("alg none signed", mint_raw(fx, fx->rs, hdr(fx, "none", "rs1", "at+jwt"), std_payload(fx)));
    ADD("HS256 with RSA public PEM", forge_hs256(fx, fx->rs, "rs1"));
    ADD("HS256 with EC public PEM", forge_hs256(fx, fx->es, "es1"));
    ADD("RS256 header, ES kid",
        mint_raw(fx, fx->rs, hdr(fx, "RS256", "es1", "at+jwt"), std_payload(fx)));
    ADD("ES256 header, RS kid",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "rs1", "at+jwt"), std_payload(fx)));
    ADD("ES256 header, RS kid, RS signature",
        mint_raw(fx, fx->rs, hdr(fx, "ES256", "rs1", "at+jwt"), std_payload(fx)));
    ADD("PS256", mint_raw(fx, fx->rs, hdr(fx, "PS256", "rs1", "at+jwt"), std_payload(fx)));
    ADD("rs256 lowercase",
        mint_raw(fx, fx->rs, hdr(fx, "rs256", "rs1", "at+jwt"), std_payload(fx)));
    ADD("unknown kid", mint(fx, fx->stray, "at+jwt", std_claims()));
    ADD("kid path",
        mint_raw(fx, fx->rs, hdr(fx, "RS256", "../../etc/passwd", "at+jwt"), std_payload(fx)));
    ADD("kid prefix", mint_raw(fx, fx->rs, hdr(fx, "RS256", "rs", "at+jwt"), std_payload(fx)));
    ADD("kid missing",
        mint_raw(fx, fx->rs, "{\"alg\":\"RS256\",\"typ\":\"at+jwt\"}", std_payload(fx)));
    ADD("kid number",
        mint_raw(fx, fx->rs, "{\"alg\":\"RS256\",\"kid\":1,\"typ\":\"at+jwt\"}", std_payload(fx)));
    ADD("jku",
        mint_raw(fx, fx->rs,
                 "{\"alg\":\"RS256\",\"kid\":\"rs1\",\"typ\":\"at+jwt\",\"jku\":\"http://e/\"}",
                 std_payload(fx)));
    ADD("x5u",
        mint_raw(fx, fx->rs,
                 "{\"alg\":\"RS256\",\"kid\":\"rs1\",\"typ\":\"at+jwt\",\"x5u\":\"http://e/\"}",
                 std_payload(fx)));
    ADD("x5c", mint_raw(fx, fx->rs,
                        "{\"alg\":\"RS256\",\"kid\":\"rs1\",\"typ\":\"at+jwt\",\"x5c\":[\"AA\"]}",
                        std_payload(fx)));
    ADD("jwk",
        mint_raw(fx, fx->es, "{\"alg\":\"ES256\",\"kid\":\"es1\",\"typ\":\"at+jwt\",\"jwk\":{}}",
                 std_payload(fx)));
    ADD("crit",
        mint_raw(fx, fx->es,
                 "{\"alg\":\"ES256\",\"kid\":\"es1\",\"typ\":\"at+jwt\",\"crit\":[\"exp\"]}",
                 std_payload(fx)));
    c = std_claims();
    json_object_set_new(c, "exp", json_integer(now - 31));
    ADD("expired", mint(fx, fx->es, "at+jwt", c));
    ADD("exp missing",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), claims_with(fx, "exp", NULL)));
    ADD("exp string", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "exp", json_string("9999999999"))));
    ADD("exp real", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                             claims_with(fx, "exp", json_real(9999999999.0))));
    ADD("nbf future", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "nbf", json_integer(now + 60))));
    ADD("nbf string", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "nbf", json_string("0"))));
    ADD("iat future", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "iat", json_integer(now + 86400))));
    ADD("wrong iss", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                              claims_with(fx, "iss", json_string("evil"))));
    ADD("iss missing",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), claims_with(fx, "iss", NULL)));
    ADD("wrong aud", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                              claims_with(fx, "aud", json_string("gravity2"))));
    ADD("aud array without ours", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                                           claims_with(fx, "aud", json_pack("[s,s]", "a", "b"))));
    ADD("aud array of non-strings",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                 claims_with(fx, "aud", json_pack("[i,s]", 1, "gravity"))));
    ADD("aud missing",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), claims_with(fx, "aud", NULL)));
    ADD("typ missing", mint(fx, fx->es, NULL, std_claims()));
    ADD("typ refresh+jwt", mint(fx, fx->es, "refresh+jwt", std_claims()));
    ADD("typ JWT", mint(fx, fx->es, "JWT", std_claims()));
    ADD("sub missing",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), claims_with(fx, "sub", NULL)));
    ADD("sub empty", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                              claims_with(fx, "sub", json_string(""))));
    ADD("sub number", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "sub", json_integer(7))));
    ADD("jti number", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                               claims_with(fx, "jti", json_integer(7))));
    ADD("roles string", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                                 claims_with(fx, "roles", json_string("admin"))));
    ADD("permissions with a number",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                 claims_with(fx, "permissions", json_pack("[s,i]", "*", 1))));
    ADD("permissions null", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                                     claims_with(fx, "permissions", json_null())));
    c = json_array();
    for (i = 0; i < GR_AUTH_LIST_MAX + 1; i++)
        json_array_append_new(c, json_string("a:read"));
    ADD("257 permissions",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), claims_with(fx, "permissions", c)));
    ADD("claims array", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), "[1,2]"));
    ADD("claims string", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), "\"x\""));
    ADD("claims not JSON", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), "{sub:1}"));
    ADD("claims duplicate sub",
        mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                 gr_arena_printf(ar, "{\"sub\":\"admin\",%s", std_payload(fx) + 1)));
    ADD("claims trailing bytes", mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"),
                                          gr_arena_printf(ar, "%s x", std_payload(fx))));
    ADD("header duplicate alg",
        mint_raw(fx, fx->rs,
                 "{\"alg\":\"RS256\",\"alg\":\"RS256\",\"kid\":\"rs1\",\"typ\":\"at+jwt\"}",
                 std_payload(fx)));
    ADD("header duplicate alg none",
        mint_raw(fx, fx->rs,
                 "{\"alg\":\"RS256\",\"kid\":\"rs1\",\"typ\":\"at+jwt\",\"alg\":\"none\"}",
                 std_payload(fx)));
    ADD("header array", mint_raw(fx, fx->rs, "[\"RS256\"]", std_payload(fx)));
    ADD("header not JSON", mint_raw(fx, fx->rs, "alg=RS256", std_payload(fx)));
    ADD("ES256 DER signature", forge_es_der(fx));
    for (i = 0; i < 8; i++) {
        ADD("RS256 flipped signature byte", flip_sig(fx, good_rs, i, 0x01));
        ADD("ES256 flipped signature byte", flip_sig(fx, good_es, i, 0x80));
    }
    ADD("ES256 flipped last byte", flip_sig(fx, good_es, 63, 0x01));
    ADD("ES256 s flipped", flip_sig(fx, good_es, 32, 0x01));
    ADD("RS256 signature truncated", gr_arena_strndup(ar, good_rs, strlen(good_rs) - 4));
    ADD("RS256 signature extended", gr_arena_printf(ar, "%sAAAA", good_rs));
    ADD("ES256 zero signature",
        gr_arena_printf(ar, "%.*s.%s", (int)(strrchr(good_es, '.') - good_es), good_es,
                        b64(ar, (const unsigned char[64]){ 0 }, 64)));

    /* Payload swapped in from another, differently signed token. */
    c = std_claims();
    json_object_set_new(c, "permissions", json_pack("[s]", "*"));
    other = mint(fx, fx->es, "at+jwt", c);
    d1 = strchr(other, '.');
    d2 = strchr(d1 + 1, '.');
    t = strchr(good_es, '.');
    ADD("payload swapped", gr_arena_printf(ar, "%.*s%.*s%s", (int)(t - good_es), good_es,
                                           (int)(d2 - d1), d1, strrchr(good_es, '.')));

    /* Syntax. */
    ADD("padding on signature", gr_arena_printf(ar, "%s==", good_rs));
    ADD("padding on signature 1", gr_arena_printf(ar, "%s=", good_es));
    d1 = strchr(good_es, '.');
    ADD("padding on header", gr_arena_printf(ar, "%.*s=%s", (int)(d1 - good_es), good_es, d1));
    m = gr_arena_strdup(ar, good_es);
    m[strlen(m) / 2] = '+';
    ADD("plus in token", m);
    m = gr_arena_strdup(ar, good_rs);
    m[5] = '/';
    ADD("slash in header", m);
    m = gr_arena_strdup(ar, good_rs);
    m[strlen(m) - 10] = ' ';
    ADD("space in signature", m);
    ADD("whitespace around", gr_arena_printf(ar, " %s\n", good_es));
    ADD("bearer prefix", gr_arena_printf(ar, "Bearer %s", good_es));
    ADD("4 parts", gr_arena_printf(ar, "%s.AAAA", good_es));
    ADD("4 parts empty", gr_arena_printf(ar, "%s.", good_es));
    ADD("2 parts", gr_arena_strndup(ar, good_es, (size_t)(strrchr(good_es, '.') - good_es)));
    ADD("empty header", gr_arena_printf(ar, "%s", strchr(good_es, '.')));
    t = strchr(good_es, '.');
    ADD("empty payload",
        gr_arena_printf(ar, "%.*s.%s", (int)(t - good_es), good_es, strrchr(good_es, '.')));
    ADD("empty signature",
        gr_arena_strndup(ar, good_es, (size_t)(strrchr(good_es, '.') - good_es) + 1));
    ADD("dots", "..");
    ADD("empty", "");
    ADD("one part", "eyJhbGciOiJSUzI1NiJ9");
    huge = gr_arena_alloc(ar, big + 1);
    memset(huge, 'A', big);
    huge[10] = '.';
    huge[big - 100] = '.';
    huge[big] = '\0';
    ADD("100 KB token", huge);
    huge = gr_arena_alloc(ar, GR_AUTH_TOKEN_MAX + 2);
    memset(huge, 'A', GR_AUTH_TOKEN_MAX + 1);
    memcpy(huge, good_es, strlen(good_es));
    huge[GR_AUTH_TOKEN_MAX + 1] = '\0';
    ADD("8 KiB + 1", huge);
#undef ADD

    assert_true(n >= 30);
    assert_true(n <= sizeof(forged) / sizeof(forged[0]));
    for (i = 0; i < n; i++) {
        rc = verify(fx->au, forged[i]);
        if (rc != GR_EUNAUTH)
            fail_msg("forged token '%s' (#%zu) gave %d, want GR_EUNAUTH", label[i], i, rc);
    }
    /* The untouched originals still pass, so the rejections above are about the changes. */
    assert_int_equal(verify(fx->au, good_rs), 0);
    assert_int_equal(verify(fx->au, good_es), 0);
    assert_int_equal(verify(fx->au, other), 0);
    /* A NUL inside the token, with the length covering it. */
    m = gr_arena_strdup(ar, good_es);
    m[20] = '\0';
    assert_int_equal(verify_n(fx->au, m, strlen(good_es), NULL), GR_EUNAUTH);
}

static void test_clock(void **state)
{
    struct fx *fx = *state;
    const char *tok = mint(fx, fx->es, "at+jwt", std_claims());

    gr_time_set_offset_ms((3600 + 29) * 1000LL);
    assert_int_equal(verify(fx->au, tok), 0);
    gr_time_set_offset_ms((3600 + 31) * 1000LL);
    assert_int_equal(verify(fx->au, tok), GR_EUNAUTH);
    gr_time_set_offset_ms(-60 * 1000LL); /* token issued "in the future" by 60 s */
    assert_int_equal(verify(fx->au, tok), GR_EUNAUTH);
    gr_time_set_offset_ms(0);
    assert_int_equal(verify(fx->au, tok), 0);
    /* Now the token is in the verification cache: the same rules must still hold. */
    gr_time_set_offset_ms(-60 * 1000LL);
    assert_int_equal(verify(fx->au, tok), GR_EUNAUTH);
    gr_time_set_offset_ms((3600 + 31) * 1000LL);
    assert_int_equal(verify(fx->au, tok), GR_EUNAUTH);
    gr_time_set_offset_ms(0);
}

/* A cached verification gives the same principal as the first one, and a token that differs
 * in one byte from a cached one is still checked in full. */
static void test_cache(void **state)
{
    struct fx *fx = *state;
    const char *tok = mint(fx, fx->es, "at+jwt", std_claims());
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_principal p1, p2;

    assert_int_equal(gr_auth_verify(fx->au, &a, tok, strlen(tok), &p1), 0);
    assert_int_equal(gr_auth_verify(fx->au, &a, tok, strlen(tok), &p2), 0);
    assert_string_equal(p1.sub, p2.sub);
    assert_string_equal(p2.jti, "jti-1");
    assert_int_equal(p2.nroles, 1);
    assert_string_equal(p2.roles[0], "admin");
    assert_int_equal(p2.nperms, 2);
    assert_string_equal(p2.perms[1], "orders:*");
    assert_int_equal(p1.exp, p2.exp);
    assert_ptr_not_equal(p1.sub, p2.sub);
    for (size_t i = 0; i < 64; i += 7)
        assert_int_equal(verify(fx->au, flip_sig(fx, tok, i, 0x01)), GR_EUNAUTH);
    assert_int_equal(verify(fx->au, tok), 0);
    gr_arena_release(&a);
}

static void test_jwks_parsing(void **state)
{
    struct fx *fx = *state;
    struct gr_auth *au = NULL;
    json_t *jwk, *keys = json_array(), *root;
    const char *doc;
    char y[64];

    /* use "enc": skipped. */
    assert_int_equal(gr_jwt_key_jwk(fx->rs, &jwk), 0);
    json_object_set_new(jwk, "use", json_string("enc"));
    json_array_append_new(keys, jwk);
    /* EC point off the curve: skipped. */
    assert_int_equal(gr_jwt_key_jwk(fx->es, &jwk), 0);
    snprintf(y, sizeof(y), "%s", json_string_value(json_object_get(jwk, "y")));
    y[0] = y[0] == 'A' ? 'B' : 'A';
    json_object_set_new(jwk, "y", json_string(y));
    json_array_append_new(keys, jwk);
    /* The ES key with kid rs2 and alg RS256: skipped. */
    assert_int_equal(gr_jwt_key_jwk(fx->es, &jwk), 0);
    json_object_set_new(jwk, "kid", json_string("rs2"));
    json_object_set_new(jwk, "alg", json_string("RS256"));
    json_array_append_new(keys, jwk);
    /* A 1024-bit modulus: skipped. */
    assert_int_equal(gr_jwt_key_jwk(fx->rs, &jwk), 0);
    json_object_set_new(jwk, "kid", json_string("short"));
    json_object_set_new(jwk, "n", json_stringn(json_string_value(json_object_get(jwk, "n")), 171));
    json_array_append_new(keys, jwk);
    /* An oct (HMAC) key: skipped. */
    json_array_append_new(keys,
                          json_pack("{s:s,s:s,s:s}", "kty", "oct", "kid", "hs", "k", "c2VjcmV0"));
    json_array_append_new(keys, json_string("not an object"));
    /* The usable ES key last. */
    assert_int_equal(gr_jwt_key_jwk(fx->es, &jwk), 0);
    json_object_set_new(jwk, "kid", json_string("es-good"));
    json_array_append_new(keys, jwk);
    root = json_pack("{s:o}", "keys", keys);
    doc = dump_arena(&fx->arena, root);
    json_decref(root);
    assert_int_equal(gr_auth_new_jwks(doc, strlen(doc), "gravity", "gravity", &au), 0);
    assert_true(gr_auth_ready(au));
    assert_int_equal(
        verify(au, mint_raw(fx, fx->rs, hdr(fx, "RS256", "rs1", "at+jwt"), std_payload(fx))),
        GR_EUNAUTH);
    assert_int_equal(
        verify(au, mint_raw(fx, fx->es, hdr(fx, "ES256", "es1", "at+jwt"), std_payload(fx))),
        GR_EUNAUTH);
    assert_int_equal(
        verify(au, mint_raw(fx, fx->es, hdr(fx, "RS256", "rs2", "at+jwt"), std_payload(fx))),
        GR_EUNAUTH);
    assert_int_equal(
        verify(au, mint_raw(fx, fx->es, hdr(fx, "ES256", "es-good", "at+jwt"), std_payload(fx))),
        0);
    gr_auth_free(au);

    assert_int_equal(gr_auth_new_jwks("{}", 2, "gravity", "gravity", &au), GR_EINVAL);
    assert_int_equal(gr_auth_new_jwks("[]", 2, "gravity", "gravity", &au), GR_EINVAL);
    doc = "{\"keys\":[],\"keys\":[]}";
    assert_int_equal(gr_auth_new_jwks(doc, strlen(doc), "gravity", "gravity", &au), GR_EINVAL);
    assert_int_equal(gr_auth_new_jwks(fx->jwks, strlen(fx->jwks), "", "gravity", &au), GR_EINVAL);
    assert_null(au);
    /* Other issuer and audience. */
    assert_int_equal(gr_auth_new_jwks(fx->jwks, strlen(fx->jwks), "gravity", "shop", &au), 0);
    assert_int_equal(verify(au, mint(fx, fx->es, "at+jwt", std_claims())), GR_EUNAUTH);
    gr_auth_free(au);
}

static void test_new_errors(void **state)
{
    static const char *const bad[] = {
        "",
        "ftp://auth/jwks",
        "auth:8001/jwks",
        "file://relative/x.json",
        "file:///",
        "file:///dir/",
        "http://",
        "https:///jwks",
        "http://a b/",
        "http://x/\n",
    };
    struct gr_auth *au = NULL;
    char err[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(gr_auth_new(bad[i], "gravity", "gravity", &au, err, sizeof(err)),
                         GR_ECONFIG);
        assert_null(au);
        if (!strstr(err, "JWKS_URL") || strchr(err, '\n'))
            fail_msg("url '%s' gave err '%s'", bad[i], err);
    }
    assert_int_equal(gr_auth_new(NULL, "gravity", "gravity", &au, err, sizeof(err)), GR_ECONFIG);
    assert_int_equal(gr_auth_new("file:///x.json", "", "gravity", &au, err, sizeof(err)),
                     GR_ECONFIG);
    assert_non_null(strstr(err, "JWT_ISSUER"));
    assert_int_equal(gr_auth_new("file:///x.json", "gravity", NULL, &au, err, sizeof(err)),
                     GR_ECONFIG);
    assert_non_null(strstr(err, "JWT_AUDIENCE"));
    assert_int_equal(gr_auth_new("ftp://x", "gravity", "gravity", &au, NULL, 0), GR_ECONFIG);
    assert_int_equal(gr_auth_new("HTTPS://auth:8001/api/v1/auth/jwks", "gravity", "gravity", &au,
                                 err, sizeof(err)),
                     0);
    assert_int_equal(gr_auth_fetch_count(au), 0); /* lazy */
    gr_auth_free(au);
}

static void write_file(const char *path, const char *text)
{
    char tmp[256];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static void test_file_jwks_refetch(void **state)
{
    struct fx *fx = *state;
    const struct gr_jwt_key *one[1] = { fx->rs }, *two[2] = { fx->rs, fx->stray };
    char dir[] = "/tmp/test_auth_XXXXXX", path[128], url[160], err[256];
    const char *tok_rs = mint(fx, fx->rs, "at+jwt", std_claims());
    const char *tok_new = mint(fx, fx->stray, "at+jwt", std_claims());
    struct gr_auth *au = NULL;
    char *doc;
    int i;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/jwks.json", dir);
    snprintf(url, sizeof(url), "file://%s", path);

    /* Missing file: never loadable → GR_EUNAVAIL, not GR_EUNAUTH. */
    assert_int_equal(gr_auth_new(url, "gravity", "gravity", &au, err, sizeof(err)), 0);
    assert_int_equal(verify(au, tok_rs), GR_EUNAVAIL);
    assert_int_equal(gr_auth_fetch_count(au), 1);
    assert_false(gr_auth_ready(au)); /* retried within GR_AUTH_RETRY_MS: no new fetch */
    assert_int_equal(gr_auth_fetch_count(au), 1);
    /* A malformed token is still just unauthorised. */
    assert_int_equal(verify(au, "a.b.c"), GR_EUNAUTH);

    doc = jwks_of(one, 1);
    write_file(path, doc);
    gr_free(doc);
    gr_time_set_offset_ms(GR_AUTH_RETRY_MS + 100);
    assert_true(gr_auth_ready(au));
    assert_int_equal(gr_auth_fetch_count(au), 2);
    assert_int_equal(verify(au, tok_rs), 0);
    assert_int_equal(gr_auth_fetch_count(au), 2); /* cached */

    /* A new key appears in the file; within 10 s an unknown kid does not refetch. */
    doc = jwks_of(two, 2);
    write_file(path, doc);
    gr_free(doc);
    for (i = 0; i < 5; i++)
        assert_int_equal(verify(au, tok_new), GR_EUNAUTH);
    assert_int_equal(gr_auth_fetch_count(au), 2);
    /* 11 s later the unknown kid triggers one refetch, which finds the key. */
    gr_time_set_offset_ms(GR_AUTH_RETRY_MS + 100 + 11000);
    assert_int_equal(verify(au, tok_new), 0);
    assert_int_equal(gr_auth_fetch_count(au), 3);
    assert_int_equal(verify(au, tok_rs), 0);
    assert_int_equal(verify(au, mint(fx, fx->es, "at+jwt", std_claims())), GR_EUNAUTH);
    assert_int_equal(gr_auth_fetch_count(au), 3);

    /* A broken file later keeps the old keys. */
    write_file(path, "{\"keys\":");
    gr_time_set_offset_ms(GR_AUTH_RETRY_MS + 100 + 22000);
    assert_int_equal(verify(au, mint(fx, fx->es, "at+jwt", std_claims())), GR_EUNAUTH);
    assert_int_equal(gr_auth_fetch_count(au), 4);
    assert_int_equal(verify(au, tok_new), 0);
    gr_time_set_offset_ms(0);

    gr_auth_free(au);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

struct worker {
    struct gr_auth *au;
    const char *good, *unknown;
    int ok, rejected;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_principal p;
    int i;

    for (i = 0; i < 100; i++) {
        if (gr_auth_verify(w->au, &a, w->good, strlen(w->good), &p) == 0 &&
            strcmp(p.sub, "user-1") == 0)
            w->ok++;
        if (gr_auth_verify(w->au, &a, w->unknown, strlen(w->unknown), &p) == GR_EUNAUTH)
            w->rejected++;
        gr_arena_release(&a);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct fx *fx = *state;
    const struct gr_jwt_key *one[1] = { fx->es };
    char dir[] = "/tmp/test_auth_XXXXXX", path[128], url[160], err[256];
    struct worker w[4];
    pthread_t th[4];
    struct gr_auth *au = NULL;
    char *doc;
    int i;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/jwks.json", dir);
    snprintf(url, sizeof(url), "file://%s", path);
    doc = jwks_of(one, 1);
    write_file(path, doc);
    gr_free(doc);
    assert_int_equal(gr_auth_new(url, "gravity", "gravity", &au, err, sizeof(err)), 0);
    /* Load first: threads arriving during the very first load get GR_EUNAVAIL by design. */
    assert_true(gr_auth_ready(au));
    for (i = 0; i < 4; i++) {
        w[i] = (struct worker){ au, mint(fx, fx->es, "at+jwt", std_claims()),
                                mint(fx, fx->stray, "at+jwt", std_claims()), 0, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].ok, 100);
        assert_int_equal(w[i].rejected, 100);
    }
    assert_int_equal(gr_auth_fetch_count(au), 1);
    gr_auth_free(au);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* A one-shot HTTP server on 127.0.0.1 answering @nreq requests with @status and @body. */
struct srv {
    int fd;
    int port;
    int status;
    const char *body;
    int nreq;
    int served;
    pthread_t th;
};

static void *srv_main(void *arg)
{
    struct srv *s = arg;
    char req[8192], head[256];
    size_t got;
    ssize_t n;
    int c, i, hn;

    for (i = 0; i < s->nreq; i++) {
        c = accept(s->fd, NULL, NULL);
        if (c < 0)
            break;
        got = 0;
        while (got < sizeof(req) - 1) {
            n = read(c, req + got, sizeof(req) - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\nConnection: close\r\n\r\n",
                      s->status, strlen(s->body));
        if (write(c, head, (size_t)hn) == hn && write(c, s->body, strlen(s->body)) >= 0)
            s->served++;
        close(c);
    }
    return NULL;
}

static void srv_start(struct srv *s, int status, const char *body, int nreq)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof(sa);
    struct timeval tv = { 5, 0 };

    s->status = status;
    s->body = body;
    s->nreq = nreq;
    s->served = 0;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &sl), 0);
    /* accept() gives up after 5 s, so a test that never connects cannot hang. */
    assert_int_equal(setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_stop(struct srv *s)
{
    assert_int_equal(pthread_join(s->th, NULL), 0);
    close(s->fd);
}

static void test_http_jwks(void **state)
{
    struct fx *fx = *state;
    struct gr_auth *au = NULL;
    char url[128], err[256];
    struct srv s;
    int64_t t0;

    /* Served JWKS. */
    srv_start(&s, 200, fx->jwks, 1);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/auth/jwks", s.port);
    assert_int_equal(gr_auth_new(url, "gravity", "gravity", &au, err, sizeof(err)), 0);
    assert_int_equal(verify(au, mint(fx, fx->rs, "at+jwt", std_claims())), 0);
    srv_stop(&s);
    assert_int_equal(s.served, 1);
    assert_int_equal(verify(au, mint(fx, fx->es, "at+jwt", std_claims())), 0);
    assert_int_equal(gr_auth_fetch_count(au), 1);
    gr_auth_free(au);

    /* A 404 is not a key set. */
    srv_start(&s, 404, fx->jwks, 1);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/jwks", s.port);
    assert_int_equal(gr_auth_new(url, "gravity", "gravity", &au, err, sizeof(err)), 0);
    assert_int_equal(verify(au, mint(fx, fx->rs, "at+jwt", std_claims())), GR_EUNAVAIL);
    srv_stop(&s);
    assert_false(gr_auth_ready(au));
    gr_auth_free(au);

    /* Nobody listening: fails fast with GR_EUNAVAIL (503), no hang. */
    t0 = gr_time_mono_ms();
    assert_int_equal(
        gr_auth_new("http://127.0.0.1:1/jwks", "gravity", "gravity", &au, err, sizeof(err)), 0);
    assert_int_equal(verify(au, mint(fx, fx->rs, "at+jwt", std_claims())), GR_EUNAVAIL);
    assert_false(gr_auth_ready(au));
    assert_true(gr_time_mono_ms() - t0 < GR_AUTH_FETCH_MS + 1000);
    gr_auth_free(au);
}

static void test_permissions(void **state)
{
    const char *perms[] = { "products:write", "orders:*", "reports:export" };
    const char *roles[] = { "manager", "customer" };
    const char *all[] = { "*" };
    struct gr_principal p = {
        .sub = "u", .perms = perms, .nperms = 3, .roles = roles, .nroles = 2
    };
    struct gr_principal su = { .sub = "root", .perms = all, .nperms = 1 };

    (void)state;
    assert_true(gr_principal_can(&p, "products:write"));
    assert_false(gr_principal_can(&p, "products:read"));
    assert_false(gr_principal_can(&p, "products:writer"));
    assert_false(gr_principal_can(&p, "products"));
    assert_true(gr_principal_can(&p, "orders:read"));
    assert_true(gr_principal_can(&p, "orders:delete"));
    assert_false(gr_principal_can(&p, "orders:"));
    assert_false(gr_principal_can(&p, "orders"));
    assert_false(gr_principal_can(&p, "ordersx:read"));
    assert_false(gr_principal_can(&p, "order:read"));
    assert_true(gr_principal_can(&p, "reports:export"));
    assert_false(gr_principal_can(&p, "*"));
    assert_false(gr_principal_can(&p, ""));
    assert_false(gr_principal_can(&p, NULL));
    assert_false(gr_principal_can(NULL, "products:write"));
    assert_true(gr_principal_can(&su, "anything:delete"));
    assert_true(gr_principal_can(&su, "auth:admin"));
    assert_true(gr_principal_has_role(&p, "manager"));
    assert_true(gr_principal_has_role(&p, "customer"));
    assert_false(gr_principal_has_role(&p, "admin"));
    assert_false(gr_principal_has_role(&p, "Manager"));
    assert_false(gr_principal_has_role(&su, "super_admin"));
    assert_false(gr_principal_has_role(NULL, "manager"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),      cmocka_unit_test(test_keys),
        cmocka_unit_test(test_good_tokens), cmocka_unit_test(test_forged_tokens),
        cmocka_unit_test(test_clock),       cmocka_unit_test(test_jwks_parsing),
        cmocka_unit_test(test_new_errors),  cmocka_unit_test(test_file_jwks_refetch),
        cmocka_unit_test(test_threads),     cmocka_unit_test(test_http_jwks),
        cmocka_unit_test(test_permissions), cmocka_unit_test(test_cache),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
