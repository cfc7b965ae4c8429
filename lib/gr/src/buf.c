/*
 * buf.c - growable bounded byte buffers (git strbuf, curl dynbuf with its `toobig` limit).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gr/buf.h"

static char empty[1];

void gr_buf_init(struct gr_buf *b, size_t max)
{
    b->ptr = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void gr_buf_release(struct gr_buf *b)
{
    gr_free(b->ptr);
    gr_buf_init(b, b->max);
}

void gr_buf_reset(struct gr_buf *b)
{
    b->len = 0;
    if (b->ptr)
        b->ptr[0] = '\0';
}

static int grow(struct gr_buf *b, size_t extra)
{
    size_t max = b->max ? b->max : GR_BUF_DEFAULT_MAX, need, cap;

    if (extra > max || b->len > max - extra)
        return GR_ETOOBIG;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->ptr = gr_xrealloc(b->ptr, cap);
    b->cap = cap;
    return 0;
}

int gr_buf_append(struct gr_buf *b, const void *p, size_t n)
{
    int rc = grow(b, n);

    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->ptr + b->len, p, n);
    b->len += n;
    b->ptr[b->len] = '\0';
    return 0;
}

int gr_buf_puts(struct gr_buf *b, const char *s)
{
    return gr_buf_append(b, s, strlen(s));
}

int gr_buf_putc(struct gr_buf *b, char c)
{
    return gr_buf_append(b, &c, 1);
}

int gr_buf_vprintf(struct gr_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    int n, rc;

    va_copy(cp, ap);
    n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0)
        return GR_EINVAL;
    rc = grow(b, (size_t)n);
    if (rc < 0)
        return rc;
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int gr_buf_printf(struct gr_buf *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = gr_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int gr_buf_json_str(struct gr_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = gr_buf_putc(b, '"');

    for (size_t i = 0; rc == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };
            rc = gr_buf_append(b, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            rc = gr_buf_append(b, esc, 6);
        } else {
            rc = gr_buf_putc(b, (char)c);
        }
    }
    if (rc == 0)
        rc = gr_buf_putc(b, '"');
    return rc;
}

char *gr_buf_detach(struct gr_buf *b, size_t *len)
{
    char *p = b->ptr;

    if (!p)
        p = gr_xcalloc(1, 1);
    if (len)
        *len = b->len;
    gr_buf_init(b, b->max);
    return p;
}

const char *gr_buf_cstr(const struct gr_buf *b)
{
    return b->ptr ? b->ptr : empty;
}

/* ---- base64url (JWTs, cursors) ---------------------------------------------------------- */

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int gr_b64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen)
{
    unsigned acc = 0, bits = 0;
    size_t i, o = 0;
    int v;

    if (n % 4 == 1)
        return GR_EINVAL;
    for (i = 0; i < n; i++) {
        v = b64url_val((unsigned char)in[i]);
        if (v < 0)
            return GR_EINVAL;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero, so every byte string has exactly one encoding. */
    if (acc != 0)
        return GR_EINVAL;
    *outlen = o;
    return 0;
}

int gr_b64url_encode(struct gr_buf *b, const void *data, size_t n)
{
    const unsigned char *p = data;
    char quad[4];
    size_t i;
    unsigned v;
    int rc = 0;

    for (i = 0; i + 3 <= n && rc == 0; i += 3) {
        v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        quad[0] = b64url_chars[v >> 18];
        quad[1] = b64url_chars[(v >> 12) & 63];
        quad[2] = b64url_chars[(v >> 6) & 63];
        quad[3] = b64url_chars[v & 63];
        rc = gr_buf_append(b, quad, 4);
    }
    if (rc == 0 && n - i == 1) {
        v = (unsigned)p[i] << 16;
        quad[0] = b64url_chars[v >> 18];
        quad[1] = b64url_chars[(v >> 12) & 63];
        rc = gr_buf_append(b, quad, 2);
    } else if (rc == 0 && n - i == 2) {
        v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        quad[0] = b64url_chars[v >> 18];
        quad[1] = b64url_chars[(v >> 12) & 63];
        quad[2] = b64url_chars[(v >> 6) & 63];
        rc = gr_buf_append(b, quad, 3);
    }
    return rc;
}

int gr_buf_read_file(struct gr_buf *b, const char *path)
{
    char chunk[8192];
    struct stat st;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = GR_EIO;

    if (fd < 0)
        return GR_EIO;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        goto out;
    for (;;) {
        n = read(fd, chunk, sizeof(chunk));
        if (n < 0) {
            rc = GR_EIO;
            goto out;
        }
        if (n == 0)
            break;
        rc = gr_buf_append(b, chunk, (size_t)n);
        if (rc < 0)
            goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}
