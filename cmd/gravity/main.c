/*
 * main.c - entry point of the `gravity` command (cmd/gravity, built into build/bin/gravity,
 * what `make run` starts): parses the subcommand and hands over to up, status, logs or run.
 * Everything is configured from the environment (GRAVITY_BIN_DIR, GRAVITY_DATA,
 * GRAVITY_PORT_OFFSET, GRAVITY_READY_TIMEOUT, LOG_LEVEL, LOG_FORMAT); see README.md here.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "gr/log.h"
#include "gravity.h"

static const char usage_text[] =
    "usage: gravity <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  up [--only SVC,...]                  start every service (or some), supervise them,\n"
    "                                       stop them all on Ctrl-C or SIGTERM\n"
    "  status                               health, version, pid, port, uptime per service\n"
    "  logs SERVICE [-n N] [--no-follow]    last N (50) lines of a service's log, then follow\n"
    "  run SERVICE                          run one service in the foreground\n"
    "  help                                 this text\n"
    "\n"
    "SERVICE is an id (17-product-service), a name (product-service) or a number (17).\n"
    "\n"
    "environment:\n"
    "  GRAVITY_BIN_DIR      where the NN-name service binaries are (default: gravity's dir)\n"
    "  GRAVITY_DATA         data root; each service has DATA_DIR=<root>/<id> (default ./data)\n"
    "  GRAVITY_PORT_OFFSET  added to every service's port (default 0)\n"
    "  GRAVITY_READY_TIMEOUT  seconds up waits for each /ready before the table (30)\n"
    "  LOG_LEVEL, LOG_FORMAT  gravity's own messages (info, text by default)\n";

static void setup_log(void)
{
    const char *lvl = getenv("LOG_LEVEL");
    const char *fmt = getenv("LOG_FORMAT");
    int level = lvl ? gr_log_level_parse(lvl) : GR_LOG_INFO;

    gr_log_setup("gravity", level < 0 ? GR_LOG_INFO : level, fmt && strcmp(fmt, "json") == 0);
}

/*
 * Makes sure fds 0-2 are open, so no file gravity opens later lands on one of them (a child's
 * dup2 onto its own fd would then keep O_CLOEXEC and lose its stdout).
 */
static void open_std_fds(void)
{
    int fd;

    do {
        fd = open("/dev/null", O_RDWR);
    } while (fd >= 0 && fd <= STDERR_FILENO);
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    struct gravity_env env;
    const char *cmd = argc > 1 ? argv[1] : "help";
    int rc;

    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage_text, stdout);
        return GRAVITY_EXIT_OK;
    }
    open_std_fds();
    setup_log();
    if (gravity_env_load(&env) < 0)
        return GRAVITY_EXIT_FAIL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "gravity: cannot initialise libcurl\n");
        gravity_env_release(&env);
        return GRAVITY_EXIT_FAIL;
    }
    if (strcmp(cmd, "up") == 0) {
        rc = gravity_cmd_up(&env, argc - 2, argv + 2);
    } else if (strcmp(cmd, "status") == 0) {
        rc = gravity_cmd_status(&env, argc - 2, argv + 2);
    } else if (strcmp(cmd, "logs") == 0) {
        rc = gravity_cmd_logs(&env, argc - 2, argv + 2);
    } else if (strcmp(cmd, "run") == 0) {
        rc = gravity_cmd_run(&env, argc - 2, argv + 2);
    } else {
        fprintf(stderr, "gravity: unknown command '%s'\n\n%s", cmd, usage_text);
        rc = GRAVITY_EXIT_USAGE;
    }
    curl_global_cleanup();
    gravity_env_release(&env);
    return rc;
}
