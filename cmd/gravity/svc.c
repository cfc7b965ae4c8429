/*
 * svc.c - the service binaries: finding them (`NN-name`, executable, in the bin directory),
 * asking each for its identity with `--describe` (one JSON line: name, id, version, port),
 * matching a user's SERVICE argument against them, and preparing what a service process is given
 * (its environment with the service credentials of `up`, data directory and log file).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gravity.h"

extern char **environ;

static bool is_service_name(const char *n)
{
    return isdigit((unsigned char)n[0]) && isdigit((unsigned char)n[1]) && n[2] == '-' &&
           n[3] != '\0' && strcmp(n, "gravity") != 0;
}

static int cmp_svc(const void *a, const void *b)
{
    const struct gravity_svc *x = a, *y = b;

    return strcmp(x->id, y->id);
}

int gravity_svcs_scan(const struct gravity_env *env, struct gravity_svcs *out)
{
    DIR *d = opendir(env->bin_dir);
    struct dirent *de;
    int rc = 0;

    out->v = NULL;
    out->n = 0;
    if (!d) {
        fprintf(stderr, "gravity: cannot read bin directory '%s': %s\n", env->bin_dir,
                strerror(errno));
        return GR_EIO;
    }
    out->v = gr_xcalloc(GRAVITY_MAX_SERVICES, sizeof(*out->v));
    while ((de = readdir(d)) != NULL) {
        struct gravity_svc *s;
        struct stat st;
        char *path;

        if (!is_service_name(de->d_name))
            continue;
        path = gravity_strf("%s/%s", env->bin_dir, de->d_name);
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || access(path, X_OK) < 0) {
            gr_free(path);
            continue;
        }
        if (out->n == GRAVITY_MAX_SERVICES) {
            fprintf(stderr, "gravity: more than %d services in '%s'\n", GRAVITY_MAX_SERVICES,
                    env->bin_dir);
            gr_free(path);
            rc = GR_ETOOBIG;
            goto out;
        }
        s = &out->v[out->n++];
        s->id = gr_xstrdup(de->d_name);
        s->name = gr_xstrdup(de->d_name + 3);
        s->version = gr_xstrdup("");
        s->path = path;
        s->number = (de->d_name[0] - '0') * 10 + (de->d_name[1] - '0');
    }
    qsort(out->v, out->n, sizeof(*out->v), cmp_svc);
out:
    closedir(d);
    if (rc < 0)
        gravity_svcs_release(out);
    return rc;
}

void gravity_svc_release(struct gravity_svc *v)
{
    gr_free(v->id);
    gr_free(v->name);
    gr_free(v->version);
    gr_free(v->path);
    v->id = v->name = v->version = v->path = NULL;
}

void gravity_svcs_release(struct gravity_svcs *s)
{
    for (size_t i = 0; i < s->n; i++)
        gravity_svc_release(&s->v[i]);
    gr_free(s->v);
    s->v = NULL;
    s->n = 0;
}

struct gravity_svc *gravity_svcs_find(struct gravity_svcs *s, const char *key)
{
    bool numeric = *key != '\0' && strlen(key) <= 2;

    for (const char *p = key; *p; p++) {
        if (!isdigit((unsigned char)*p))
            numeric = false;
    }
    for (size_t i = 0; i < s->n; i++) {
        struct gravity_svc *v = &s->v[i];

        if (strcmp(v->id, key) == 0 || strcmp(v->name, key) == 0 || strcmp(v->id + 3, key) == 0)
            return v;
        if (numeric && v->number == (int)strtol(key, NULL, 10))
            return v;
    }
    return NULL;
}

void gravity_child_reset_signals(void)
{
    sigset_t none;

    sigemptyset(&none);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Reads the child's stdout from @fd into @b until EOF, the size limit or @deadline_ms. */
static int read_until(int fd, struct gr_buf *b, int64_t deadline_ms)
{
    char chunk[1024];

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline_ms - gravity_now_ms();
        ssize_t n;
        int pr;

        if (left <= 0)
            return GR_ETIMEOUT;
        pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return GR_EIO;
        if (pr == 0)
            return GR_ETIMEOUT;
        n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return GR_EIO;
        if (n == 0)
            return 0;
        if (gr_buf_append(b, chunk, (size_t)n) < 0)
            return GR_ETOOBIG;
    }
}

/* Runs `<path> --describe` and leaves its stdout in @b. */
static int run_describe(const struct gravity_svc *svc, struct gr_buf *b)
{
    int pipefd[2] = { -1, -1 };
    int status = 0;
    pid_t pid;
    int rc;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return GR_EIO;
    pid = fork();
    if (pid < 0) {
        rc = GR_EIO;
        goto out;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);

        gravity_child_reset_signals();
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(pipefd[1], STDOUT_FILENO);
        execl(svc->path, svc->path, "--describe", (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    pipefd[1] = -1;
    rc = read_until(pipefd[0], b, gravity_now_ms() + GRAVITY_DESCRIBE_MS);
    if (rc < 0)
        kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        rc = GR_EINVAL;
out:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    return rc;
}

int gravity_svc_describe(const struct gravity_env *env, struct gravity_svc *svc)
{
    struct gr_buf b = GR_BUF_INIT;
    json_error_t jerr;
    json_t *root = NULL, *jname, *jver, *jport;
    long long port;
    int rc;

    gr_buf_init(&b, GRAVITY_DESCRIBE_MAX);
    rc = run_describe(svc, &b);
    if (rc < 0) {
        fprintf(stderr, "gravity: '%s --describe' failed: %s\n", svc->path, gr_strerror(rc));
        goto out;
    }
    root = json_loadb(gr_buf_cstr(&b), b.len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        fprintf(stderr, "gravity: '%s --describe' printed no JSON object\n", svc->path);
        rc = GR_EINVAL;
        goto out;
    }
    jname = json_object_get(root, "name");
    jver = json_object_get(root, "version");
    jport = json_object_get(root, "port");
    port = json_is_integer(jport) ? json_integer_value(jport) : 0;
    port += env->port_offset;
    if (port < 1 || port > 65535) {
        fprintf(stderr, "gravity: '%s --describe' gave no usable port (with offset: %lld)\n",
                svc->path, port);
        rc = GR_EINVAL;
        goto out;
    }
    svc->port = (int)port;
    if (json_is_string(jname) && json_string_length(jname) > 0) {
        gr_free(svc->name);
        svc->name = gr_xstrdup(json_string_value(jname));
    }
    if (json_is_string(jver)) {
        gr_free(svc->version);
        svc->version = gr_xstrdup(json_string_value(jver));
    }
out:
    json_decref(root);
    gr_buf_release(&b);
    return rc;
}

char *gravity_svc_data_dir(const struct gravity_env *env, const struct gravity_svc *svc)
{
    return gravity_strf("%s/%s", env->data_dir, svc->id);
}

char *gravity_svc_log_path(const struct gravity_env *env, const struct gravity_svc *svc)
{
    return gravity_strf("%s/logs/%s.log", env->data_dir, svc->id);
}

static bool has_key(const char *entry, const char *key)
{
    size_t n = strlen(key);

    return strncmp(entry, key, n) == 0 && entry[n] == '=';
}

static bool is_set(const char *name)
{
    const char *v = getenv(name);

    return v && *v;
}

int gravity_creds_init(struct gravity_creds *c)
{
    unsigned char raw[32];
    const char *id = getenv("AUTH_BOOTSTRAP_CLIENT_ID");
    const char *secret = getenv("AUTH_BOOTSTRAP_CLIENT_SECRET");
    size_t got = 0;

    memset(c, 0, sizeof(*c));
    if (is_set("SERVICE_TOKEN") || is_set("SERVICE_CLIENT_ID"))
        return 0; /* the user's own setup: services use what they inherit */
    c->on = true;
    if (id && *id && secret && *secret && strlen(id) < sizeof(c->client_id) &&
        strlen(secret) < sizeof(c->secret)) {
        /* The user named the bootstrap client: the services use it too. */
        memcpy(c->client_id, id, strlen(id) + 1);
        memcpy(c->secret, secret, strlen(secret) + 1);
        return 0;
    }
    c->bootstrap = true;
    memcpy(c->client_id, "gravity-platform", sizeof("gravity-platform"));
    while (got < sizeof(raw)) {
        ssize_t r = getrandom(raw + got, sizeof(raw) - got, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            gravity_creds_wipe(c);
            return GR_EIO;
        }
        got += (size_t)r;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        c->secret[2 * i] = "0123456789abcdef"[raw[i] >> 4];
        c->secret[2 * i + 1] = "0123456789abcdef"[raw[i] & 15];
    }
    c->secret[2 * sizeof(raw)] = '\0';
    explicit_bzero(raw, sizeof(raw));
    return 0;
}

void gravity_creds_wipe(struct gravity_creds *c)
{
    explicit_bzero(c, sizeof(*c));
}

/* Whether @entry of the inherited environment is one that gravity sets itself. */
static bool replaced(const char *entry, const struct gravity_creds *creds, bool auth)
{
    if (has_key(entry, "PORT") || has_key(entry, "DATA_DIR"))
        return true;
    if (!creds || !creds->on)
        return false;
    if (has_key(entry, "SERVICE_CLIENT_ID") || has_key(entry, "SERVICE_CLIENT_SECRET"))
        return true;
    return auth && creds->bootstrap &&
           (has_key(entry, "AUTH_BOOTSTRAP_CLIENT_ID") ||
            has_key(entry, "AUTH_BOOTSTRAP_CLIENT_SECRET"));
}

char **gravity_svc_envp(const struct gravity_env *env, const struct gravity_svc *svc, bool keep_set,
                        const struct gravity_creds *creds)
{
    size_t n = 0, k = 0;
    const char *port = keep_set ? getenv("PORT") : NULL;
    const char *data = keep_set ? getenv("DATA_DIR") : NULL;
    bool auth = strcmp(svc->name, "auth-service") == 0;
    char *dir;
    char **envp;

    while (environ[n])
        n++;
    envp = gr_xcalloc(n + 13, sizeof(*envp));
    for (size_t i = 0; i < n; i++) {
        if (replaced(environ[i], creds, auth))
            continue;
        envp[k++] = gr_xstrdup(environ[i]);
    }
    /* The event bus (14) and auth (05) move with the offset too, unless the caller chose. */
    if (env->port_offset != 0 && !getenv("EVENT_BUS_URL"))
        envp[k++] = gravity_strf("EVENT_BUS_URL=http://127.0.0.1:%d", 8019 + env->port_offset);
    if (env->port_offset != 0 && !getenv("AUTH_URL"))
        envp[k++] = gravity_strf("AUTH_URL=http://127.0.0.1:%d", 8001 + env->port_offset);
    if (env->port_offset != 0 && !getenv("JWKS_URL"))
        envp[k++] =
            gravity_strf("JWKS_URL=http://127.0.0.1:%d/api/v1/auth/jwks", 8001 + env->port_offset);
    if (creds && creds->discovery_port > 0 && !getenv("DISCOVERY_URL"))
        envp[k++] = gravity_strf("DISCOVERY_URL=http://127.0.0.1:%d", creds->discovery_port);
    /* Not to 04 itself: it would long-poll its own merged view. */
    if (creds && creds->config_port > 0 && !getenv("CONFIG_URL") && svc->number != 4)
        envp[k++] = gravity_strf("CONFIG_URL=http://127.0.0.1:%d", creds->config_port);
    if (creds && creds->on) {
        envp[k++] = gravity_strf("SERVICE_CLIENT_ID=%s", creds->client_id);
        envp[k++] = gravity_strf("SERVICE_CLIENT_SECRET=%s", creds->secret);
        if (auth && creds->bootstrap) {
            envp[k++] = gravity_strf("AUTH_BOOTSTRAP_CLIENT_ID=%s", creds->client_id);
            envp[k++] = gravity_strf("AUTH_BOOTSTRAP_CLIENT_SECRET=%s", creds->secret);
        }
    }
    if (port && *port)
        envp[k++] = gravity_strf("PORT=%s", port);
    else
        envp[k++] = gravity_strf("PORT=%d", svc->port);
    if (data && *data) {
        envp[k++] = gravity_strf("DATA_DIR=%s", data);
    } else {
        dir = gravity_svc_data_dir(env, svc);
        envp[k++] = gravity_strf("DATA_DIR=%s", dir);
        gr_free(dir);
    }
    envp[k] = NULL;
    return envp;
}

void gravity_envp_free(char **envp)
{
    if (!envp)
        return;
    for (size_t i = 0; envp[i]; i++) {
        explicit_bzero(envp[i], strlen(envp[i])); /* may hold the service secret */
        gr_free(envp[i]);
    }
    gr_free(envp);
}
