/*
 * user_valid.c - the validators of the profile and address fields that are more than a
 * length: IANA time zones (looked up in the system's zoneinfo directory, never outside it),
 * BCP 47 locales (the common shape, in canonical casing) and ISO 3166-1 alpha-2 countries.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "user.h"

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * The name alone: 1..USER_TZ_MAX characters, segments separated by single '/', each made of
 * [A-Za-z0-9_+-] and starting with a letter or digit. No '.', so no "." or ".." segment and no
 * file name with an extension (zone.tab, tzdata.zi); no leading '/', so never an absolute path.
 */
static bool tz_name_ok(const char *name)
{
    size_t n = strlen(name);
    bool seg_start = true;

    if (n == 0 || n > USER_TZ_MAX)
        return false;
    if (strncmp(name, "posix/", 6) == 0 || strncmp(name, "right/", 6) == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (c == '/') {
            if (seg_start)
                return false;
            seg_start = true;
            continue;
        }
        if (seg_start && !is_alpha(c) && !is_digit(c))
            return false;
        if (!is_alpha(c) && !is_digit(c) && c != '_' && c != '+' && c != '-')
            return false;
        seg_start = false;
    }
    return !seg_start;
}

bool user_tz_valid(const char *dir, const char *name)
{
    char path[PATH_MAX];
    char magic[4];
    struct stat st;
    int fd, n;
    bool ok;

    if (!tz_name_ok(name))
        return false;
    n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return false;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return false;
    /* A zone is a regular TZif file (RFC 8536); directories and tables are not zones. */
    ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && read(fd, magic, 4) == 4 &&
         memcmp(magic, "TZif", 4) == 0;
    close(fd);
    return ok;
}

/* Lengths and kinds of one subtag: letters only, digits only, or both. */
static bool all_alpha(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]))
            return false;
    return true;
}

static bool all_digit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return true;
}

static bool all_alnum(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]))
            return false;
    return true;
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static char upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

bool user_locale_canon(struct gr_arena *a, const char *tag, const char **out)
{
    size_t n = strlen(tag);
    char *canon;
    int stage = 0; /* 0 language, 1 script allowed, 2 region allowed, 3 variants only */
    size_t i = 0;

    if (n < 2 || n > USER_LOCALE_MAX)
        return false;
    canon = gr_arena_strdup(a, tag);
    while (i < n) {
        size_t len = strcspn(canon + i, "-");
        char *s = canon + i;

        if (len == 0)
            return false;
        if (stage == 0) {
            if (len < 2 || len > 3 || !all_alpha(s, len))
                return false;
            for (size_t k = 0; k < len; k++)
                s[k] = lower(s[k]);
            stage = 1;
        } else if (stage <= 1 && len == 4 && all_alpha(s, len)) {
            s[0] = upper(s[0]);
            for (size_t k = 1; k < len; k++)
                s[k] = lower(s[k]);
            stage = 2;
        } else if (stage <= 2 &&
                   ((len == 2 && all_alpha(s, len)) || (len == 3 && all_digit(s, len)))) {
            for (size_t k = 0; k < len; k++)
                s[k] = upper(s[k]);
            stage = 3;
        } else if (((len >= 5 && len <= 8) || (len == 4 && is_digit(s[0]))) && all_alnum(s, len)) {
            for (size_t k = 0; k < len; k++)
                s[k] = lower(s[k]);
            stage = 3;
        } else {
            return false;
        }
        i += len;
        if (i < n) {
            i++; /* the '-' */
            if (i == n)
                return false; /* a trailing '-' */
        }
    }
    *out = canon;
    return true;
}

/* ISO 3166-1 alpha-2, the 249 officially assigned codes, in order. */
static const char countries[] =
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ "
    "BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM "
    "DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS "
    "GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN "
    "KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ "
    "MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM "
    "PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV "
    "SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI "
    "VN VU WF WS YE YT ZA ZM ZW";

bool user_country_valid(const char *code)
{
    if (strlen(code) != 2 || code[0] < 'A' || code[0] > 'Z' || code[1] < 'A' || code[1] > 'Z')
        return false;
    for (size_t i = 0; i + 1 < sizeof(countries); i += 3)
        if (countries[i] == code[0] && countries[i + 1] == code[1])
            return true;
    return false;
}
