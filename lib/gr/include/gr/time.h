/*
 * gr/time.h - the library clock and RFC 3339 times.
 *
 * Every service reads time through gr_time_now_ms() so that test builds can move the clock
 * (POST /_test/clock, SERVICES decision 13) instead of sleeping. Times are formatted in UTC
 * with millisecond precision ("2026-11-24T21:42:49.123Z"), so text order is time order.
 */
#ifndef GR_TIME_H
#define GR_TIME_H

#include <stdint.h>

#include "gr/status.h"

#define GR_TIME_STR_LEN 25 /* "YYYY-MM-DDTHH:MM:SS.mmmZ" + NUL */

/** Milliseconds since the Unix epoch, plus the test offset. Thread-safe. */
int64_t gr_time_now_ms(void);
/** Seconds since the epoch (gr_time_now_ms() / 1000). */
int64_t gr_time_now_s(void);
/** Monotonic milliseconds for durations and timeouts (never moved by the test clock). */
int64_t gr_time_mono_ms(void);
/** Monotonic nanoseconds. */
int64_t gr_time_mono_ns(void);
/** Moves the library clock by setting its offset from the real clock (test builds only). */
void gr_time_set_offset_ms(int64_t offset);
int64_t gr_time_get_offset_ms(void);

/** Formats @ms as RFC 3339 UTC with milliseconds into @out (GR_TIME_STR_LEN bytes). */
void gr_time_format(int64_t ms, char out[GR_TIME_STR_LEN]);
/**
 * Parses a strict RFC 3339 date-time ("2026-11-24T21:42:49Z", fractions up to 9 digits,
 * "Z" or "+hh:mm"/"-hh:mm" offsets) into milliseconds. GR_EINVAL on anything else,
 * including impossible dates (Feb 30) and trailing bytes.
 */
GR_MUST_CHECK int gr_time_parse(const char *s, int64_t *ms);

#endif
