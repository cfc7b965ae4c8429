/*
 * h1.h - strict, zero-copy, incremental HTTP/1.1 parsing for the gateway's data plane
 * (SERVICES §03, ARCHITECTURE §4), plus a few gateway internals that gw.h does not declare
 * (clean-up and test hooks for table.c, breaker.c and deny.c).
 *
 * Nothing here allocates. The head parsers work on the bytes received so far: they return
 * H1_NEED_MORE until a whole head is present, then H1_OK with the head's length, or a negative
 * H1_E_* code that says exactly what was wrong. Every request-side error means "answer 400 (or
 * h1_err_status()) and close": the parser refuses every ambiguity that lets two HTTP parsers
 * disagree on where a message ends (request smuggling): bare LF, obs-fold, whitespace before a
 * colon, Content-Length together with Transfer-Encoding, repeated Content-Length, and any
 * Transfer-Encoding other than exactly "chunked".
 *
 * Parsed names, values, paths and queries point into the caller's buffer (not NUL-terminated).
 */
#ifndef GW_H1_H
#define GW_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum h1_rc {
    H1_OK = 0,
    H1_NEED_MORE = 1,
    H1_E_REQLINE = -100,   /* malformed request line (spaces, missing parts) */
    H1_E_METHOD,           /* method not a token */
    H1_E_TARGET,           /* target not origin-form, or bad characters in it */
    H1_E_VERSION,          /* not HTTP/1.1 or HTTP/1.0 → 505 */
    H1_E_BARE_LF,          /* a line ended in LF without CR */
    H1_E_BARE_CR,          /* a CR not followed by LF */
    H1_E_OBS_FOLD,         /* a header line starting with SP/HTAB */
    H1_E_WS_BEFORE_COLON,  /* "Name : value" */
    H1_E_HDR_NAME,         /* empty name, invalid token character, or no colon */
    H1_E_HDR_VALUE,        /* control character in a value */
    H1_E_TOO_MANY_HEADERS, /* more fields than the caller's array → 431 */
    H1_E_HEAD_TOO_LARGE,   /* no end of head within the limit → 431 */
    H1_E_CL_TE,            /* both Content-Length and Transfer-Encoding */
    H1_E_DUP_CL,           /* more than one Content-Length, even equal */
    H1_E_BAD_CL,           /* Content-Length not pure digits, or overflow */
    H1_E_BAD_TE,           /* Transfer-Encoding other than exactly "chunked", or repeated */
    H1_E_NO_HOST,          /* HTTP/1.1 without Host */
    H1_E_DUP_HOST,         /* more than one Host */
    H1_E_STATUS,           /* malformed status line, or 101 (upgrades are not proxied) */
    H1_E_CHUNK_SIZE,       /* bad or overflowing chunk-size */
    H1_E_CHUNK_CRLF,       /* chunk data not followed by CRLF, or a bad line end */
    H1_E_CHUNK_EXT,        /* chunk extension too long or with control characters */
    H1_E_TRAILER,          /* trailer section too large or malformed */
    H1_E_TOO_LARGE,        /* decoded body over the caller's limit → 413 */
    H1_E_TRUNCATED,        /* connection closed before the body's end */
    H1_E_PATH,             /* h1_path_check: unsafe path */
};

#define H1_CHUNK_EXT_MAX 1024 /* bytes of extensions per chunk-size line */
#define H1_TRAILER_MAX   4096 /* bytes of the whole trailer section */

struct h1_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing SP/HTAB removed */
    size_t value_len;
};

struct h1_request {
    /* in: the caller's header array */
    struct h1_header *headers;
    size_t max_headers;
    /* out */
    size_t nheaders;
    size_t head_len; /* bytes of the head including the final CRLFCRLF */
    const char *method;
    size_t method_len;
    const char *target; /* path + "?" + query as received */
    size_t target_len;
    const char *path;
    size_t path_len;
    const char *query; /* after '?', NULL when there is no '?' */
    size_t query_len;
    int minor;              /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
    int64_t content_length; /* -1 when absent */
    bool chunked;
    bool keep_alive;
    const char *host; /* the Host value (NULL on 1.0 without one) */
    size_t host_len;
};

/**
 * Parses a request head at the start of @buf (@len bytes received so far, at most @max_head
 * looked at). H1_OK fills @req (req->head_len is where the body starts), H1_NEED_MORE asks for
 * more bytes, a negative H1_E_* rejects the request. Re-scans from the start on each call.
 */
int h1_parse_request(const char *buf, size_t len, size_t max_head, struct h1_request *req);

enum h1_framing {
    H1_BODY_NONE,    /* HEAD, 1xx, 204, 304, or Content-Length: 0 */
    H1_BODY_LENGTH,  /* Content-Length bytes */
    H1_BODY_CHUNKED, /* chunked, ends with the last chunk and trailers */
    H1_BODY_CLOSE,   /* until the upstream closes (never reusable) */
};

struct h1_response {
    struct h1_header *headers; /* in */
    size_t max_headers;        /* in */
    size_t nheaders;
    size_t head_len; /* includes skipped 1xx interim heads */
    size_t skipped;  /* bytes of skipped 1xx heads at the start */
    int minor;
    int status;
    const char *reason;
    size_t reason_len;
    int64_t content_length; /* -1 when absent */
    enum h1_framing framing;
    bool keep_alive; /* the connection may be reused after this response */
};

/**
 * Parses an upstream response head. @head_request: the request was HEAD (no body follows).
 * Interim 1xx responses (100 Continue, 102, 103) are skipped. Errors mean 502 Bad Gateway.
 */
int h1_parse_response(const char *buf, size_t len, size_t max_head, bool head_request,
                      struct h1_response *resp);

/**
 * Whether a request path (without the query) is safe to route: absolute, no NUL or control
 * characters, no '\', no percent-encoded '/', '\', '.' or control character (any case), no
 * invalid percent escape, no "." or ".." segment. Returns H1_OK or H1_E_PATH.
 */
int h1_path_check(const char *path, size_t len);
static inline bool h1_path_safe(const char *path, size_t len)
{
    return h1_path_check(path, len) == H1_OK;
}

/* ---- chunked bodies ----------------------------------------------------------------------- */

struct h1_chunked {
    int state;
    uint64_t remaining; /* of the current chunk */
    uint64_t total;     /* decoded bytes so far */
    uint64_t max;       /* decoded limit (H1_E_TOO_LARGE beyond it) */
    size_t digits;
    size_t ext_len;
    size_t trailer_len;
};

/** Starts a decoder whose decoded body may not exceed @max bytes (UINT64_MAX: no limit). */
void h1_chunked_init(struct h1_chunked *c, uint64_t max);

/**
 * Feeds @in_len bytes. Data bytes go to @out (@out_cap room, *@out_len advanced) unless @out is
 * NULL (framing only: nothing is copied). @out may equal @in (in-place decoding: data only
 * moves towards the start). *@consumed is set to the input bytes used. Returns H1_OK when the
 * body ended (bytes past *@consumed belong to the next message), H1_NEED_MORE when all input
 * was used or @out is full (check *@consumed), or a negative H1_E_*.
 */
int h1_chunked_feed(struct h1_chunked *c, const char *in, size_t in_len, size_t *consumed,
                    char *out, size_t out_cap, size_t *out_len);

/* ---- response body framing for pass-through ------------------------------------------------ */

struct h1_body {
    enum h1_framing framing;
    uint64_t remaining; /* H1_BODY_LENGTH */
    struct h1_chunked ch;
    bool done;
};

/** Sets up tracking for the body that follows a parsed response head. */
void h1_body_init(struct h1_body *b, const struct h1_response *resp);
/**
 * Tracks @len bytes of the body as they pass through (nothing is copied). *@consumed is how
 * many belong to the body. H1_OK: the body is complete (the connection is reusable if the
 * response said so and *@consumed == @len); H1_NEED_MORE; or a negative H1_E_*.
 */
int h1_body_feed(struct h1_body *b, const char *in, size_t len, size_t *consumed);
/** The upstream closed: H1_OK if that ends the body (close-delimited or done), else truncated. */
int h1_body_eof(const struct h1_body *b);

/* ---- errors ------------------------------------------------------------------------------- */

/** The HTTP status to answer for a request-side code (400, 413, 431, 505). */
int h1_err_status(int rc);
/** A short static text for a code ("bare LF", "Content-Length with Transfer-Encoding", …). */
const char *h1_strerror(int rc);

/* ---- gateway internals not in gw.h (table.c, breaker.c, deny.c) ---------------------------- */

struct gw_breaker;

/** Drops the current routing table (at shutdown, and between tests). */
void gw_table_clear(void);
/** Frees every breaker (at shutdown after the tables are gone, and between tests). */
void gw_breakers_clear(void);
/** The breaker's state now (without claiming a probe). */
int gw_breaker_state(struct gw_breaker *b);
/** Test hooks: the monotonic clock breakers read (NULL = gr_time_mono_ms), and the open time. */
void gw_breaker_set_clock(int64_t (*now_ms)(void));
void gw_breaker_set_open_ms(int64_t ms);
/** Empties the deny set (at shutdown, and between tests); number of live entries. */
void gw_deny_clear(void);
size_t gw_deny_count(void);
#define GW_DENY_MAX     100000
#define GW_DENY_JTI_MAX 256

#endif
