/*
 * status.c - `gravity status`: reads the state file that `gravity up` keeps, asks each
 * running service for GET /health (1 s limit) and prints one line per service: whether it is
 * up, down or degraded, its version, pid, port, the number of passing instances the registry
 * (02, when it runs) lists for it, uptime and restart count. Exits 1 with one line when no
 * `gravity up` is running for this data directory.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "gr/arena.h"
#include "gravity.h"

#define HEALTH_TIMEOUT_MS 1000

struct health {
    const char *status; /* "up", "down", "degraded" */
    char version[64];
};

static const char *jstr(json_t *o, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(o, key));

    return v ? v : dflt;
}

/* Maps the answer of GET /health to up, down or degraded. */
static void check_health(int port, struct health *h)
{
    char *url = gravity_strf("http://127.0.0.1:%d/health", port);
    struct gr_buf body = GR_BUF_INIT;
    json_t *root = NULL;
    const char *st;
    long code = 0;

    h->status = "down";
    h->version[0] = '\0';
    gr_buf_init(&body, GRAVITY_HTTP_BODY_MAX);
    if (gravity_http_get(url, HEALTH_TIMEOUT_MS, &code, &body) < 0)
        goto out;
    root = json_loadb(gr_buf_cstr(&body), body.len, 0, NULL);
    st = json_is_object(root) ? jstr(root, "status", "") : "";
    if (json_is_object(root))
        snprintf(h->version, sizeof(h->version), "%s", jstr(root, "version", ""));
    if (strcasecmp(st, "degraded") == 0 || strcasecmp(st, "warn") == 0)
        h->status = "degraded";
    else if (strcasecmp(st, "down") == 0 || strcasecmp(st, "fail") == 0 ||
             strcasecmp(st, "error") == 0 || strcasecmp(st, "unhealthy") == 0)
        h->status = "down";
    else if (code >= 200 && code < 300)
        h->status = "up";
    else
        h->status = "degraded"; /* it answers, but not with success */
out:
    json_decref(root);
    gr_buf_release(&body);
    gr_free(url);
}

/*
 * GET /api/v1/registry/services of the discovery service (02) in @svcs, when it runs: an array
 * (or {"data":[…]}) of {name, instances}. NULL when there is none or it does not answer.
 */
static json_t *registry_services(json_t *svcs)
{
    struct gr_buf body = GR_BUF_INIT;
    json_t *svc, *root = NULL, *list = NULL;
    size_t i;
    long code = 0;
    int port = 0;

    json_array_foreach(svcs, i, svc)
    {
        if (strncmp(jstr(svc, "id", ""), "02-", 3) == 0 &&
            json_integer_value(json_object_get(svc, "pid")) > 0)
            port = (int)json_integer_value(json_object_get(svc, "port"));
    }
    if (port <= 0)
        return NULL;
    {
        char *url = gravity_strf("http://127.0.0.1:%d/api/v1/registry/services", port);

        gr_buf_init(&body, GRAVITY_HTTP_BODY_MAX);
        if (gravity_http_get(url, HEALTH_TIMEOUT_MS, &code, &body) == 0 && code == 200)
            root = json_loadb(gr_buf_cstr(&body), body.len, 0, NULL);
        gr_free(url);
        gr_buf_release(&body);
    }
    list = json_is_array(root) ? root : json_object_get(root, "data");
    if (json_is_array(list))
        json_incref(list);
    else
        list = NULL;
    json_decref(root);
    return list;
}

/* The passing instances the registry lists for @name: "-" without a registry. */
static void fmt_instances(json_t *reg, const char *name, char *out, size_t n)
{
    json_t *e;
    size_t i;

    snprintf(out, n, "%s", reg ? "0" : "-");
    json_array_foreach(reg, i, e)
    {
        if (strcmp(jstr(e, "name", ""), name) == 0)
            snprintf(out, n, "%lld",
                     (long long)json_integer_value(json_object_get(e, "instances")));
    }
}

static void fmt_uptime(long long s, char *out, size_t n)
{
    if (s < 0)
        snprintf(out, n, "-");
    else if (s < 60)
        snprintf(out, n, "%llds", s);
    else if (s < 3600)
        snprintf(out, n, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, n, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
    else
        snprintf(out, n, "%lldd%02lldh", s / 86400, (s % 86400) / 3600);
}

static void print_service(json_t *svc, json_t *reg, int w, time_t now)
{
    char inst[24];
    const char *id = jstr(svc, "id", "?");
    int pid = (int)json_integer_value(json_object_get(svc, "pid"));
    int port = (int)json_integer_value(json_object_get(svc, "port"));
    int restarts = (int)json_integer_value(json_object_get(svc, "restarts"));
    time_t started = gravity_parse_time(jstr(svc, "started_at", ""));
    struct health h = { .status = "down", .version = "" };
    char up[32] = "-";
    char spid[16] = "-";

    if (pid > 0 && port > 0)
        check_health(port, &h);
    if (h.version[0] == '\0')
        snprintf(h.version, sizeof(h.version), "%s", jstr(svc, "version", "-"));
    if (pid > 0) {
        snprintf(spid, sizeof(spid), "%d", pid);
        if (started > 0)
            fmt_uptime((long long)(now - started), up, sizeof(up));
    }
    fmt_instances(reg, jstr(svc, "name", ""), inst, sizeof(inst));
    printf("%-*s  %-8s  %-10s  %-7s  %-5d  %-9s  %-8s  %d\n", w, id, h.status,
           h.version[0] ? h.version : "-", spid, port, inst, up, restarts);
}

int gravity_cmd_status(const struct gravity_env *env, int argc, char **argv)
{
    json_t *st = NULL, *svcs, *svc, *reg = NULL;
    size_t i;
    pid_t pid;
    int w = (int)strlen("SERVICE");
    int rc = GRAVITY_EXIT_FAIL;
    time_t now = time(NULL);

    (void)argv;
    if (argc > 0) {
        fprintf(stderr, "gravity: status takes no arguments\n");
        return GRAVITY_EXIT_USAGE;
    }
    if (gravity_state_read(env, &st) < 0) {
        printf("gravity is not running (no state in '%s')\n", env->data_dir);
        goto out;
    }
    pid = (pid_t)json_integer_value(json_object_get(st, "pid"));
    if (!gravity_pid_alive(pid)) {
        printf("gravity is not running (stale state file, pid %d is gone)\n", (int)pid);
        goto out;
    }
    svcs = json_object_get(st, "services");
    json_array_foreach(svcs, i, svc)
    {
        int l = (int)strlen(jstr(svc, "id", "?"));
        w = l > w ? l : w;
    }
    reg = registry_services(svcs);
    printf("%-*s  %-8s  %-10s  %-7s  %-5s  %-9s  %-8s  %s\n", w, "SERVICE", "STATUS", "VERSION",
           "PID", "PORT", "INSTANCES", "UPTIME", "RESTARTS");
    json_array_foreach(svcs, i, svc)
    {
        print_service(svc, reg, w, now);
    }
    rc = GRAVITY_EXIT_OK;
out:
    json_decref(reg);
    json_decref(st);
    return rc;
}
