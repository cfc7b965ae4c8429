/*
 * arena.c - the request region allocator (nginx pools, h2o mem pools) and the process-wide
 * allocation wrappers that abort on failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gr/arena.h"

#define CHUNK_SIZE 8192
#define ALIGN      16

struct gr_arena_chunk {
    struct gr_arena_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

struct gr_arena_cleanup {
    struct gr_arena_cleanup *next;
    void (*fn)(void *);
    void *arg;
};

void gr__bug(const char *file, int line, const char *msg)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"bug: %s\",\"file\":\"%s\",\"line\":%d}\n", msg,
            file, line);
    fflush(stderr);
    abort();
}

void *gr_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p)
        GR_BUG("out of memory");
    return p;
}

void *gr_xcalloc(size_t nmemb, size_t n)
{
    void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);

    if (!p)
        GR_BUG("out of memory");
    return p;
}

void *gr_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q)
        GR_BUG("out of memory");
    return q;
}

char *gr_xstrdup(const char *s)
{
    return gr_xstrndup(s, strlen(s));
}

char *gr_xstrndup(const char *s, size_t n)
{
    char *p = gr_xmalloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void gr_free(void *p)
{
    free(p);
}

void gr_arena_init(struct gr_arena *a)
{
    memset(a, 0, sizeof(*a));
}

void gr_arena_release(struct gr_arena *a)
{
    struct gr_arena_cleanup *c = a->cleanups;
    struct gr_arena_chunk *ch, *next;
    size_t max = a->max;

    /* Cleanups live in the chunks, so run them all before freeing any chunk. */
    while (c) {
        c->fn(c->arg);
        c = c->next;
    }
    for (ch = a->head; ch; ch = next) {
        next = ch->next;
        free(ch);
    }
    gr_arena_init(a);
    a->max = max;
}

void *gr_arena_alloc(struct gr_arena *a, size_t n)
{
    struct gr_arena_chunk *ch = a->head;
    size_t need = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    void *p;

    if (need < n)
        GR_BUG("arena allocation overflow");
    if (a->max && a->used_total + need > a->max)
        GR_BUG("arena limit exceeded");
    if (!ch || ch->size - ch->used < need) {
        size_t size = need > CHUNK_SIZE / 2 ? need : CHUNK_SIZE;

        ch = gr_xmalloc(sizeof(*ch) + size);
        ch->size = size;
        ch->used = 0;
        if (need > CHUNK_SIZE / 2 && a->head) {
            /* Big block: keep the current chunk as head so its free space stays usable. */
            ch->next = a->head->next;
            a->head->next = ch;
        } else {
            ch->next = a->head;
            a->head = ch;
        }
    }
    p = ch->data + ch->used;
    ch->used += need;
    a->used_total += need;
    return p;
}

void *gr_arena_calloc(struct gr_arena *a, size_t n)
{
    void *p = gr_arena_alloc(a, n);

    memset(p, 0, n);
    return p;
}

char *gr_arena_strndup(struct gr_arena *a, const char *s, size_t n)
{
    char *p = gr_arena_alloc(a, n + 1);

    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *gr_arena_strdup(struct gr_arena *a, const char *s)
{
    return s ? gr_arena_strndup(a, s, strlen(s)) : NULL;
}

char *gr_arena_vprintf(struct gr_arena *a, const char *fmt, va_list ap)
{
    va_list cp;
    int n;
    char *p;

    va_copy(cp, ap);
    n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0)
        GR_BUG("bad format");
    p = gr_arena_alloc(a, (size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *gr_arena_printf(struct gr_arena *a, const char *fmt, ...)
{
    va_list ap;
    char *p;

    va_start(ap, fmt);
    p = gr_arena_vprintf(a, fmt, ap);
    va_end(ap);
    return p;
}

void gr_arena_defer(struct gr_arena *a, void (*fn)(void *), void *arg)
{
    struct gr_arena_cleanup *c = gr_arena_alloc(a, sizeof(*c));

    c->fn = fn;
    c->arg = arg;
    c->next = a->cleanups;
    a->cleanups = c;
}
