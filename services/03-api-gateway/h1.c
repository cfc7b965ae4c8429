/*
 * h1.c - strict HTTP/1.1 head parsers, path check, chunked decoder and body framer (h1.h).
 * No allocation; everything points into the caller's buffer.
 */
#include "h1.h"

#include <string.h>

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Case-insensitive equality of a counted string and a lower-case literal. */
static bool ieq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return false;
    }
    return true;
}

/*
 * Finds the end of a head (the CRLF of the empty line) within @max bytes. Every LF must follow
 * a CR and every CR must precede an LF.
 */
static int find_head_end(const char *buf, size_t len, size_t max, size_t *end)
{
    size_t lim = len < max ? len : max;
    size_t line_start = 0;

    for (size_t i = 0; i < lim; i++) {
        char c = buf[i];
        if (c == '\n')
            return H1_E_BARE_LF;
        if (c != '\r')
            continue;
        if (i + 1 >= lim)
            break;
        if (buf[i + 1] != '\n')
            return H1_E_BARE_CR;
        if (i == line_start && i > 0) {
            *end = i + 2;
            return H1_OK;
        }
        i++;
        line_start = i + 1;
    }
    if (len >= max)
        return H1_E_HEAD_TOO_LARGE;
    return H1_NEED_MORE;
}

/* Header semantics shared by requests and responses. */
struct hdr_info {
    size_t ncl, nte, nhost;
    int64_t cl;
    bool te_chunked;
    bool conn_close, conn_keep_alive;
    const char *host;
    size_t host_len;
};

static int parse_cl(const char *v, size_t n, int64_t *out)
{
    int64_t x = 0;
    if (n == 0)
        return H1_E_BAD_CL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < '0' || c > '9')
            return H1_E_BAD_CL;
        if (x > (INT64_MAX - (c - '0')) / 10)
            return H1_E_BAD_CL;
        x = x * 10 + (c - '0');
    }
    *out = x;
    return H1_OK;
}

static void parse_connection(const char *v, size_t n, struct hdr_info *hi)
{
    size_t i = 0;
    while (i < n) {
        size_t s, e;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < n && v[i] != ',')
            i++;
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (ieq(v + s, e - s, "close"))
            hi->conn_close = true;
        else if (ieq(v + s, e - s, "keep-alive"))
            hi->conn_keep_alive = true;
    }
}

/*
 * Parses the header lines in [pos, end) (end points past the final empty line's CRLF) into
 * @hdrs and collects framing facts into @hi.
 */
static int parse_headers(const char *buf, size_t pos, size_t end, struct h1_header *hdrs,
                         size_t max, size_t *nout, struct hdr_info *hi)
{
    size_t n = 0;
    memset(hi, 0, sizeof(*hi));
    hi->cl = -1;
    while (pos + 2 < end) {
        size_t ns = pos, ne, vs, ve;
        unsigned char c = (unsigned char)buf[pos];
        if (c == ' ' || c == '\t')
            return H1_E_OBS_FOLD;
        while (pos < end && is_tchar((unsigned char)buf[pos]))
            pos++;
        ne = pos;
        c = (unsigned char)buf[pos];
        if (c == ' ' || c == '\t')
            return ne == ns ? H1_E_HDR_NAME : H1_E_WS_BEFORE_COLON;
        if (c != ':' || ne == ns)
            return H1_E_HDR_NAME;
        pos++;
        while (buf[pos] == ' ' || buf[pos] == '\t')
            pos++;
        vs = pos;
        while (buf[pos] != '\r') {
            c = (unsigned char)buf[pos];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return H1_E_HDR_VALUE;
            pos++;
        }
        ve = pos;
        while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t'))
            ve--;
        pos += 2; /* CRLF, guaranteed by find_head_end */
        if (n >= max)
            return H1_E_TOO_MANY_HEADERS;
        hdrs[n] = (struct h1_header){ buf + ns, ne - ns, buf + vs, ve - vs };
        n++;

        const char *name = buf + ns, *val = buf + vs;
        size_t nl = ne - ns, vl = ve - vs;
        if (ieq(name, nl, "content-length")) {
            if (++hi->ncl > 1)
                return H1_E_DUP_CL;
            int rc = parse_cl(val, vl, &hi->cl);
            if (rc != H1_OK)
                return rc;
        } else if (ieq(name, nl, "transfer-encoding")) {
            if (++hi->nte > 1 || !ieq(val, vl, "chunked"))
                return H1_E_BAD_TE;
            hi->te_chunked = true;
        } else if (ieq(name, nl, "host")) {
            if (++hi->nhost > 1)
                return H1_E_DUP_HOST;
            hi->host = val;
            hi->host_len = vl;
        } else if (ieq(name, nl, "connection")) {
            parse_connection(val, vl, hi);
        }
    }
    if (hi->ncl && hi->nte)
        return H1_E_CL_TE;
    *nout = n;
    return H1_OK;
}

int h1_parse_request(const char *buf, size_t len, size_t max_head, struct h1_request *req)
{
    size_t end = 0, pos = 0, ms, ts, te;
    struct hdr_info hi;
    int rc = find_head_end(buf, len, max_head, &end);

    if (rc != H1_OK)
        return rc;
    req->nheaders = 0;
    /* method SP */
    ms = pos;
    while (is_tchar((unsigned char)buf[pos]))
        pos++;
    if (buf[pos] != ' ')
        return buf[pos] == '\r' ? H1_E_REQLINE : H1_E_METHOD;
    if (pos == ms)
        return H1_E_REQLINE;
    req->method = buf + ms;
    req->method_len = pos - ms;
    pos++;
    /* origin-form target SP */
    ts = pos;
    if (buf[pos] != '/')
        return buf[pos] == ' ' || buf[pos] == '\r' ? H1_E_REQLINE : H1_E_TARGET;
    req->query = NULL;
    req->query_len = 0;
    while (buf[pos] != ' ' && buf[pos] != '\r') {
        unsigned char c = (unsigned char)buf[pos];
        if (c < 0x21 || c > 0x7e || c == '#')
            return H1_E_TARGET;
        if (c == '?' && !req->query)
            req->query = buf + pos + 1;
        pos++;
    }
    te = pos;
    if (buf[pos] != ' ')
        return H1_E_REQLINE;
    pos++;
    req->target = buf + ts;
    req->target_len = te - ts;
    req->path = buf + ts;
    req->path_len = req->query ? (size_t)(req->query - 1 - (buf + ts)) : te - ts;
    req->query_len = req->query ? (size_t)(buf + te - req->query) : 0;
    /* version CRLF */
    if (end - pos < 10 || memcmp(buf + pos, "HTTP/", 5) != 0)
        return H1_E_REQLINE;
    if (buf[pos + 8] != '\r' || buf[pos + 6] != '.' || buf[pos + 5] < '0' || buf[pos + 5] > '9' ||
        buf[pos + 7] < '0' || buf[pos + 7] > '9')
        return H1_E_REQLINE;
    if (buf[pos + 5] != '1' || (buf[pos + 7] != '1' && buf[pos + 7] != '0'))
        return H1_E_VERSION;
    req->minor = buf[pos + 7] - '0';
    pos += 10;

    rc = parse_headers(buf, pos, end, req->headers, req->max_headers, &req->nheaders, &hi);
    if (rc != H1_OK)
        return rc;
    if (hi.nte && req->minor == 0)
        return H1_E_BAD_TE;
    if (req->minor == 1 && hi.nhost == 0)
        return H1_E_NO_HOST;
    req->host = hi.host;
    req->host_len = hi.host_len;
    req->content_length = hi.cl;
    req->chunked = hi.te_chunked;
    req->keep_alive = req->minor == 1 ? !hi.conn_close : (hi.conn_keep_alive && !hi.conn_close);
    req->head_len = end;
    return H1_OK;
}

/* One status line + headers at @buf; fills @resp (except skipped/head_len). */
static int parse_one_response(const char *buf, size_t end, bool head_request,
                              struct h1_response *resp)
{
    struct hdr_info hi;
    size_t pos, rs;
    int rc;

    if (end < 14 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') ||
        buf[8] != ' ')
        return H1_E_STATUS;
    resp->minor = buf[7] - '0';
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return H1_E_STATUS;
    }
    resp->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (resp->status < 100 || resp->status > 599 || resp->status == 101)
        return H1_E_STATUS;
    pos = 12;
    if (buf[pos] == ' ') {
        pos++;
    } else if (buf[pos] != '\r') {
        return H1_E_STATUS;
    }
    rs = pos;
    while (buf[pos] != '\r') {
        unsigned char c = (unsigned char)buf[pos];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return H1_E_STATUS;
        pos++;
    }
    resp->reason = buf + rs;
    resp->reason_len = pos - rs;
    pos += 2;
    rc = parse_headers(buf, pos, end, resp->headers, resp->max_headers, &resp->nheaders, &hi);
    if (rc != H1_OK)
        return rc;
    resp->content_length = hi.cl;
    resp->keep_alive = resp->minor == 1 ? !hi.conn_close : (hi.conn_keep_alive && !hi.conn_close);
    if (head_request || resp->status < 200 || resp->status == 204 || resp->status == 304) {
        resp->framing = H1_BODY_NONE;
    } else if (hi.te_chunked) {
        resp->framing = H1_BODY_CHUNKED;
    } else if (hi.cl >= 0) {
        resp->framing = hi.cl == 0 ? H1_BODY_NONE : H1_BODY_LENGTH;
    } else {
        resp->framing = H1_BODY_CLOSE;
        resp->keep_alive = false;
    }
    return H1_OK;
}

int h1_parse_response(const char *buf, size_t len, size_t max_head, bool head_request,
                      struct h1_response *resp)
{
    size_t off = 0;

    resp->skipped = 0;
    resp->nheaders = 0;
    for (;;) {
        size_t end = 0;
        int rc;
        if (off >= max_head)
            return H1_E_HEAD_TOO_LARGE;
        rc = find_head_end(buf + off, len - off, max_head - off, &end);
        if (rc != H1_OK)
            return rc;
        rc = parse_one_response(buf + off, end, head_request, resp);
        if (rc != H1_OK)
            return rc;
        off += end;
        if (resp->status >= 200) {
            resp->head_len = off;
            return H1_OK;
        }
        resp->skipped = off; /* 100 Continue, 102, 103: skip and read the final head */
    }
}

int h1_path_check(const char *p, size_t len)
{
    size_t seg = 1;

    if (len == 0 || p[0] != '/')
        return H1_E_PATH;
    for (size_t i = 1; i <= len; i++) {
        if (i == len || p[i] == '/') {
            size_t sl = i - seg;
            if ((sl == 1 && p[seg] == '.') || (sl == 2 && p[seg] == '.' && p[seg + 1] == '.'))
                return H1_E_PATH;
            seg = i + 1;
            continue;
        }
        unsigned char c = (unsigned char)p[i];
        if (c < 0x21 || c > 0x7e || c == '\\' || c == '?' || c == '#')
            return H1_E_PATH;
        if (c == '%') {
            int hi, lo, v;
            if (len - i < 3)
                return H1_E_PATH;
            hi = hexval((unsigned char)p[i + 1]);
            lo = hexval((unsigned char)p[i + 2]);
            if (hi < 0 || lo < 0)
                return H1_E_PATH;
            v = hi * 16 + lo;
            if (v == '/' || v == '\\' || v == '.' || v < 0x20 || v == 0x7f)
                return H1_E_PATH;
            i += 2;
        }
    }
    return H1_OK;
}

/* ---- chunked ----------------------------------------------------------------------------- */

enum {
    CS_SIZE0,
    CS_SIZE,
    CS_BWS,
    CS_EXT,
    CS_SIZE_LF,
    CS_DATA,
    CS_DATA_CR,
    CS_DATA_LF,
    CS_TRL_START,
    CS_TRL_LINE,
    CS_TRL_LF,
    CS_END_LF,
    CS_DONE,
};

void h1_chunked_init(struct h1_chunked *c, uint64_t max)
{
    memset(c, 0, sizeof(*c));
    c->state = CS_SIZE0;
    c->max = max;
}

static bool ext_char(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

int h1_chunked_feed(struct h1_chunked *c, const char *in, size_t in_len, size_t *consumed,
                    char *out, size_t out_cap, size_t *out_len)
{
    size_t i = 0;
    int rc = H1_NEED_MORE;

    while (i < in_len && c->state != CS_DONE) {
        unsigned char ch = (unsigned char)in[i];
        int hv;
        switch (c->state) {
        case CS_SIZE0:
        case CS_SIZE:
            hv = hexval(ch);
            if (hv >= 0) {
                if (c->remaining > (UINT64_MAX >> 4) || ++c->digits > 32) {
                    rc = H1_E_CHUNK_SIZE;
                    goto out;
                }
                c->remaining = c->remaining * 16 + (uint64_t)hv;
                c->state = CS_SIZE;
                i++;
                continue;
            }
            if (c->state == CS_SIZE0) {
                rc = H1_E_CHUNK_SIZE;
                goto out;
            }
            if (ch == '\r') {
                c->state = CS_SIZE_LF;
            } else if (ch == ';') {
                c->state = CS_EXT;
            } else if (ch == ' ' || ch == '\t') {
                c->state = CS_BWS;
            } else {
                rc = ch == '\n' ? H1_E_CHUNK_CRLF : H1_E_CHUNK_SIZE;
                goto out;
            }
            i++;
            continue;
        case CS_BWS:
            if (ch == ';') {
                c->state = CS_EXT;
            } else if (ch != ' ' && ch != '\t') {
                rc = H1_E_CHUNK_SIZE;
                goto out;
            }
            if (++c->ext_len > H1_CHUNK_EXT_MAX) {
                rc = H1_E_CHUNK_EXT;
                goto out;
            }
            i++;
            continue;
        case CS_EXT:
            if (ch == '\r') {
                c->state = CS_SIZE_LF;
            } else if (ch == '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            } else if (!ext_char(ch) || ++c->ext_len > H1_CHUNK_EXT_MAX) {
                rc = H1_E_CHUNK_EXT;
                goto out;
            }
            i++;
            continue;
        case CS_SIZE_LF:
            if (ch != '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            }
            i++;
            if (c->remaining > c->max - c->total) {
                rc = H1_E_TOO_LARGE;
                goto out;
            }
            c->digits = 0;
            c->ext_len = 0;
            c->state = c->remaining == 0 ? CS_TRL_START : CS_DATA;
            continue;
        case CS_DATA: {
            size_t n = in_len - i;
            if ((uint64_t)n > c->remaining)
                n = (size_t)c->remaining;
            if (out) {
                size_t room = out_cap - *out_len;
                if (n > room)
                    n = room;
                if (n == 0)
                    goto out; /* output full */
                memmove(out + *out_len, in + i, n);
                *out_len += n;
            }
            i += n;
            c->remaining -= n;
            c->total += n;
            if (c->remaining == 0)
                c->state = CS_DATA_CR;
            continue;
        }
        case CS_DATA_CR:
            if (ch != '\r') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            }
            c->state = CS_DATA_LF;
            i++;
            continue;
        case CS_DATA_LF:
            if (ch != '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            }
            c->state = CS_SIZE0;
            i++;
            continue;
        case CS_TRL_START:
        case CS_TRL_LINE:
            if (++c->trailer_len > H1_TRAILER_MAX) {
                rc = H1_E_TRAILER;
                goto out;
            }
            if (ch == '\r') {
                c->state = c->state == CS_TRL_START ? CS_END_LF : CS_TRL_LF;
            } else if (ch == '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            } else if (c->state == CS_TRL_START && (ch == ' ' || ch == '\t' || ch == ':')) {
                rc = H1_E_TRAILER; /* obs-fold or empty name */
                goto out;
            } else if (!ext_char(ch)) {
                rc = H1_E_TRAILER;
                goto out;
            } else {
                c->state = CS_TRL_LINE;
            }
            i++;
            continue;
        case CS_TRL_LF:
            if (ch != '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            }
            c->state = CS_TRL_START;
            i++;
            continue;
        case CS_END_LF:
            if (ch != '\n') {
                rc = H1_E_CHUNK_CRLF;
                goto out;
            }
            c->state = CS_DONE;
            i++;
            continue;
        default:
            rc = H1_E_CHUNK_SIZE;
            goto out;
        }
    }
out:
    *consumed = i;
    if (rc == H1_NEED_MORE && c->state == CS_DONE)
        rc = H1_OK;
    return rc;
}

/* ---- body framing ------------------------------------------------------------------------ */

void h1_body_init(struct h1_body *b, const struct h1_response *resp)
{
    memset(b, 0, sizeof(*b));
    b->framing = resp->framing;
    if (b->framing == H1_BODY_LENGTH)
        b->remaining = (uint64_t)resp->content_length;
    if (b->framing == H1_BODY_CHUNKED)
        h1_chunked_init(&b->ch, UINT64_MAX);
    b->done = b->framing == H1_BODY_NONE;
}

int h1_body_feed(struct h1_body *b, const char *in, size_t len, size_t *consumed)
{
    int rc;

    *consumed = 0;
    if (b->done)
        return H1_OK;
    switch (b->framing) {
    case H1_BODY_LENGTH: {
        size_t n = (uint64_t)len > b->remaining ? (size_t)b->remaining : len;
        b->remaining -= n;
        *consumed = n;
        b->done = b->remaining == 0;
        return b->done ? H1_OK : H1_NEED_MORE;
    }
    case H1_BODY_CHUNKED:
        rc = h1_chunked_feed(&b->ch, in, len, consumed, NULL, 0, NULL);
        if (rc == H1_OK)
            b->done = true;
        return rc;
    case H1_BODY_CLOSE:
        *consumed = len;
        return H1_NEED_MORE;
    default:
        b->done = true;
        return H1_OK;
    }
}

int h1_body_eof(const struct h1_body *b)
{
    return b->done || b->framing == H1_BODY_CLOSE ? H1_OK : H1_E_TRUNCATED;
}

/* ---- errors ------------------------------------------------------------------------------ */

int h1_err_status(int rc)
{
    switch (rc) {
    case H1_OK:
    case H1_NEED_MORE:
        return 200;
    case H1_E_TOO_MANY_HEADERS:
    case H1_E_HEAD_TOO_LARGE:
        return 431;
    case H1_E_TOO_LARGE:
        return 413;
    case H1_E_VERSION:
        return 505;
    default:
        return 400;
    }
}

const char *h1_strerror(int rc)
{
    switch (rc) {
    case H1_OK:
        return "ok";
    case H1_NEED_MORE:
        return "need more";
    case H1_E_REQLINE:
        return "malformed request line";
    case H1_E_METHOD:
        return "invalid method";
    case H1_E_TARGET:
        return "invalid request target";
    case H1_E_VERSION:
        return "unsupported HTTP version";
    case H1_E_BARE_LF:
        return "bare LF";
    case H1_E_BARE_CR:
        return "bare CR";
    case H1_E_OBS_FOLD:
        return "obsolete line folding";
    case H1_E_WS_BEFORE_COLON:
        return "whitespace before colon";
    case H1_E_HDR_NAME:
        return "invalid header name";
    case H1_E_HDR_VALUE:
        return "invalid header value";
    case H1_E_TOO_MANY_HEADERS:
        return "too many header fields";
    case H1_E_HEAD_TOO_LARGE:
        return "header section too large";
    case H1_E_CL_TE:
        return "Content-Length with Transfer-Encoding";
    case H1_E_DUP_CL:
        return "repeated Content-Length";
    case H1_E_BAD_CL:
        return "invalid Content-Length";
    case H1_E_BAD_TE:
        return "unsupported Transfer-Encoding";
    case H1_E_NO_HOST:
        return "missing Host";
    case H1_E_DUP_HOST:
        return "repeated Host";
    case H1_E_STATUS:
        return "invalid status line";
    case H1_E_CHUNK_SIZE:
        return "invalid chunk size";
    case H1_E_CHUNK_CRLF:
        return "invalid chunk line end";
    case H1_E_CHUNK_EXT:
        return "invalid chunk extension";
    case H1_E_TRAILER:
        return "invalid trailer section";
    case H1_E_TOO_LARGE:
        return "body too large";
    case H1_E_TRUNCATED:
        return "truncated body";
    case H1_E_PATH:
        return "unsafe path";
    default:
        return "unknown error";
    }
}
