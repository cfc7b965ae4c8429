/*
 * gr/arena.h - region allocator owning everything a request allocates (STYLE R13, R14).
 *
 * Memory comes from chunks and is released all at once by gr_arena_release(). Non-memory
 * resources (DB connections, jansson values) register a cleanup with gr_arena_defer(); cleanups
 * run in reverse order of registration before the memory is freed. Allocation failure aborts
 * (STYLE R11), so callers never check for NULL.
 */
#ifndef GR_ARENA_H
#define GR_ARENA_H

#include <stdarg.h>
#include <stddef.h>

#include "gr/status.h"

struct gr_arena_chunk;
struct gr_arena_cleanup;

struct gr_arena {
    struct gr_arena_chunk *head;
    struct gr_arena_cleanup *cleanups;
    size_t used_total; /* bytes handed out, for limits and tests */
    size_t max;        /* 0 = unlimited; above it allocation aborts the request via GR_BUG */
};

#define GR_ARENA_INIT                                                                              \
    {                                                                                              \
        0                                                                                          \
    }

void gr_arena_init(struct gr_arena *a);
/** Runs the cleanups, frees every chunk, leaves @a initialised and empty. */
void gr_arena_release(struct gr_arena *a);

/** @n bytes, 16-aligned, uninitialised. Never NULL. */
void *gr_arena_alloc(struct gr_arena *a, size_t n);
/** @n zeroed bytes. */
void *gr_arena_calloc(struct gr_arena *a, size_t n);
/** Copy of the NUL-terminated @s (NULL gives NULL). */
char *gr_arena_strdup(struct gr_arena *a, const char *s);
/** Copy of @n bytes of @s, NUL-terminated. */
char *gr_arena_strndup(struct gr_arena *a, const char *s, size_t n);
/** printf into the arena. */
char *gr_arena_printf(struct gr_arena *a, const char *fmt, ...) GR_PRINTF(2, 3);
char *gr_arena_vprintf(struct gr_arena *a, const char *fmt, va_list ap) GR_PRINTF(2, 0);

/** Registers @fn(@arg) to run when the arena is released (LIFO). */
void gr_arena_defer(struct gr_arena *a, void (*fn)(void *), void *arg);

/* ---- process allocator: aborts on failure (STYLE R11) ------------------------------------- */
void *gr_xmalloc(size_t n);
void *gr_xcalloc(size_t nmemb, size_t n);
void *gr_xrealloc(void *p, size_t n);
char *gr_xstrdup(const char *s);
char *gr_xstrndup(const char *s, size_t n);
void gr_free(void *p);

/** Aborts with file and line (STYLE R11). */
#define GR_BUG(msg) gr__bug(__FILE__, __LINE__, (msg))
#define GR_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            gr__bug(__FILE__, __LINE__, "assertion failed: " #cond);                               \
    } while (0)
__attribute__((noreturn)) void gr__bug(const char *file, int line, const char *msg);

#endif
