/*
 * state.c - <data>/gravity.state, the JSON file through which `gravity up` tells the other
 * commands what it runs: its own pid and, per service, pid, port, state, start time and
 * restart count. `up` rewrites it on every change (temporary file + rename, so a reader never
 * sees half a file) and removes it on exit.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gravity.h"

static const char *const state_names[] = {
    [GRAVITY_SVC_IDLE] = "idle",       [GRAVITY_SVC_STARTING] = "starting",
    [GRAVITY_SVC_UP] = "up",           [GRAVITY_SVC_BACKOFF] = "restarting",
    [GRAVITY_SVC_STOPPED] = "stopped",
};

char *gravity_state_path(const struct gravity_env *env)
{
    return gravity_strf("%s/gravity.state", env->data_dir);
}

bool gravity_pid_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    return kill(pid, 0) == 0 || errno == EPERM;
}

static json_t *svc_json(const struct gravity_env *env, const struct gravity_svc *s)
{
    char started[32] = "";
    char *log = gravity_svc_log_path(env, s);
    char *data = gravity_svc_data_dir(env, s);
    json_t *o;

    if (s->started_at > 0)
        gravity_fmt_time(s->started_at, started, sizeof(started));
    o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:s, s:i, s:s, s:s}", "id", s->id, "name",
                  s->name, "version", s->version, "pid", (int)s->pid, "port", s->port, "state",
                  state_names[s->state], "started_at", started, "restarts", s->restarts, "log", log,
                  "data_dir", data);
    gr_free(log);
    gr_free(data);
    return o;
}

int gravity_state_write(const struct gravity_env *env, time_t started_at,
                        const struct gravity_svcs *s)
{
    char *path = gravity_state_path(env);
    char *tmp = gravity_strf("%s.tmp", path);
    char started[32];
    json_t *root = NULL, *arr;
    int rc = 0;

    gravity_fmt_time(started_at, started, sizeof(started));
    arr = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_t *o = svc_json(env, &s->v[i]);

        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            rc = GR_EINTERNAL;
            goto out;
        }
    }
    root = json_pack("{s:i, s:s, s:s, s:o}", "pid", (int)getpid(), "started_at", started,
                     "data_dir", env->data_dir, "services", arr);
    if (!root) {
        rc = GR_EINTERNAL;
        goto out;
    }
    if (json_dump_file(root, tmp, JSON_INDENT(2)) < 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        rc = GR_EIO;
    }
out:
    json_decref(root);
    gr_free(tmp);
    gr_free(path);
    return rc;
}

int gravity_state_read(const struct gravity_env *env, json_t **out)
{
    char *path = gravity_state_path(env);
    json_error_t jerr;
    int rc = 0;

    *out = NULL;
    if (access(path, F_OK) < 0) {
        rc = GR_ENOTFOUND;
        goto out;
    }
    *out = json_load_file(path, 0, &jerr);
    if (!*out || !json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        rc = GR_EINVAL;
    }
out:
    gr_free(path);
    return rc;
}
