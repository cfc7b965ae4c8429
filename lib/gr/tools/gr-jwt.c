/*
 * gr-jwt - makes signing keys and access tokens for tests and local runs (SERVICES decision 12).
 *
 *   gr-jwt keygen --alg ES256|RS256 --kid KID --key KEY.pem [--jwks JWKS.json]
 *       writes a new private key (PKCS#8 PEM, mode 0600) and adds its public JWK to JWKS.json
 *       (created as {"keys":[...]} when missing; a key with the same kid is replaced).
 *   gr-jwt sign --key KEY.pem --kid KID [--alg A] [--sub S] [--roles a,b] [--perms x:read,y:write]
 *       [--ttl 3600] [--iss gravity] [--aud gravity] [--typ at+jwt] [--nbf-offset N]
 *       [--claims '{"extra":1}'] prints an access token. Defaults: random uuid-like sub and jti,
 *       iat = nbf = now, exp = now + ttl; --claims is merged last; --typ '' leaves typ out.
 *   gr-jwt verify --jwks JWKS.json [--iss gravity] [--aud gravity] TOKEN
 *       verifies TOKEN with the library verifier and prints its principal as JSON.
 * It is a thin command line over gr/auth.h, so tokens it makes are exactly what the library
 * signs; the black-box tests use it to mint tokens for services running with file:// JWKS.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "gr/auth.h"
#include "gr/time.h"

#define FILE_MAX  (256 * 1024)
#define VALUE_MAX (100LL * 366 * 86400) /* 100 years of seconds */

struct opts {
    const char *alg, *kid, *key, *jwks, *sub, *roles, *perms, *iss, *aud, *typ, *claims;
    long long ttl, nbf_offset;
};

static void usage(void)
{
    fputs("usage: gr-jwt keygen --alg ES256|RS256 --kid KID --key KEY.pem [--jwks JWKS.json]\n"
          "       gr-jwt sign --key KEY.pem --kid KID [--alg A] [--sub S] [--roles a,b]\n"
          "              [--perms x:read,y:write] [--ttl 3600] [--iss gravity] [--aud gravity]\n"
          "              [--typ at+jwt] [--nbf-offset N] [--claims JSON]\n"
          "       gr-jwt verify --jwks JWKS.json [--iss gravity] [--aud gravity] TOKEN\n",
          stderr);
}

static int read_all(const char *path, struct gr_buf *out)
{
    gr_buf_init(out, FILE_MAX);
    return gr_buf_read_file(out, path);
}

/* Writes @p atomically (temporary file and rename) with file mode @mode. */
static int write_all(const char *path, const char *p, size_t n, mode_t mode)
{
    char tmp[4096];
    ssize_t w;
    size_t off = 0;
    int fd, rc = GR_EIO;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return GR_EINVAL;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return GR_EIO;
    while (off < n) {
        w = write(fd, p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto out;
        off += (size_t)w;
    }
    if (fsync(fd) < 0)
        goto out;
    rc = 0;
out:
    if (close(fd) < 0)
        rc = GR_EIO;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = GR_EIO;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static int parse_ll(const char *s, long long *v)
{
    char *end;

    errno = 0;
    *v = strtoll(s, &end, 10);
    /* Bounded so that now + v cannot overflow. */
    if (errno || end == s || *end || *v > VALUE_MAX || *v < -VALUE_MAX)
        return GR_EINVAL;
    return 0;
}

/* A random version-4 UUID string, for default sub and jti. */
static json_t *random_uuid(void)
{
    unsigned char b[16];
    char s[37];
    size_t i, o = 0;

    if (RAND_bytes(b, sizeof(b)) != 1)
        return NULL;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    for (i = 0; i < sizeof(b); i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s[o++] = '-';
        snprintf(s + o, sizeof(s) - o, "%02x", b[i]);
        o += 2;
    }
    return json_string(s);
}

/* "a,b,,c" to ["a","b","c"]; NULL gives []. */
static json_t *split_list(const char *s)
{
    json_t *arr = json_array();
    const char *end;
    size_t n;

    while (s && *s) {
        end = strchr(s, ',');
        n = end ? (size_t)(end - s) : strlen(s);
        if (n)
            json_array_append_new(arr, json_stringn(s, n));
        s = end ? end + 1 : s + n;
    }
    return arr;
}

static int cmd_keygen(const struct opts *o)
{
    struct gr_jwt_key *k = NULL;
    struct gr_buf pem = GR_BUF_INIT, old = GR_BUF_INIT;
    json_t *jwk = NULL, *root = NULL, *keys, *v;
    json_error_t jerr;
    size_t i, n;
    char *text = NULL;
    int rc;

    if (!o->alg || !o->kid || !o->key) {
        usage();
        return 2;
    }
    rc = gr_jwt_key_generate(o->alg, o->kid, &k);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: cannot generate key: %s\n", gr_strerror(rc));
        goto out;
    }
    rc = gr_jwt_key_pem(k, &pem);
    if (rc == 0)
        rc = write_all(o->key, pem.ptr, pem.len, 0600);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: cannot write key '%s'\n", o->key);
        goto out;
    }
    if (!o->jwks)
        goto out;
    if (access(o->jwks, F_OK) == 0) {
        rc = read_all(o->jwks, &old);
        root =
            rc == 0 ? json_loadb(gr_buf_cstr(&old), old.len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
        keys = json_object_get(root, "keys");
        if (!json_is_array(keys)) {
            fprintf(stderr, "gr-jwt: '%s' is not a JWKS\n", o->jwks);
            rc = GR_EINVAL;
            goto out;
        }
    } else {
        root = json_pack("{s:[]}", "keys");
        keys = json_object_get(root, "keys");
    }
    for (i = json_array_size(keys); i-- > 0;) {
        v = json_object_get(json_array_get(keys, i), "kid");
        if (json_is_string(v) && strcmp(json_string_value(v), o->kid) == 0)
            json_array_remove(keys, i);
    }
    rc = gr_jwt_key_jwk(k, &jwk);
    if (rc < 0)
        goto out;
    json_array_append(keys, jwk);
    n = json_dumpb(root, NULL, 0, JSON_INDENT(2));
    text = gr_xmalloc(n + 1);
    n = json_dumpb(root, text, n, JSON_INDENT(2));
    text[n++] = '\n';
    rc = write_all(o->jwks, text, n, 0644);
    if (rc < 0)
        fprintf(stderr, "gr-jwt: cannot write '%s'\n", o->jwks);
out:
    gr_free(text);
    json_decref(jwk);
    json_decref(root);
    gr_buf_release(&pem);
    gr_buf_release(&old);
    gr_jwt_key_free(k);
    return rc < 0 ? 1 : 0;
}

static int cmd_sign(const struct opts *o)
{
    struct gr_jwt_key *k = NULL;
    struct gr_buf pem = GR_BUF_INIT;
    json_t *claims = NULL, *extra = NULL, *sub;
    json_error_t jerr;
    long long now = (long long)gr_time_now_s();
    char *tok = NULL;
    int rc;

    if (!o->key || !o->kid) {
        usage();
        return 2;
    }
    rc = read_all(o->key, &pem);
    if (rc == 0)
        rc = gr_jwt_key_load_pem(pem.ptr, pem.len, o->alg, o->kid, &k);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: cannot load key '%s' as %s: %s\n", o->key,
                o->alg ? o->alg : "RS256/ES256", gr_strerror(rc));
        goto out;
    }
    sub = o->sub ? json_string(o->sub) : random_uuid();
    claims = json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:o, s:o, s:o}", "iss", o->iss, "aud",
                       o->aud, "sub", sub, "iat", now, "nbf", now + o->nbf_offset, "exp",
                       now + o->ttl, "jti", random_uuid(), "roles", split_list(o->roles),
                       "permissions", split_list(o->perms));
    rc = GR_EINVAL;
    if (!claims) {
        fprintf(stderr, "gr-jwt: bad claim values\n");
        goto out;
    }
    if (o->claims) {
        extra = json_loads(o->claims, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(extra)) {
            fprintf(stderr, "gr-jwt: --claims is not a JSON object: %s\n", jerr.text);
            goto out;
        }
        json_object_update(claims, extra);
    }
    rc = gr_jwt_sign(k, o->typ && o->typ[0] ? o->typ : NULL, claims, &tok);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: cannot sign: %s\n", gr_strerror(rc));
        goto out;
    }
    printf("%s\n", tok);
out:
    gr_free(tok);
    json_decref(claims);
    json_decref(extra);
    gr_buf_release(&pem);
    gr_jwt_key_free(k);
    return rc < 0 ? 1 : 0;
}

static json_t *str_array(const char **v, size_t n)
{
    json_t *arr = json_array();
    size_t i;

    for (i = 0; i < n; i++)
        json_array_append_new(arr, json_string(v[i]));
    return arr;
}

static int cmd_verify(const struct opts *o, const char *token)
{
    struct gr_buf doc = GR_BUF_INIT;
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_auth *au = NULL;
    struct gr_principal p;
    json_t *out = NULL;
    int rc;

    if (!o->jwks || !token) {
        usage();
        return 2;
    }
    rc = read_all(o->jwks, &doc);
    if (rc == 0)
        rc = gr_auth_new_jwks(gr_buf_cstr(&doc), doc.len, o->iss, o->aud, &au);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: cannot load JWKS '%s'\n", o->jwks);
        goto out;
    }
    rc = gr_auth_verify(au, &a, token, strlen(token), &p);
    if (rc < 0) {
        fprintf(stderr, "gr-jwt: token rejected: %s\n", gr_strerror(rc));
        goto out;
    }
    out = json_pack("{s:s, s:s?, s:o, s:o, s:I}", "sub", p.sub, "jti", p.jti, "roles",
                    str_array(p.roles, p.nroles), "permissions", str_array(p.perms, p.nperms),
                    "exp", p.exp);
    json_dumpf(out, stdout, JSON_COMPACT);
    putchar('\n');
out:
    json_decref(out);
    gr_auth_free(au);
    gr_arena_release(&a);
    gr_buf_release(&doc);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "alg", required_argument, NULL, 'a' },
        { "kid", required_argument, NULL, 'k' },
        { "key", required_argument, NULL, 'K' },
        { "jwks", required_argument, NULL, 'j' },
        { "sub", required_argument, NULL, 's' },
        { "roles", required_argument, NULL, 'r' },
        { "perms", required_argument, NULL, 'p' },
        { "ttl", required_argument, NULL, 't' },
        { "iss", required_argument, NULL, 'i' },
        { "aud", required_argument, NULL, 'u' },
        { "typ", required_argument, NULL, 'y' },
        { "nbf-offset", required_argument, NULL, 'n' },
        { "claims", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct opts o = { .iss = "gravity", .aud = "gravity", .typ = "at+jwt", .ttl = 3600 };
    const char *cmd;
    int c;

    if (argc < 2) {
        usage();
        return 2;
    }
    cmd = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            o.alg = optarg;
            break;
        case 'k':
            o.kid = optarg;
            break;
        case 'K':
            o.key = optarg;
            break;
        case 'j':
            o.jwks = optarg;
            break;
        case 's':
            o.sub = optarg;
            break;
        case 'r':
            o.roles = optarg;
            break;
        case 'p':
            o.perms = optarg;
            break;
        case 'i':
            o.iss = optarg;
            break;
        case 'u':
            o.aud = optarg;
            break;
        case 'y':
            o.typ = optarg;
            break;
        case 'c':
            o.claims = optarg;
            break;
        case 't':
            if (parse_ll(optarg, &o.ttl) < 0) {
                fprintf(stderr, "gr-jwt: --ttl '%s' is not an integer\n", optarg);
                return 2;
            }
            break;
        case 'n':
            if (parse_ll(optarg, &o.nbf_offset) < 0) {
                fprintf(stderr, "gr-jwt: --nbf-offset '%s' is not an integer\n", optarg);
                return 2;
            }
            break;
        default:
            usage();
            return 2;
        }
    }
    if (strcmp(cmd, "keygen") == 0 && optind == argc)
        return cmd_keygen(&o);
    if (strcmp(cmd, "sign") == 0 && optind == argc)
        return cmd_sign(&o);
    if (strcmp(cmd, "verify") == 0 && optind == argc - 1)
        return cmd_verify(&o, argv[optind]);
    usage();
    return 2;
}
