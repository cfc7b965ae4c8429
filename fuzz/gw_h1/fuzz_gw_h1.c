/*
 * fuzz_gw_h1.c - libFuzzer target for the gateway's HTTP/1.1 parsers (services/03-api-gateway/
 * h1.c): every input goes to the request head parser, the response head parser (then the body
 * framer) and the chunked decoder. Checks: results stay inside the buffer, framing facts are
 * consistent (never chunked with a Content-Length), the decoder gives the same result fed
 * whole, byte at a time and in place, and the framer agrees with the decoder.
 * h1.c is compiled into this file because scripts/fuzz.sh links only lib/gr.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../services/03-api-gateway/h1.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && p + n <= buf + len;
}

static void fuzz_request(const char *buf, size_t len, size_t max_head)
{
    struct h1_header hdrs[8];
    struct h1_request r = { .headers = hdrs, .max_headers = 8 };
    int rc = h1_parse_request(buf, len, max_head, &r);

    CHECK(rc == H1_OK || rc == H1_NEED_MORE || (rc >= H1_E_REQLINE && rc <= H1_E_PATH));
    CHECK(h1_err_status(rc) >= 200);
    if (rc != H1_OK)
        return;
    CHECK(r.head_len <= len && r.head_len <= max_head && r.head_len >= 4);
    CHECK(memcmp(buf + r.head_len - 4, "\r\n\r\n", 4) == 0);
    CHECK(inside(r.method, r.method_len, buf, r.head_len) && r.method_len > 0);
    CHECK(inside(r.path, r.path_len, buf, r.head_len) && r.path[0] == '/');
    CHECK(!r.query || inside(r.query, r.query_len, buf, r.head_len));
    CHECK(!(r.chunked && r.content_length >= 0));
    CHECK(r.content_length >= -1);
    CHECK(r.minor == 0 || r.minor == 1);
    CHECK(r.minor == 0 || r.host);
    CHECK(r.nheaders <= 8);
    for (size_t i = 0; i < r.nheaders; i++) {
        CHECK(inside(hdrs[i].name, hdrs[i].name_len, buf, r.head_len) && hdrs[i].name_len > 0);
        CHECK(inside(hdrs[i].value, hdrs[i].value_len, buf, r.head_len));
        for (size_t k = 0; k < hdrs[i].value_len; k++)
            CHECK(hdrs[i].value[k] != '\r' && hdrs[i].value[k] != '\n' && hdrs[i].value[k]);
    }
    (void)h1_path_check(r.path, r.path_len);
}

static void fuzz_chunked(const char *buf, size_t len, uint64_t max)
{
    static char out1[4096], out2[4096], work[4096];
    struct h1_chunked c1, c2, c3;
    size_t used1 = 0, olen1 = 0, olen2 = 0, used, total = 0, olen3 = 0, used3 = 0;
    int rc1, rc2 = H1_NEED_MORE, rc3;

    if (len > sizeof(work))
        len = sizeof(work);
    h1_chunked_init(&c1, max);
    rc1 = h1_chunked_feed(&c1, buf, len, &used1, out1, sizeof(out1), &olen1);
    CHECK(used1 <= len && olen1 <= used1 && olen1 <= max);
    /* byte at a time */
    h1_chunked_init(&c2, max);
    for (size_t i = 0; i < len && rc2 == H1_NEED_MORE; i++) {
        rc2 = h1_chunked_feed(&c2, buf + i, 1, &used, out2, sizeof(out2), &olen2);
        total += used;
    }
    CHECK(rc1 == rc2);
    CHECK(olen1 == olen2 && memcmp(out1, out2, olen1) == 0);
    if (rc1 == H1_OK)
        CHECK(total == used1);
    /* in place */
    memcpy(work, buf, len);
    h1_chunked_init(&c3, max);
    rc3 = h1_chunked_feed(&c3, work, len, &used3, work, sizeof(work), &olen3);
    CHECK(rc3 == rc1 && used3 == used1 && olen3 == olen1 && memcmp(work, out1, olen1) == 0);
}

static void fuzz_response(const char *buf, size_t len, size_t max_head, bool head)
{
    struct h1_header hdrs[8];
    struct h1_response r = { .headers = hdrs, .max_headers = 8 };
    struct h1_body b;
    size_t used, split;
    int rc = h1_parse_response(buf, len, max_head, head, &r);

    if (rc != H1_OK)
        return;
    CHECK(r.head_len <= len && r.skipped < r.head_len);
    CHECK(r.status >= 200 && r.status <= 599);
    CHECK(!(r.framing == H1_BODY_CLOSE && r.keep_alive));
    CHECK(!head || r.framing == H1_BODY_NONE);
    buf += r.head_len;
    len -= r.head_len;
    h1_body_init(&b, &r);
    split = len / 2;
    rc = h1_body_feed(&b, buf, split, &used);
    CHECK(used <= split);
    if (rc == H1_NEED_MORE) {
        CHECK(used == split);
        rc = h1_body_feed(&b, buf + split, len - split, &used);
        CHECK(used <= len - split);
    }
    if (rc == H1_OK)
        CHECK(h1_body_eof(&b) == H1_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf;
    size_t len, max_head;

    if (size < 2)
        return 0;
    max_head = 64 + (size_t)data[0] * 32;
    buf = (const char *)data + 2;
    len = size - 2;
    fuzz_request(buf, len, max_head);
    fuzz_response(buf, len, max_head, data[1] & 1);
    fuzz_chunked(buf, len, (data[1] & 2) ? UINT64_MAX : (uint64_t)data[1] * 16);
    return 0;
}
