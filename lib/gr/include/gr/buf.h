/*
 * gr/buf.h - strings: the borrowed view struct gr_str {ptr, len} and the growable, bounded
 * struct gr_buf (git strbuf, curl dynbuf). A gr_buf never grows past its `max` (0 means the
 * default GR_BUF_DEFAULT_MAX); appends past it fail with GR_ETOOBIG and leave it unchanged.
 * Appends are not GR_MUST_CHECK: callers that build bounded output may ignore the result and
 * check the final length or a later append instead.
 */
#ifndef GR_BUF_H
#define GR_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "gr/status.h"

struct gr_str {
    const char *ptr; /* borrowed, not necessarily NUL-terminated */
    size_t len;
};

#define GR_STR(lit) ((struct gr_str){ (lit), sizeof(lit) - 1 })
#define GR_STR_NULL ((struct gr_str){ NULL, 0 })

static inline struct gr_str gr_str_c(const char *s)
{
    struct gr_str r = { s, s ? strlen(s) : 0 };
    return r;
}
static inline bool gr_str_eq(struct gr_str a, struct gr_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}
static inline bool gr_str_eqc(struct gr_str a, const char *c)
{
    return gr_str_eq(a, gr_str_c(c));
}

#define GR_BUF_DEFAULT_MAX ((size_t)64 << 20)

struct gr_buf {
    char *ptr; /* always NUL-terminated when cap > 0; owned (gr_xmalloc) */
    size_t len;
    size_t cap;
    size_t max; /* 0 = GR_BUF_DEFAULT_MAX */
};

#define GR_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0, 0                                                                              \
    }

void gr_buf_init(struct gr_buf *b, size_t max);
/** Frees the contents; @b can be reused after gr_buf_init. */
void gr_buf_release(struct gr_buf *b);
/** Empties without freeing. */
void gr_buf_reset(struct gr_buf *b);
int gr_buf_append(struct gr_buf *b, const void *p, size_t n);
int gr_buf_puts(struct gr_buf *b, const char *s);
int gr_buf_putc(struct gr_buf *b, char c);
int gr_buf_printf(struct gr_buf *b, const char *fmt, ...) GR_PRINTF(2, 3);
int gr_buf_vprintf(struct gr_buf *b, const char *fmt, va_list ap) GR_PRINTF(2, 0);
/** Appends @s as a JSON string literal with quotes (valid UTF-8 assumed). */
int gr_buf_json_str(struct gr_buf *b, const char *s, size_t n);
/**
 * Appends the unpadded base64url (RFC 4648 §5) text of @n bytes at @p. GR_ETOOBIG past the
 * buffer's limit.
 */
int gr_b64url_encode(struct gr_buf *b, const void *p, size_t n);
/**
 * Decodes @n characters of canonical unpadded base64url into @out (room for n * 3 / 4 bytes)
 * and sets *@outlen. GR_EINVAL on padding or any other character, an impossible length
 * (n % 4 == 1) or non-zero unused low bits, so every byte string has exactly one text form.
 */
GR_MUST_CHECK int gr_b64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen);
/**
 * Appends the contents of the regular file @path. GR_EIO when it cannot be opened, is not a
 * regular file or a read fails; GR_ETOOBIG past the buffer's limit (the file is not read
 * further). On error @b may hold a prefix of the file.
 */
int gr_buf_read_file(struct gr_buf *b, const char *path);
/** Hands the contents to the caller (caller frees with gr_free) and re-inits @b. */
char *gr_buf_detach(struct gr_buf *b, size_t *len);
/** A borrowed view of the current contents (empty string when nothing was appended). */
const char *gr_buf_cstr(const struct gr_buf *b);

#endif
