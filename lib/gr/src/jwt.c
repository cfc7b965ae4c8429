/*
 * jwt.c - the JWT primitives under gr/auth.h: signing keys (generate, PEM in and out, public
 * JWK), compact JWS signing with RS256 and ES256, the strict base64url codec and the signature
 * check that auth.c's verifier calls. Everything is OpenSSL 3 EVP; ES256 signatures travel as
 * the JOSE 64-byte r||s and are converted to and from DER here. Keys are immutable once made,
 * so one key can sign from many threads.
 */
#include <stdint.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth_int.h"
#include "gr/arena.h"
#include "gr/auth.h"

struct gr_jwt_key {
    EVP_PKEY *pkey;
    char *kid;
    int alg;
};

#define ES256_PART 32

int gr_auth__alg_parse(const char *s)
{
    if (s && strcmp(s, "RS256") == 0)
        return GR_AUTH__RS256;
    if (s && strcmp(s, "ES256") == 0)
        return GR_AUTH__ES256;
    return GR_EINVAL;
}

const char *gr_auth__alg_name(int alg)
{
    return alg == GR_AUTH__ES256 ? "ES256" : "RS256";
}

int gr_auth__pkey_alg(const EVP_PKEY *pk)
{
    char group[64];
    size_t glen = 0;
    int bits;

    if (EVP_PKEY_is_a(pk, "RSA")) {
        bits = EVP_PKEY_get_bits(pk);
        return bits >= 2048 && bits <= 8192 ? GR_AUTH__RS256 : GR_EINVAL;
    }
    if (EVP_PKEY_is_a(pk, "EC")) {
        if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            &glen)) {
            ERR_clear_error();
            return GR_EINVAL;
        }
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            return GR_AUTH__ES256;
    }
    return GR_EINVAL;
}

/* JOSE r||s (64 bytes) to a DER ECDSA-Sig-Value; *der is OPENSSL_free()d by the caller. */
static int es256_to_der(const unsigned char *sig, unsigned char **der, int *derlen)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, ES256_PART, NULL);
    BIGNUM *s = BN_bin2bn(sig + ES256_PART, ES256_PART, NULL);
    int rc = GR_EUNAUTH;

    *der = NULL;
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s))
        goto out;
    r = s = NULL; /* owned by es now */
    *derlen = i2d_ECDSA_SIG(es, der);
    if (*derlen <= 0)
        goto out;
    rc = 0;
out:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return rc;
}

/* DER ECDSA-Sig-Value to JOSE r||s in @out (64 bytes). */
static int der_to_es256(const unsigned char *der, size_t derlen, unsigned char *out)
{
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    const BIGNUM *r, *s;
    int rc = GR_EINTERNAL;

    if (!es)
        goto out;
    ECDSA_SIG_get0(es, &r, &s);
    if (BN_bn2binpad(r, out, ES256_PART) != ES256_PART ||
        BN_bn2binpad(s, out + ES256_PART, ES256_PART) != ES256_PART)
        goto out;
    rc = 0;
out:
    ECDSA_SIG_free(es);
    return rc;
}

int gr_auth__verify_sig(EVP_PKEY *pk, int alg, const unsigned char *msg, size_t n,
                        const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *md = NULL;
    unsigned char *der = NULL;
    const unsigned char *check = sig;
    size_t checklen = siglen;
    int derlen = 0, rc = GR_EUNAUTH;

    if (alg == GR_AUTH__ES256) {
        if (siglen != 2 * ES256_PART || es256_to_der(sig, &der, &derlen) < 0)
            goto out;
        check = der;
        checklen = (size_t)derlen;
    } else if (siglen != (size_t)EVP_PKEY_get_size(pk)) {
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) != 1)
        goto out;
    if (EVP_DigestVerify(md, check, checklen, msg, n) != 1)
        goto out;
    rc = 0;
out:
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return rc;
}

/* A kid is 1..GR_AUTH_STR_MAX-1 bytes of valid UTF-8 (so it can go into a JSON header). */
static bool kid_ok(const char *kid)
{
    json_t *t;
    bool ok;

    if (!kid || !kid[0] || strlen(kid) >= GR_AUTH_STR_MAX)
        return false;
    t = json_string(kid);
    ok = t != NULL;
    json_decref(t);
    return ok;
}

static struct gr_jwt_key *key_wrap(EVP_PKEY *pk, int alg, const char *kid)
{
    struct gr_jwt_key *k = gr_xcalloc(1, sizeof(*k));

    k->pkey = pk;
    k->alg = alg;
    k->kid = gr_xstrdup(kid);
    return k;
}

int gr_jwt_key_generate(const char *alg, const char *kid, struct gr_jwt_key **out)
{
    int a = gr_auth__alg_parse(alg);
    EVP_PKEY *pk = NULL;

    *out = NULL;
    if (a < 0 || !kid_ok(kid))
        return GR_EINVAL;
    if (a == GR_AUTH__RS256)
        pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    else
        pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!pk) {
        ERR_clear_error();
        return GR_EINTERNAL;
    }
    *out = key_wrap(pk, a, kid);
    return 0;
}

int gr_jwt_key_load_pem(const char *pem, size_t len, const char *alg, const char *kid,
                        struct gr_jwt_key **out)
{
    BIO *bio = NULL;
    EVP_PKEY *pk = NULL;
    int want = 0, have, rc = GR_EINVAL;

    *out = NULL;
    if (alg) {
        want = gr_auth__alg_parse(alg);
        if (want < 0)
            goto out;
    }
    if (!kid_ok(kid) || len > GR_AUTH_JWKS_MAX || len > (size_t)INT32_MAX)
        goto out;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        goto out;
    pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    if (!pk)
        goto out;
    have = gr_auth__pkey_alg(pk);
    if (have < 0 || (want && have != want))
        goto out;
    *out = key_wrap(pk, have, kid);
    pk = NULL;
    rc = 0;
out:
    ERR_clear_error();
    EVP_PKEY_free(pk);
    BIO_free(bio);
    return rc;
}

int gr_jwt_key_pem(const struct gr_jwt_key *k, struct gr_buf *out)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = GR_EINTERNAL;

    if (!bio || PEM_write_bio_PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    n = BIO_get_mem_data(bio, &data);
    if (n <= 0)
        goto out;
    rc = gr_buf_append(out, data, (size_t)n);
out:
    ERR_clear_error();
    BIO_free(bio);
    return rc;
}

/* Sets @obj[@name] to the base64url of @p (@n bytes). */
static int set_b64(json_t *obj, const char *name, const unsigned char *p, size_t n)
{
    struct gr_buf b = GR_BUF_INIT;
    int rc = gr_b64url_encode(&b, p, n);

    if (rc == 0)
        json_object_set_new(obj, name, json_stringn(gr_buf_cstr(&b), b.len));
    gr_buf_release(&b);
    return rc;
}

static int set_bn(json_t *obj, const char *name, const EVP_PKEY *pk, const char *param)
{
    BIGNUM *bn = NULL;
    unsigned char *bin = NULL;
    int n, rc = GR_EINTERNAL;

    if (!EVP_PKEY_get_bn_param(pk, param, &bn))
        goto out;
    n = BN_num_bytes(bn);
    bin = gr_xmalloc((size_t)n + 1);
    if (BN_bn2bin(bn, bin) != n)
        goto out;
    rc = set_b64(obj, name, bin, (size_t)n);
out:
    ERR_clear_error();
    gr_free(bin);
    BN_free(bn);
    return rc;
}

int gr_jwt_key_jwk(const struct gr_jwt_key *k, json_t **out)
{
    json_t *jwk = json_object();
    unsigned char pt[1 + 2 * ES256_PART];
    size_t ptlen = 0;
    int rc = GR_EINTERNAL;

    *out = NULL;
    json_object_set_new(jwk, "kty", json_string(k->alg == GR_AUTH__RS256 ? "RSA" : "EC"));
    json_object_set_new(jwk, "kid", json_string(k->kid));
    json_object_set_new(jwk, "alg", json_string(gr_auth__alg_name(k->alg)));
    json_object_set_new(jwk, "use", json_string("sig"));
    if (k->alg == GR_AUTH__RS256) {
        rc = set_bn(jwk, "n", k->pkey, OSSL_PKEY_PARAM_RSA_N);
        if (rc == 0)
            rc = set_bn(jwk, "e", k->pkey, OSSL_PKEY_PARAM_RSA_E);
        if (rc < 0)
            goto out;
    } else {
        /* The encoded public key of a P-256 key is the uncompressed point 04||x||y. */
        if (!EVP_PKEY_get_octet_string_param(k->pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
                                             sizeof(pt), &ptlen) ||
            ptlen != sizeof(pt) || pt[0] != 0x04) {
            rc = GR_EINTERNAL;
            goto out;
        }
        json_object_set_new(jwk, "crv", json_string("P-256"));
        rc = set_b64(jwk, "x", pt + 1, ES256_PART);
        if (rc == 0)
            rc = set_b64(jwk, "y", pt + 1 + ES256_PART, ES256_PART);
        if (rc < 0)
            goto out;
    }
    *out = jwk;
    jwk = NULL;
    rc = 0;
out:
    ERR_clear_error();
    json_decref(jwk);
    return rc;
}

const char *gr_jwt_key_kid(const struct gr_jwt_key *k)
{
    return k->kid;
}

const char *gr_jwt_key_alg(const struct gr_jwt_key *k)
{
    return gr_auth__alg_name(k->alg);
}

void gr_jwt_key_free(struct gr_jwt_key *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey);
    gr_free(k->kid);
    gr_free(k);
}

/* Signs @msg into @b as base64url; ES256 is converted from DER to r||s. */
static int sign_b64(const struct gr_jwt_key *k, const char *msg, size_t n, struct gr_buf *b)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *sig = NULL, rs[2 * ES256_PART];
    size_t siglen = 0;
    int rc = GR_EINTERNAL;

    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->pkey) != 1)
        goto out;
    if (EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)msg, n) != 1)
        goto out;
    sig = gr_xmalloc(siglen);
    if (EVP_DigestSign(md, sig, &siglen, (const unsigned char *)msg, n) != 1)
        goto out;
    if (k->alg == GR_AUTH__ES256) {
        if (der_to_es256(sig, siglen, rs) < 0)
            goto out;
        rc = gr_b64url_encode(b, rs, sizeof(rs));
    } else {
        rc = gr_b64url_encode(b, sig, siglen);
    }
out:
    ERR_clear_error();
    gr_free(sig);
    EVP_MD_CTX_free(md);
    return rc;
}

int gr_jwt_sign_raw(const struct gr_jwt_key *k, const char *header, size_t hlen,
                    const char *payload, size_t plen, char **out)
{
    struct gr_buf b = GR_BUF_INIT;
    size_t signed_len;
    int rc;

    *out = NULL;
    rc = gr_b64url_encode(&b, (const unsigned char *)header, hlen);
    if (rc == 0)
        rc = gr_buf_putc(&b, '.');
    if (rc == 0)
        rc = gr_b64url_encode(&b, (const unsigned char *)payload, plen);
    if (rc < 0)
        goto out;
    signed_len = b.len;
    rc = gr_buf_putc(&b, '.');
    if (rc == 0)
        rc = sign_b64(k, b.ptr, signed_len, &b);
    if (rc < 0)
        goto out;
    *out = gr_buf_detach(&b, NULL);
out:
    gr_buf_release(&b);
    return rc;
}

/* Compact JSON of @j into caller-freed (gr_free) memory, without jansson's allocator. */
static char *dump(const json_t *j, size_t *len)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    char *s;

    if (n == 0)
        return NULL;
    s = gr_xmalloc(n + 1);
    *len = json_dumpb(j, s, n, JSON_COMPACT);
    s[*len] = '\0';
    return s;
}

int gr_jwt_sign(const struct gr_jwt_key *k, const char *typ, json_t *claims, char **out)
{
    json_t *hdr = json_object();
    char *h = NULL, *p = NULL;
    size_t hlen = 0, plen = 0;
    int rc = GR_EINVAL;

    *out = NULL;
    if (!json_is_object(claims))
        goto out;
    json_object_set_new(hdr, "alg", json_string(gr_auth__alg_name(k->alg)));
    json_object_set_new(hdr, "kid", json_string(k->kid));
    if (typ)
        json_object_set_new(hdr, "typ", json_string(typ));
    h = dump(hdr, &hlen);
    p = dump(claims, &plen);
    rc = GR_EINTERNAL;
    if (!h || !p)
        goto out;
    rc = gr_jwt_sign_raw(k, h, hlen, p, plen, out);
out:
    gr_free(h);
    gr_free(p);
    json_decref(hdr);
    return rc;
}
