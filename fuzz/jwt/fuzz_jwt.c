/*
 * fuzz_jwt.c - libFuzzer harness for the access-token verifier and JWKS parser (gr/auth.h).
 *
 * A fixed JWKS (one P-256 and one RSA-2048 key, the P-256 private key embedded so runs are
 * reproducible) backs a static verifier. The first input byte picks what the rest is:
 *   0  a whole compact token;
 *   1  the claims JSON, signed with the embedded key under a valid header, so the claim
 *      checks run behind a good signature;
 *   2  "header\npayload", both signed with the embedded key (header parsing behind a good
 *      signature, claim parsing when the header passes);
 *   3  "header\npayload" joined to a fixed, valid signature of other content;
 *   4  a JWKS document for gr_auth_new_jwks, then a known-good token verified against it.
 * The harness checks invariants: only 0, GR_EUNAUTH (and GR_EINVAL for JWKS documents) come
 * back, and an accepted principal has a sub.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gr/auth.h"

static const char es_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                             "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkle3zS3ubYEy8TAL\n"
                             "+YljZt6beSehGcCm9H2iq/x8fqOhRANCAASkgtsqLARnLyQanvIaYUFjGW3prP1y\n"
                             "mUphpOcDnEmrx2lX3yigaFOcv8Ob8+P8qjkBTxhXGXj2QTVvMWuAOD57\n"
                             "-----END PRIVATE KEY-----\n";

static const char jwks[] =
    "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"fuzz-es\",\"alg\":\"ES256\",\"use\":\"sig\",\"crv\":"
    "\"P-256\",\"x\":\"pILbKiwEZy8kGp7yGmFBYxlt6az9cplKYaTnA5xJq8c\",\"y\":"
    "\"aVffKKBoU5y_w5vz4_yqOQFPGFcZePZBNW8xa4A4Pns\"},{\"kty\":\"RSA\",\"kid\":\"fuzz-rs\","
    "\"alg\":\"RS256\",\"use\":\"sig\",\"n\":\"s823S3hQ8KjyrVHG0TDIkD3aR-"
    "zgk9yDV--KxzuBQ0066iM9eZbZf74DUxOaaFq8tKTAE2uime72LrBeXIsoVBrfGBn4ENeR0_"
    "lbjcfgDnJEBqnX_OEWcGy8bovquPXerxhrUyWjzoQDdsfhqku0Qy_DGQlbf1glR9kmLMnaCfCCztTd2RhJNKj3RgpDl8Gd"
    "6iljA8qhEnie_Xr11HI_5aroRu73w3qsghLM2o1S5crfAM7OfShoB0LWb-90EKL78d-Td_Hj_"
    "yUHJvL7KUfJHCalbewNI_f7-phjv_O1asoqBwGSdHwXvVKb-X2y-ewLRqZGwVnBVh5L4U-KaMv-7Q\",\"e\":"
    "\"AQAB\"}]}";

static const char good_header[] = "{\"alg\":\"ES256\",\"kid\":\"fuzz-es\",\"typ\":\"at+jwt\"}";
static const char good_claims[] =
    "{\"iss\":\"gravity\",\"aud\":\"gravity\",\"sub\":\"u\",\"exp\":99999999999,"
    "\"permissions\":[\"products:*\"]}";

/* Harness state, set up once before the first input. */
static struct gr_auth *g_auth;
static struct gr_jwt_key *g_key;
static char *g_good;      /* a valid token, gr_free */
static const char *g_sig; /* its signature part, inside g_good */

static int check(struct gr_auth *au, const char *tok, size_t len)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_principal p;
    int rc = gr_auth_verify(au, &a, tok, len, &p);

    if (rc != 0 && rc != GR_EUNAUTH)
        abort();
    if (rc == 0) {
        if (!p.sub || !p.sub[0])
            abort();
        (void)gr_principal_can(&p, "products:write");
        (void)gr_principal_has_role(&p, "admin");
    } else if (p.sub || p.nperms || p.nroles) {
        abort();
    }
    gr_arena_release(&a);
    return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (gr_auth_new_jwks(jwks, strlen(jwks), "gravity", "gravity", &g_auth) < 0 ||
        gr_jwt_key_load_pem(es_pem, strlen(es_pem), "ES256", "fuzz-es", &g_key) < 0 ||
        gr_jwt_sign_raw(g_key, good_header, strlen(good_header), good_claims, strlen(good_claims),
                        &g_good) < 0)
        abort();
    g_sig = strrchr(g_good, '.');
    if (check(g_auth, g_good, strlen(g_good)) != 0)
        abort(); /* the fixed key set or the clock is broken */
    return 0;
}

/* Splits @p (@n bytes) at the first newline; without one the whole input is the header. */
static void split_nl(const char *p, size_t n, size_t *hlen, const char **pay, size_t *plen)
{
    const char *nl = memchr(p, '\n', n);

    *hlen = nl ? (size_t)(nl - p) : n;
    *pay = nl ? nl + 1 : p + n;
    *plen = n - (size_t)(*pay - p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data + 1, *pay;
    size_t n, hlen, plen;
    struct gr_auth *au = NULL;
    struct gr_buf b = GR_BUF_INIT;
    char *tok = NULL;
    int rc;

    if (size == 0)
        return 0;
    n = size - 1;
    switch (data[0] % 5) {
    case 0:
        (void)check(g_auth, p, n);
        break;
    case 1:
        if (gr_jwt_sign_raw(g_key, good_header, strlen(good_header), p, n, &tok) == 0)
            (void)check(g_auth, tok, strlen(tok));
        break;
    case 2:
        split_nl(p, n, &hlen, &pay, &plen);
        if (gr_jwt_sign_raw(g_key, p, hlen, pay, plen, &tok) == 0)
            (void)check(g_auth, tok, strlen(tok));
        break;
    case 3:
        split_nl(p, n, &hlen, &pay, &plen);
        if (gr_jwt_sign_raw(g_key, p, hlen, pay, plen, &tok) == 0) {
            /* Keep the header.payload part, put the unrelated valid signature after it. */
            if (gr_buf_append(&b, tok, (size_t)(strrchr(tok, '.') - tok)) == 0 &&
                gr_buf_puts(&b, g_sig) == 0)
                (void)check(g_auth, b.ptr, b.len);
        }
        break;
    default:
        rc = gr_auth_new_jwks(p, n, "gravity", "gravity", &au);
        if (rc != 0 && rc != GR_EINVAL)
            abort();
        if (rc == 0)
            (void)check(au, g_good, strlen(g_good));
        gr_auth_free(au);
        break;
    }
    gr_buf_release(&b);
    gr_free(tok);
    return 0;
}
