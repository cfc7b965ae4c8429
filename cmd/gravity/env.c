/*
 * env.c - where gravity looks for things: the directory of the service binaries, the data
 * directory and the port offset, all read once from the environment, plus the small helpers
 * (formatted strings, mkdir -p, clocks and RFC 3339 times) the commands share.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gravity.h"

char *gravity_strf(const char *fmt, ...)
{
    struct gr_buf b = GR_BUF_INIT;
    va_list ap;
    int rc;

    gr_buf_init(&b, PATH_MAX * 4);
    va_start(ap, fmt);
    rc = gr_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (rc < 0)
        GR_BUG("gravity_strf: string over its limit");
    return gr_buf_detach(&b, NULL);
}

int gravity_mkdirs(const char *path)
{
    char *p = gr_xstrdup(path);
    int rc = 0;

    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) {
            rc = GR_EIO;
            goto out;
        }
        *s = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        rc = GR_EIO;
out:
    gr_free(p);
    return rc;
}

int64_t gravity_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void gravity_fmt_time(time_t t, char *out, size_t n)
{
    struct tm tm;

    gmtime_r(&t, &tm);
    if (strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0 && n > 0)
        out[0] = '\0';
}

time_t gravity_parse_time(const char *s)
{
    struct tm tm;
    const char *end;

    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!end || *end != '\0')
        return -1;
    return timegm(&tm);
}

static char *self_dir(void)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    char *slash;

    if (n <= 0)
        return gr_xstrdup(".");
    buf[n] = '\0';
    slash = strrchr(buf, '/');
    if (!slash)
        return gr_xstrdup(".");
    if (slash == buf)
        return gr_xstrdup("/");
    return gr_xstrndup(buf, (size_t)(slash - buf));
}

/* Absolute form of @path: realpath when it exists, else cwd + path. Caller frees. */
static char *absolute(const char *path)
{
    char buf[PATH_MAX];
    char cwd[PATH_MAX];

    if (realpath(path, buf))
        return gr_xstrdup(buf);
    if (path[0] == '/' || !getcwd(cwd, sizeof(cwd)))
        return gr_xstrdup(path);
    while (path[0] == '.' && path[1] == '/')
        path += 2;
    return gravity_strf("%s/%s", cwd, path);
}

/* Reads the integer variable @name into *@out when it is set; GR_ECONFIG when malformed. */
static int env_int(const char *name, long min, long max, int *out)
{
    const char *s = getenv(name);
    char *end = NULL;
    long v;

    if (!s || !*s)
        return 0;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "gravity: invalid %s '%s' (an integer from %ld to %ld expected)\n", name, s,
                min, max);
        return GR_ECONFIG;
    }
    *out = (int)v;
    return 0;
}

int gravity_env_load(struct gravity_env *env)
{
    const char *bin = getenv("GRAVITY_BIN_DIR");
    const char *data = getenv("GRAVITY_DATA");
    int ready_s = 30;

    memset(env, 0, sizeof(*env));
    if (env_int("GRAVITY_PORT_OFFSET", -65535, 65535, &env->port_offset) < 0 ||
        env_int("GRAVITY_READY_TIMEOUT", 1, 3600, &ready_s) < 0)
        return GR_ECONFIG;
    env->ready_ms = ready_s * 1000;
    env->bin_dir = bin && *bin ? absolute(bin) : self_dir();
    env->data_dir = absolute(data && *data ? data : "./data");
    return 0;
}

void gravity_env_release(struct gravity_env *env)
{
    gr_free(env->bin_dir);
    gr_free(env->data_dir);
    memset(env, 0, sizeof(*env));
}
