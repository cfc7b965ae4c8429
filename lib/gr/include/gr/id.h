/*
 * gr/id.h - UUIDv7 identifiers (RFC 9562), strictly increasing within a process.
 */
#ifndef GR_ID_H
#define GR_ID_H

#include <stdbool.h>
#include <stddef.h>

#define GR_ID_LEN 37 /* 36 chars + NUL */

/**
 * Writes a new lowercase canonical UUIDv7 into @out. Ids from one process compare strictly
 * greater (as strings and as bytes) than every id it made before, also within one
 * millisecond and across threads (RFC 9562 §6.2 method 3: a counter in rand_a/rand_b,
 * seeded randomly each millisecond). Thread-safe. The timestamp is the real clock, not the
 * test clock of gr/time.h, so moving that clock back cannot stall id generation.
 */
void gr_id_new(char out[GR_ID_LEN]);
/** True when @s (length @n) is a canonical lowercase UUID (any version). */
bool gr_id_valid(const char *s, size_t n);

#endif
