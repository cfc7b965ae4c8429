/*
 * test_h1.c - h1.c: request heads (valid forms, every smuggling defence, limits), the path
 * check (traversal and encodings), the chunked decoder (edge cases, limits, byte-at-a-time
 * feeding, in place), upstream response heads (framing, 1xx, HEAD/204/304) and the body framer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../h1.h"

#define MAXH 16

static struct h1_header hdrs[MAXH];

static int req(const char *s, struct h1_request *r)
{
    memset(r, 0, sizeof(*r));
    r->headers = hdrs;
    r->max_headers = MAXH;
    return h1_parse_request(s, strlen(s), 16384, r);
}

static int req_rc(const char *s)
{
    struct h1_request r;
    return req(s, &r);
}

static bool span_is(const char *p, size_t n, const char *want)
{
    return p && n == strlen(want) && memcmp(p, want, n) == 0;
}

static void test_req_basic(void **state)
{
    struct h1_request r;
    const char *s = "GET /api/v1/products?limit=5&q=a HTTP/1.1\r\nHost: gw\r\n"
                    "X-A:  spaced value \t\r\nAccept: */*\r\n\r\nBODY";
    (void)state;
    assert_int_equal(req(s, &r), H1_OK);
    assert_int_equal(r.head_len, strlen(s) - 4);
    assert_true(span_is(r.method, r.method_len, "GET"));
    assert_true(span_is(r.path, r.path_len, "/api/v1/products"));
    assert_true(span_is(r.query, r.query_len, "limit=5&q=a"));
    assert_true(span_is(r.target, r.target_len, "/api/v1/products?limit=5&q=a"));
    assert_int_equal(r.minor, 1);
    assert_int_equal(r.content_length, -1);
    assert_false(r.chunked);
    assert_true(r.keep_alive);
    assert_int_equal(r.nheaders, 3);
    assert_true(span_is(r.headers[1].name, r.headers[1].name_len, "X-A"));
    assert_true(span_is(r.headers[1].value, r.headers[1].value_len, "spaced value"));
    assert_true(span_is(r.host, r.host_len, "gw"));
}

static void test_req_forms(void **state)
{
    struct h1_request r;
    (void)state;
    assert_int_equal(req("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n", &r), H1_OK);
    assert_int_equal(r.content_length, 42);
    assert_int_equal(req("POST /x HTTP/1.1\r\nHost: a\r\ntransfer-encoding: ChUnKeD\r\n\r\n", &r),
                     H1_OK);
    assert_true(r.chunked);
    assert_int_equal(r.content_length, -1);
    /* keep-alive decisions */
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &r), H1_OK);
    assert_false(r.keep_alive);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", &r), H1_OK);
    assert_false(r.keep_alive);
    assert_int_equal(req("GET / HTTP/1.0\r\n\r\n", &r), H1_OK);
    assert_int_equal(r.minor, 0);
    assert_false(r.keep_alive);
    assert_null(r.host);
    assert_int_equal(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r), H1_OK);
    assert_true(r.keep_alive);
    /* no query, empty query, '?' kept in the target only once */
    assert_int_equal(req("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n", &r), H1_OK);
    assert_true(span_is(r.path, r.path_len, "/a"));
    assert_non_null(r.query);
    assert_int_equal(r.query_len, 0);
    assert_int_equal(req("GET /a HTTP/1.1\r\nHost: a\r\n\r\n", &r), H1_OK);
    assert_null(r.query);
    /* empty header value and obs-text are fine */
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nX-E:\r\nX-U: caf\xc3\xa9\r\n\r\n", &r),
                     H1_OK);
    assert_int_equal(r.headers[1].value_len, 0);
    assert_int_equal(req("OPTIONS / HTTP/1.1\r\nHost:\r\n\r\n", &r), H1_OK);
}

static void test_req_incremental(void **state)
{
    const char *s = "PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    size_t head = strlen(s) - 3;
    struct h1_request r;
    (void)state;
    for (size_t n = 0; n < head; n++) {
        memset(&r, 0, sizeof(r));
        r.headers = hdrs;
        r.max_headers = MAXH;
        assert_int_equal(h1_parse_request(s, n, 16384, &r), H1_NEED_MORE);
    }
    memset(&r, 0, sizeof(r));
    r.headers = hdrs;
    r.max_headers = MAXH;
    assert_int_equal(h1_parse_request(s, head, 16384, &r), H1_OK);
    assert_int_equal(r.head_len, head);
    assert_int_equal(r.content_length, 3);
}

static void test_req_smuggling(void **state)
{
    (void)state;
    /* bare LF anywhere: request line, header line, final empty line */
    assert_int_equal(req_rc("GET / HTTP/1.1\nHost: a\r\n\r\n"), H1_E_BARE_LF);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\n\r\n"), H1_E_BARE_LF);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\n\n"), H1_E_BARE_LF);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n"), H1_E_BARE_LF);
    /* bare LF is caught before the head is complete (no waiting for a CRLFCRLF) */
    assert_int_equal(req_rc("GET / HTTP/1.1\n"), H1_E_BARE_LF);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), H1_E_BARE_CR);
    /* obs-fold */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), H1_E_OBS_FOLD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"), H1_E_OBS_FOLD);
    /* whitespace before the colon */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), H1_E_WS_BEFORE_COLON);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n"),
                     H1_E_WS_BEFORE_COLON);
    /* invalid token characters in names, empty name, no colon */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n"), H1_E_HDR_NAME);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX\"y: 1\r\n\r\n"), H1_E_HDR_NAME);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n"), H1_E_HDR_NAME);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"), H1_E_HDR_NAME);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: 1\r\n\r\n"), H1_E_HDR_NAME);
    /* control characters in values */
    {
        static const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
        struct h1_request r = { .headers = hdrs, .max_headers = MAXH };
        assert_int_equal(h1_parse_request(nul, sizeof(nul) - 1, 16384, &r), H1_E_HDR_VALUE);
    }
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01"
                            "b\r\n\r\n"),
                     H1_E_HDR_VALUE);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n"), H1_E_HDR_VALUE);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n"), H1_E_HDR_VALUE);
    /* CL + TE, in either order */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_E_CL_TE);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                            "content-length: 5\r\n\r\n"),
                     H1_E_CL_TE);
    /* more than one Content-Length, even equal; a list in one field */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                            "Content-Length: 5\r\n\r\n"),
                     H1_E_DUP_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
                     H1_E_BAD_CL);
    /* Content-Length not pure digits, or overflowing */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
                     H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
                     H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n"),
                     H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n"),
                     H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"), H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                            "9223372036854775808\r\n\r\n"),
                     H1_E_BAD_CL);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                            "99999999999999999999999\r\n\r\n"),
                     H1_E_BAD_CL);
    {
        struct h1_request r;
        assert_int_equal(req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                             "9223372036854775807\r\n\r\n",
                             &r),
                         H1_OK);
        assert_int_equal(r.content_length, INT64_MAX);
    }
    /* Transfer-Encoding other than exactly chunked */
    assert_int_equal(
        req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        H1_E_BAD_TE);
    assert_int_equal(
        req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        H1_E_BAD_TE);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
                     H1_E_BAD_TE);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
                     H1_E_BAD_TE);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_E_BAD_TE);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
                     H1_E_BAD_TE);
    assert_int_equal(req_rc("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), H1_E_BAD_TE);
    /* Host */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\n\r\n"), H1_E_NO_HOST);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), H1_E_DUP_HOST);
    /* every smuggling code maps to 400 */
    assert_int_equal(h1_err_status(H1_E_CL_TE), 400);
    assert_int_equal(h1_err_status(H1_E_BARE_LF), 400);
}

static void test_req_line(void **state)
{
    (void)state;
    assert_int_equal(req_rc("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_METHOD);
    assert_int_equal(req_rc(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET /\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_TARGET);
    assert_int_equal(req_rc("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_TARGET);
    assert_int_equal(req_rc("GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_TARGET);
    assert_int_equal(req_rc("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_TARGET);
    assert_int_equal(req_rc("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), H1_E_TARGET);
    assert_int_equal(req_rc("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), H1_E_VERSION);
    assert_int_equal(req_rc("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), H1_E_VERSION);
    assert_int_equal(h1_err_status(H1_E_VERSION), 505);
    assert_int_equal(req_rc("GET / HTTP/1.x\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
    assert_int_equal(req_rc("GET / http/1.1\r\nHost: a\r\n\r\n"), H1_E_REQLINE);
}

static void test_req_limits(void **state)
{
    char buf[4096];
    struct h1_request r;
    struct h1_header few[2];
    size_t n;
    (void)state;
    /* header count over the caller's array */
    memset(&r, 0, sizeof(r));
    r.headers = few;
    r.max_headers = 2;
    n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n");
    assert_int_equal(h1_parse_request(buf, n, 16384, &r), H1_E_TOO_MANY_HEADERS);
    assert_int_equal(h1_err_status(H1_E_TOO_MANY_HEADERS), 431);
    r.max_headers = 3;
    r.headers = hdrs;
    assert_int_equal(h1_parse_request(buf, n, 16384, &r), H1_OK);
    /* head size: complete within the limit is fine, one byte less is 431 */
    memset(&r, 0, sizeof(r));
    r.headers = hdrs;
    r.max_headers = MAXH;
    assert_int_equal(h1_parse_request(buf, n, n, &r), H1_OK);
    assert_int_equal(h1_parse_request(buf, n, n - 1, &r), H1_E_HEAD_TOO_LARGE);
    /* an endless header line */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET / HTTP/1.1\r\nX: ", 19);
    assert_int_equal(h1_parse_request(buf, sizeof(buf), 1024, &r), H1_E_HEAD_TOO_LARGE);
    assert_int_equal(h1_parse_request(buf, 1000, 1024, &r), H1_NEED_MORE);
}

static void test_path(void **state)
{
#define SAFE(s)   assert_true(h1_path_safe(s, strlen(s)))
#define UNSAFE(s) assert_false(h1_path_safe(s, strlen(s)))
    (void)state;
    SAFE("/");
    SAFE("/api/v1/orders/123");
    SAFE("/api/v1/files/a%20b");
    SAFE("/api/v1/x/..a/.b/a..");
    SAFE("/api/v1/x/%41%7e");
    SAFE("/a//b");
    UNSAFE("/api/v1/orders/..%2f..%2fgateway/routes");
    UNSAFE("/api/v1/orders/%2F");
    UNSAFE("/api/v1/orders/%5c");
    UNSAFE("/api/v1/orders/%5C..");
    UNSAFE("/api/v1/orders/%2e%2e/x");
    UNSAFE("/api/v1/orders/%2E");
    UNSAFE("/api/v1/orders/%2ex");
    UNSAFE("/api/v1/../gateway");
    UNSAFE("/api/v1/..");
    UNSAFE("/api/v1/./x");
    UNSAFE("/.");
    UNSAFE("/..");
    UNSAFE("/api\\v1");
    UNSAFE("/api/%00");
    UNSAFE("/api/%0a");
    UNSAFE("/api/%7F");
    UNSAFE("/api/%");
    UNSAFE("/api/%4");
    UNSAFE("/api/%zz");
    UNSAFE("/api/%g1");
    UNSAFE("/a b");
    UNSAFE("/a\tb");
    UNSAFE("/a\x7f");
    UNSAFE("/caf\xc3\xa9");
    UNSAFE("api/v1");
    UNSAFE("");
    UNSAFE("/a?b");
    assert_false(h1_path_safe("/a\0b", 4));
    assert_int_equal(h1_path_check("/..", 3), H1_E_PATH);
#undef SAFE
#undef UNSAFE
}

/* Decodes @in whole; returns the rc and the output. */
static int dechunk(const char *in, size_t len, uint64_t max, char *out, size_t cap, size_t *olen,
                   size_t *used)
{
    struct h1_chunked c;
    h1_chunked_init(&c, max);
    *olen = 0;
    return h1_chunked_feed(&c, in, len, used, out, cap, olen);
}

static void test_chunked_basic(void **state)
{
    const char *s = "5\r\nhello\r\n1;name=val;x\r\n \r\nA\r\n0123456789\r\n0\r\n\r\nNEXT";
    char out[64];
    size_t olen, used;
    (void)state;
    assert_int_equal(dechunk(s, strlen(s), 1000, out, sizeof(out), &olen, &used), H1_OK);
    assert_int_equal(used, strlen(s) - 4);
    assert_int_equal(olen, 16);
    assert_memory_equal(out, "hello 0123456789", 16);
    /* trailers, upper-case hex, leading zeros, BWS before ';' */
    s = "00fF \t;ext\r\n";
    {
        struct h1_chunked c;
        h1_chunked_init(&c, UINT64_MAX);
        assert_int_equal(h1_chunked_feed(&c, s, strlen(s), &used, NULL, 0, NULL), H1_NEED_MORE);
        assert_int_equal(used, strlen(s));
        assert_int_equal(c.remaining, 255);
    }
    s = "3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
    assert_int_equal(dechunk(s, strlen(s), 1000, out, sizeof(out), &olen, &used), H1_OK);
    assert_int_equal(used, strlen(s));
    assert_int_equal(olen, 3);
    /* empty body */
    assert_int_equal(dechunk("0\r\n\r\n", 5, 0, out, sizeof(out), &olen, &used), H1_OK);
    assert_int_equal(olen, 0);
}

static void test_chunked_incremental(void **state)
{
    const char *s = "4\r\nWiki\r\n6;a=b\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n";
    char out[64], inplace[128];
    size_t olen = 0, used, total = 0;
    struct h1_chunked c;
    int rc = H1_NEED_MORE;
    (void)state;
    h1_chunked_init(&c, 1000);
    for (size_t i = 0; i < strlen(s); i++) {
        rc = h1_chunked_feed(&c, s + i, 1, &used, out, sizeof(out), &olen);
        total += used;
        if (i + 1 < strlen(s))
            assert_int_equal(rc, H1_NEED_MORE);
    }
    assert_int_equal(rc, H1_OK);
    assert_int_equal(total, strlen(s));
    assert_int_equal(olen, 24);
    assert_memory_equal(out, "Wikipedia in \r\n\r\nchunks.", 24);
    /* in place */
    memcpy(inplace, s, strlen(s));
    olen = 0;
    h1_chunked_init(&c, 1000);
    assert_int_equal(
        h1_chunked_feed(&c, inplace, strlen(s), &used, inplace, sizeof(inplace), &olen), H1_OK);
    assert_int_equal(olen, 24);
    assert_memory_equal(inplace, "Wikipedia in \r\n\r\nchunks.", 24);
    /* a full output buffer stops consumption, and it resumes */
    h1_chunked_init(&c, 1000);
    olen = 0;
    assert_int_equal(h1_chunked_feed(&c, s, strlen(s), &used, out, 5, &olen), H1_NEED_MORE);
    assert_int_equal(olen, 5);
    assert_true(used < strlen(s));
    total = used;
    assert_int_equal(
        h1_chunked_feed(&c, s + total, strlen(s) - total, &used, out, sizeof(out), &olen), H1_OK);
    assert_int_equal(olen, 24);
    assert_memory_equal(out, "Wikipedia in \r\n\r\nchunks.", 24);
}

static void test_chunked_errors(void **state)
{
    char out[64], ext[2100], trl[5000];
    size_t olen, used;
    (void)state;
#define DC(s, max) dechunk(s, strlen(s), max, out, sizeof(out), &olen, &used)
    assert_int_equal(DC("\r\n", 100), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("g\r\n", 100), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("-1\r\n", 100), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("0x5\r\n", 100), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("5 5\r\n", 100), H1_E_CHUNK_SIZE);
    assert_int_equal(DC(" 5\r\n", 100), H1_E_CHUNK_SIZE);
    /* hex overflow */
    assert_int_equal(DC("10000000000000000\r\n", UINT64_MAX), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("ffffffffffffffffff\r\n", UINT64_MAX), H1_E_CHUNK_SIZE);
    assert_int_equal(DC("000000000000000000000000000000000001\r\n", UINT64_MAX), H1_E_CHUNK_SIZE);
    /* missing CRLF after the size or the data, bare LF */
    assert_int_equal(DC("5\nhello\r\n", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("5\rhello\r\n", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("5\r\nhelloX\r\n", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("5\r\nhello\n0\r\n\r\n", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("5\r\nhello\r\r", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("5;a\n", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("0\r\n\r\r", 100), H1_E_CHUNK_CRLF);
    assert_int_equal(DC("0\r\n\n", 100), H1_E_CHUNK_CRLF);
    /* extensions: control characters, and bounded */
    assert_int_equal(DC("5;a\x01\r\n", 100), H1_E_CHUNK_EXT);
    memset(ext, 'e', sizeof(ext));
    memcpy(ext, "5;", 2);
    memcpy(ext + sizeof(ext) - 3, "\r\n", 3);
    assert_int_equal(DC(ext, 100), H1_E_CHUNK_EXT);
    /* trailers bounded and well-formed */
    memset(trl, 'a', sizeof(trl));
    memcpy(trl, "0\r\nX: ", 6);
    memcpy(trl + sizeof(trl) - 5, "\r\n\r\n", 5);
    assert_int_equal(DC(trl, 100), H1_E_TRAILER);
    assert_int_equal(DC("0\r\n folded\r\n\r\n", 100), H1_E_TRAILER);
    assert_int_equal(DC("0\r\nX: a\x01\r\n\r\n", 100), H1_E_TRAILER);
    assert_int_equal(DC("0\r\nX: a\nb\r\n\r\n", 100), H1_E_CHUNK_CRLF);
    /* max decoded size: refused at the size line, before any data */
    assert_int_equal(DC("5\r\nhello\r\n0\r\n\r\n", 5), H1_OK);
    assert_int_equal(DC("5\r\nhello\r\n1\r\nx\r\n0\r\n\r\n", 5), H1_E_TOO_LARGE);
    assert_int_equal(DC("6\r\nhello!\r\n", 5), H1_E_TOO_LARGE);
    assert_int_equal(used, 3);
    assert_int_equal(olen, 0);
    assert_int_equal(DC("fffffffffffffff\r\n", 1 << 20), H1_E_TOO_LARGE);
    assert_int_equal(h1_err_status(H1_E_TOO_LARGE), 413);
#undef DC
}

static int resp(const char *s, bool head, struct h1_response *r)
{
    memset(r, 0, sizeof(*r));
    r->headers = hdrs;
    r->max_headers = MAXH;
    return h1_parse_response(s, strlen(s), 16384, head, r);
}

static void test_response(void **state)
{
    struct h1_response r;
    const char *s;
    (void)state;
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, &r), H1_OK);
    assert_int_equal(r.status, 200);
    assert_true(span_is(r.reason, r.reason_len, "OK"));
    assert_int_equal(r.framing, H1_BODY_LENGTH);
    assert_int_equal(r.content_length, 5);
    assert_true(r.keep_alive);
    assert_int_equal(r.head_len, 38);
    assert_int_equal(resp("HTTP/1.1 201 \r\nTransfer-Encoding: chunked\r\n\r\n", false, &r), H1_OK);
    assert_int_equal(r.framing, H1_BODY_CHUNKED);
    assert_int_equal(resp("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false, &r), H1_OK);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.framing, H1_BODY_NONE);
    /* close-delimited, never reusable */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nX: y\r\n\r\n", false, &r), H1_OK);
    assert_int_equal(r.framing, H1_BODY_CLOSE);
    assert_false(r.keep_alive);
    assert_int_equal(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", false, &r),
        H1_OK);
    assert_false(r.keep_alive);
    assert_int_equal(resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, &r), H1_OK);
    assert_false(r.keep_alive);
    /* HEAD, 204, 304: no body whatever the headers say */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, &r), H1_OK);
    assert_int_equal(r.framing, H1_BODY_NONE);
    assert_true(r.keep_alive);
    assert_int_equal(resp("HTTP/1.1 204 No Content\r\n\r\n", false, &r), H1_OK);
    assert_int_equal(r.framing, H1_BODY_NONE);
    assert_true(r.keep_alive);
    assert_int_equal(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, &r),
                     H1_OK);
    assert_int_equal(r.framing, H1_BODY_NONE);
    /* 1xx skipped */
    s = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_int_equal(resp(s, false, &r), H1_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.skipped, 25 + 40);
    assert_int_equal(r.head_len, strlen(s) - 2);
    assert_int_equal(r.nheaders, 1);
    assert_int_equal(resp("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", false, &r), H1_NEED_MORE);
    /* bad gateway material */
    assert_int_equal(resp("HTTP/1.1 101 Switching\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/2 200 OK\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 20 OK\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 2000 OK\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 099 OK\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 600 OK\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 200 O\x01K\r\n\r\n", false, &r), H1_E_STATUS);
    assert_int_equal(resp("HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n", false, &r), H1_E_BARE_LF);
    assert_int_equal(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false,
             &r),
        H1_E_CL_TE);
    assert_int_equal(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", false, &r),
        H1_E_DUP_CL);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, &r),
                     H1_E_BAD_TE);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nX : y\r\n\r\n", false, &r), H1_E_WS_BEFORE_COLON);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", false, &r), H1_E_OBS_FOLD);
}

static void test_body_framer(void **state)
{
    struct h1_response r;
    struct h1_body b;
    size_t used;
    const char *body;
    (void)state;
    /* Content-Length split across reads, extra bytes not claimed */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, &r), H1_OK);
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "hel", 3, &used), H1_NEED_MORE);
    assert_int_equal(used, 3);
    assert_int_equal(h1_body_eof(&b), H1_E_TRUNCATED);
    assert_int_equal(h1_body_feed(&b, "loEXTRA", 7, &used), H1_OK);
    assert_int_equal(used, 2);
    assert_int_equal(h1_body_eof(&b), H1_OK);
    /* chunked, byte at a time, ends exactly at the last CRLF */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, &r),
                     H1_OK);
    h1_body_init(&b, &r);
    body = "3\r\nabc\r\n0\r\n\r\n";
    for (size_t i = 0; i < strlen(body); i++) {
        int rc = h1_body_feed(&b, body + i, 1, &used);
        assert_int_equal(used, 1);
        assert_int_equal(rc, i + 1 == strlen(body) ? H1_OK : H1_NEED_MORE);
    }
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "3\r\nabc\r\n0\r\n\r\nHTTP/1.1", 21, &used), H1_OK);
    assert_int_equal(used, 13);
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "3\r\nabcd\r\n", 9, &used), H1_E_CHUNK_CRLF);
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "3\r\nab", 5, &used), H1_NEED_MORE);
    assert_int_equal(h1_body_eof(&b), H1_E_TRUNCATED);
    /* close-delimited: everything is body, EOF ends it */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\n\r\n", false, &r), H1_OK);
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "anything", 8, &used), H1_NEED_MORE);
    assert_int_equal(used, 8);
    assert_int_equal(h1_body_eof(&b), H1_OK);
    /* no body */
    assert_int_equal(resp("HTTP/1.1 204 No Content\r\n\r\n", false, &r), H1_OK);
    h1_body_init(&b, &r);
    assert_int_equal(h1_body_feed(&b, "x", 1, &used), H1_OK);
    assert_int_equal(used, 0);
}

static void test_strerror(void **state)
{
    (void)state;
    for (int rc = H1_E_REQLINE; rc <= H1_E_PATH; rc++)
        assert_string_not_equal(h1_strerror(rc), "unknown error");
    assert_string_equal(h1_strerror(H1_E_CL_TE), "Content-Length with Transfer-Encoding");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_basic),
        cmocka_unit_test(test_req_forms),
        cmocka_unit_test(test_req_incremental),
        cmocka_unit_test(test_req_smuggling),
        cmocka_unit_test(test_req_line),
        cmocka_unit_test(test_req_limits),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_chunked_basic),
        cmocka_unit_test(test_chunked_incremental),
        cmocka_unit_test(test_chunked_errors),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_body_framer),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
