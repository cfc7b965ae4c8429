/*
 * run.c - `gravity run SERVICE`: replaces gravity with one service in the foreground, with the
 * same environment `gravity up` would give it (PORT from its described port plus
 * GRAVITY_PORT_OFFSET, DATA_DIR=<data>/<id>), except that PORT or DATA_DIR already set in the
 * environment win, since they can only mean this one service. Its output stays on the terminal.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gravity.h"

int gravity_cmd_run(const struct gravity_env *env, int argc, char **argv)
{
    struct gravity_svcs all = { NULL, 0 };
    struct gravity_svc *v;
    char **envp = NULL;
    char *dir = NULL;
    const char *data = getenv("DATA_DIR");
    int rc = GRAVITY_EXIT_FAIL;

    if (argc != 1 || argv[0][0] == '-') {
        fprintf(stderr, "usage: gravity run SERVICE\n");
        return GRAVITY_EXIT_USAGE;
    }
    if (gravity_svcs_scan(env, &all) < 0)
        goto out;
    v = gravity_svcs_find(&all, argv[0]);
    if (!v) {
        fprintf(stderr, "gravity: unknown service '%s' (not in '%s')\n", argv[0], env->bin_dir);
        goto out;
    }
    if (gravity_svc_describe(env, v) < 0)
        goto out;
    dir = data && *data ? gr_xstrdup(data) : gravity_svc_data_dir(env, v);
    if (gravity_mkdirs(dir) < 0) {
        fprintf(stderr, "gravity: cannot create '%s': %s\n", dir, strerror(errno));
        goto out;
    }
    envp = gravity_svc_envp(env, v, true, NULL); /* no auth started here: no credentials */
    fflush(NULL);
    execve(v->path, (char *[]){ v->path, NULL }, envp);
    fprintf(stderr, "gravity: cannot exec '%s': %s\n", v->path, strerror(errno));
out:
    gravity_envp_free(envp);
    gr_free(dir);
    gravity_svcs_release(&all);
    return rc;
}
