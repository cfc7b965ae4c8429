/*
 * status.c - the single table from GR_E* codes to HTTP statuses and problem slugs (STYLE R10),
 * and the bounded field-error list that handlers and the JSON readers fill.
 */
#include <stdio.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/status.h"

struct errinfo {
    int code;
    int http;
    const char *slug;
    const char *title;
};

static const struct errinfo errtab[] = {
#define E(name, val, http, slug, title) { (val), (http), (slug), (title) },
    GR_ERRNO_MAP(E)
#undef E
};

static const struct errinfo *lookup(int code)
{
    for (size_t i = 0; i < sizeof(errtab) / sizeof(errtab[0]); i++) {
        if (errtab[i].code == code)
            return &errtab[i];
    }
    return NULL;
}

const char *gr_strerror(int code)
{
    const struct errinfo *e;

    if (code == 0)
        return "Success";
    e = lookup(code);
    return e ? e->title : "Unknown error";
}

const char *gr_err_name(int code)
{
    const struct errinfo *e;

    if (code == 0)
        return "ok";
    e = lookup(code);
    return e ? e->slug : "internal_error";
}

int gr_err_http_status(int code)
{
    const struct errinfo *e;

    if (code >= 0)
        return 200;
    e = lookup(code);
    return e ? e->http : 500;
}

int gr_err_from_http_status(int status)
{
    for (size_t i = 0; i < sizeof(errtab) / sizeof(errtab[0]); i++) {
        if (errtab[i].http == status)
            return errtab[i].code;
    }
    return GR_EINTERNAL;
}

void gr_errs_add(struct gr_errs *e, struct gr_arena *a, const char *field, const char *fmt, ...)
{
    va_list ap;

    if (e->n >= GR_ERRS_MAX) {
        e->dropped++;
        return;
    }
    va_start(ap, fmt);
    e->items[e->n].message = gr_arena_vprintf(a, fmt, ap);
    va_end(ap);
    e->items[e->n].field = gr_arena_strdup(a, field ? field : "");
    e->n++;
}

void gr_errs_addk(struct gr_errs *e, struct gr_arena *a, const char *prefix, const char *key,
                  const char *fmt, ...)
{
    va_list ap;
    size_t plen = prefix ? strlen(prefix) : 0, klen = strlen(key), j = 0;
    char *ptr;

    if (e->n >= GR_ERRS_MAX) {
        e->dropped++;
        return;
    }
    ptr = gr_arena_alloc(a, plen + 1 + 2 * klen + 1);
    if (plen)
        memcpy(ptr, prefix, plen);
    j = plen;
    ptr[j++] = '/';
    for (size_t i = 0; i < klen; i++) {
        if (key[i] == '~') {
            ptr[j++] = '~';
            ptr[j++] = '0';
        } else if (key[i] == '/') {
            ptr[j++] = '~';
            ptr[j++] = '1';
        } else {
            ptr[j++] = key[i];
        }
    }
    ptr[j] = '\0';
    va_start(ap, fmt);
    e->items[e->n].message = gr_arena_vprintf(a, fmt, ap);
    va_end(ap);
    e->items[e->n].field = ptr;
    e->n++;
}
