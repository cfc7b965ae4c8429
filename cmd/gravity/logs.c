/*
 * logs.c - `gravity logs SERVICE [-n N] [--no-follow]`: prints the last N lines of the
 * service's <data>/logs/<id>.log and then follows it like `tail -F` (the file is polled every
 * 250 ms; truncation and replacement are noticed) until SIGINT or SIGTERM. SERVICE is matched
 * against the service binaries and, for services whose binary is gone, the log files.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gravity.h"

#define FOLLOW_POLL_MS 250
#define CHUNK          65536
#define MAX_LINES      1000000

static int write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return GR_EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Copies [@from, @to) of @fd to stdout. */
static int copy_range(int fd, off_t from, off_t to)
{
    char *buf = gr_xmalloc(CHUNK);
    int rc = 0;

    while (from < to) {
        size_t want = (size_t)(to - from) < CHUNK ? (size_t)(to - from) : CHUNK;
        ssize_t n = pread(fd, buf, want, from);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        rc = write_all(buf, (size_t)n);
        if (rc < 0)
            break;
        from += n;
    }
    gr_free(buf);
    return rc;
}

/* The offset where the last @lines lines of the first @size bytes of @fd begin. */
static off_t tail_start(int fd, off_t size, long lines)
{
    char *buf = gr_xmalloc(CHUNK);
    off_t end = size, start = size;
    long seen = 0;

    if (lines <= 0)
        goto out;
    start = 0;
    while (end > 0) {
        off_t from = end > CHUNK ? end - CHUNK : 0;
        ssize_t n = pread(fd, buf, (size_t)(end - from), from);

        if (n <= 0)
            break;
        for (ssize_t i = n - 1; i >= 0; i--) {
            /* The newline that ends the file ends the last line; it starts none. */
            if (buf[i] != '\n' || from + i == size - 1)
                continue;
            if (++seen == lines) {
                start = from + i + 1;
                goto out;
            }
        }
        end = from;
    }
out:
    gr_free(buf);
    return start;
}

/* A list of services made from the log files, for services whose binary is gone. */
static void scan_logs(const struct gravity_env *env, struct gravity_svcs *out)
{
    char *dir = gravity_strf("%s/logs", env->data_dir);
    DIR *d = opendir(dir);
    struct dirent *de;

    out->v = gr_xcalloc(GRAVITY_MAX_SERVICES, sizeof(*out->v));
    out->n = 0;
    while (d && (de = readdir(d)) != NULL && out->n < GRAVITY_MAX_SERVICES) {
        size_t len = strlen(de->d_name);
        struct gravity_svc *s;

        if (len < 8 || strcmp(de->d_name + len - 4, ".log") != 0 || de->d_name[2] != '-' ||
            de->d_name[0] < '0' || de->d_name[0] > '9' || de->d_name[1] < '0' ||
            de->d_name[1] > '9')
            continue;
        s = &out->v[out->n++];
        s->id = gr_xstrndup(de->d_name, len - 4);
        s->name = gr_xstrdup(s->id + 3);
        s->version = gr_xstrdup("");
        s->path = gr_xstrdup("");
        s->number = (de->d_name[0] - '0') * 10 + (de->d_name[1] - '0');
    }
    if (d)
        closedir(d);
    gr_free(dir);
}

/* The log path of the service called @key, or NULL (caller frees). */
static char *find_log(const struct gravity_env *env, const char *key)
{
    struct gravity_svcs bins = { NULL, 0 }, logs = { NULL, 0 };
    struct gravity_svc *v = NULL;
    char *path = NULL;

    if (gravity_svcs_scan(env, &bins) == 0)
        v = gravity_svcs_find(&bins, key);
    if (!v) {
        scan_logs(env, &logs);
        v = gravity_svcs_find(&logs, key);
    }
    if (v)
        path = gravity_svc_log_path(env, v);
    gravity_svcs_release(&bins);
    gravity_svcs_release(&logs);
    return path;
}

/* Follows @path from @pos until a signal arrives on @sfd. */
static int follow(const char *path, int fd, off_t pos, int sfd)
{
    struct stat cur, now;
    int rc = 0;

    if (fd >= 0 && fstat(fd, &cur) < 0)
        memset(&cur, 0, sizeof(cur));
    for (;;) {
        struct pollfd pfd = { .fd = sfd, .events = POLLIN };

        if (poll(&pfd, 1, FOLLOW_POLL_MS) > 0)
            break; /* SIGINT or SIGTERM: done */
        if (stat(path, &now) == 0 &&
            (fd < 0 || now.st_ino != cur.st_ino || now.st_dev != cur.st_dev)) {
            /* The file appeared or was replaced: read the new one from its start. */
            int nfd = open(path, O_RDONLY | O_CLOEXEC);

            if (nfd >= 0) {
                if (fd >= 0)
                    close(fd);
                fd = nfd;
                pos = 0;
                if (fstat(fd, &cur) < 0)
                    memset(&cur, 0, sizeof(cur));
            }
        }
        if (fd < 0 || fstat(fd, &now) < 0)
            continue;
        if (now.st_size < pos) {
            fprintf(stderr, "gravity: '%s' was truncated\n", path);
            pos = 0;
        }
        if (now.st_size > pos) {
            rc = copy_range(fd, pos, now.st_size);
            if (rc < 0)
                break;
            pos = now.st_size;
        }
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

static int parse_args(int argc, char **argv, const char **svc, long *lines, bool *fol)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *num = NULL;

        if (strcmp(a, "--no-follow") == 0) {
            *fol = false;
        } else if (strcmp(a, "-f") == 0 || strcmp(a, "--follow") == 0) {
            *fol = true;
        } else if ((strcmp(a, "-n") == 0 || strcmp(a, "--lines") == 0) && i + 1 < argc) {
            num = argv[++i];
        } else if (strncmp(a, "-n", 2) == 0 && a[2] != '\0') {
            num = a + 2;
        } else if (strncmp(a, "--lines=", 8) == 0) {
            num = a + 8;
        } else if (a[0] != '-' && !*svc) {
            *svc = a;
        } else {
            fprintf(stderr, "gravity: logs: unexpected argument '%s'\n", a);
            return GR_EINVAL;
        }
        if (num) {
            char *end = NULL;

            errno = 0;
            *lines = strtol(num, &end, 10);
            if (errno || *end != '\0' || *lines < 0 || *lines > MAX_LINES) {
                fprintf(stderr, "gravity: logs: invalid line count '%s'\n", num);
                return GR_EINVAL;
            }
        }
    }
    if (!*svc) {
        fprintf(stderr, "usage: gravity logs SERVICE [-n N] [--no-follow]\n");
        return GR_EINVAL;
    }
    return 0;
}

int gravity_cmd_logs(const struct gravity_env *env, int argc, char **argv)
{
    const char *key = NULL;
    long lines = 50;
    bool fol = true;
    char *path = NULL;
    struct stat st;
    sigset_t set;
    int fd = -1, sfd = -1;
    int rc = GRAVITY_EXIT_FAIL;
    off_t pos = 0;

    if (parse_args(argc, argv, &key, &lines, &fol) < 0)
        return GRAVITY_EXIT_USAGE;
    path = find_log(env, key);
    if (!path) {
        fprintf(stderr, "gravity: unknown service '%s'\n", key);
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && (!fol || errno != ENOENT)) {
        fprintf(stderr, "gravity: cannot open '%s': %s\n", path, strerror(errno));
        goto out;
    }
    if (fd >= 0 && fstat(fd, &st) == 0) {
        pos = st.st_size;
        if (copy_range(fd, tail_start(fd, pos, lines), pos) < 0)
            goto out;
    }
    if (!fol) {
        rc = GRAVITY_EXIT_OK;
        goto out;
    }
    if (fd < 0)
        fprintf(stderr, "gravity: waiting for '%s' to appear\n", path);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "gravity: cannot set up signals: %s\n", strerror(errno));
        goto out;
    }
    rc = follow(path, fd, pos, sfd) < 0 ? GRAVITY_EXIT_FAIL : GRAVITY_EXIT_OK;
    fd = -1; /* follow closed it */
out:
    if (fd >= 0)
        close(fd);
    if (sfd >= 0)
        close(sfd);
    gr_free(path);
    return rc;
}
