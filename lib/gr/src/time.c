/*
 * time.c - the library clock and strict RFC 3339 formatting and parsing.
 *
 * The wall clock is CLOCK_REALTIME plus a process-wide offset (an atomic, so any thread can
 * read it while a test moves it through POST /_test/clock). Calendar math uses Howard
 * Hinnant's days-from-civil algorithms instead of timegm/gmtime_r, so it is pure, thread-safe
 * and independent of the TZ environment. The parser accepts exactly RFC 3339 §5.6 date-time
 * with upper-case 'T' and 'Z', 1-9 fraction digits (truncated to milliseconds), and
 * "+hh:mm"/"-hh:mm" offsets; it rejects impossible dates, hour 24, leap second 60 (which a
 * millisecond count cannot represent) and trailing bytes.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include "gr/time.h"

#define MS_PER_DAY INT64_C(86400000)
/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, the range four digits can show. */
#define MIN_MS INT64_C(-62167219200000)
#define MAX_MS INT64_C(253402300799999)

/* Process-wide by contract (gr/time.h: the library clock). */
static _Atomic int64_t g_offset_ms;

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

int64_t gr_time_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 +
           atomic_load_explicit(&g_offset_ms, memory_order_relaxed);
}

int64_t gr_time_now_s(void)
{
    return gr_time_now_ms() / 1000;
}

int64_t gr_time_mono_ms(void)
{
    return clock_ns(CLOCK_MONOTONIC) / 1000000;
}

int64_t gr_time_mono_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

void gr_time_set_offset_ms(int64_t offset)
{
    atomic_store_explicit(&g_offset_ms, offset, memory_order_relaxed);
}

int64_t gr_time_get_offset_ms(void)
{
    return atomic_load_explicit(&g_offset_ms, memory_order_relaxed);
}

/* Days since 1970-01-01 of the proleptic Gregorian date @y-@m-@d. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t era;
    unsigned doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned char days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Writes @v as exactly @n decimal digits at @p (0 ≤ @v < 10^@n). */
static char *put_digits(char *p, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

void gr_time_format(int64_t ms, char out[GR_TIME_STR_LEN])
{
    int64_t days, y;
    unsigned m, d, rem;
    char *p = out;

    if (ms < MIN_MS)
        ms = MIN_MS;
    if (ms > MAX_MS)
        ms = MAX_MS;
    days = ms / MS_PER_DAY;
    if (ms % MS_PER_DAY < 0)
        days--;
    rem = (unsigned)(ms - days * MS_PER_DAY);
    civil_from_days(days, &y, &m, &d);
    p = put_digits(p, (unsigned)y, 4);
    *p++ = '-';
    p = put_digits(p, m, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, rem / 3600000, 2);
    *p++ = ':';
    p = put_digits(p, rem / 60000 % 60, 2);
    *p++ = ':';
    p = put_digits(p, rem / 1000 % 60, 2);
    *p++ = '.';
    p = put_digits(p, rem % 1000, 3);
    *p++ = 'Z';
    *p = '\0';
}

/* Reads exactly @n decimal digits at *@p into *@v and advances *@p. */
static bool digits(const char **p, int n, int *v)
{
    int r = 0;

    for (int i = 0; i < n; i++) {
        char c = (*p)[i];

        if (c < '0' || c > '9')
            return false;
        r = r * 10 + (c - '0');
    }
    *p += n;
    *v = r;
    return true;
}

static bool expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

/* Parses the fraction after '.': 1-9 digits, truncated to milliseconds. */
static bool fraction(const char **p, int *frac_ms)
{
    int n = 0, v = 0;

    while ((*p)[n] >= '0' && (*p)[n] <= '9') {
        if (n < 3)
            v = v * 10 + ((*p)[n] - '0');
        n++;
    }
    if (n < 1 || n > 9)
        return false;
    for (int i = n; i < 3; i++)
        v *= 10;
    *p += n;
    *frac_ms = v;
    return true;
}

/* Parses "Z" or "+hh:mm"/"-hh:mm" into minutes east of UTC. */
static bool zone(const char **p, int *minutes)
{
    int sign, hh, mm;

    if (expect(p, 'Z')) {
        *minutes = 0;
        return true;
    }
    if (**p == '+')
        sign = 1;
    else if (**p == '-')
        sign = -1;
    else
        return false;
    (*p)++;
    if (!digits(p, 2, &hh) || !expect(p, ':') || !digits(p, 2, &mm) || hh > 23 || mm > 59)
        return false;
    *minutes = sign * (hh * 60 + mm);
    return true;
}

int gr_time_parse(const char *s, int64_t *ms)
{
    const char *p = s;
    int y, mo, d, h, mi, sec, frac = 0, off = 0;
    int64_t days;

    if (!s)
        return GR_EINVAL;
    if (!digits(&p, 4, &y) || !expect(&p, '-') || !digits(&p, 2, &mo) || !expect(&p, '-') ||
        !digits(&p, 2, &d) || !expect(&p, 'T') || !digits(&p, 2, &h) || !expect(&p, ':') ||
        !digits(&p, 2, &mi) || !expect(&p, ':') || !digits(&p, 2, &sec))
        return GR_EINVAL;
    if (*p == '.') {
        p++;
        if (!fraction(&p, &frac))
            return GR_EINVAL;
    }
    if (!zone(&p, &off) || *p != '\0')
        return GR_EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || (unsigned)d > days_in_month(y, (unsigned)mo) || h > 23 ||
        mi > 59 || sec > 59)
        return GR_EINVAL;
    days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms = days * MS_PER_DAY + (int64_t)h * 3600000 + (int64_t)mi * 60000 + (int64_t)sec * 1000 +
          frac - (int64_t)off * 60000;
    return 0;
}
