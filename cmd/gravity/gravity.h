/*
 * cmd/gravity/gravity.h - internals shared by the files of the `gravity` command.
 *
 * gravity finds the service binaries (`NN-name`) next to itself, asks each for its identity
 * with `--describe`, and then supervises them (up), reports on them (status), shows their logs
 * (logs) or runs one in the foreground (run). This header is private to cmd/gravity.
 */
#ifndef GRAVITY_H
#define GRAVITY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "gr/buf.h"
#include "gr/status.h"

/* Exit codes of the command. */
#define GRAVITY_EXIT_OK    0
#define GRAVITY_EXIT_FAIL  1
#define GRAVITY_EXIT_USAGE 2

/* Limits. */
#define GRAVITY_MAX_SERVICES  256
#define GRAVITY_DESCRIBE_MAX  4096
#define GRAVITY_DESCRIBE_MS   5000
#define GRAVITY_HTTP_BODY_MAX (64 * 1024)

/* Where things are: resolved once from the environment. */
struct gravity_env {
    char *bin_dir;   /* GRAVITY_BIN_DIR or dirname of /proc/self/exe; owned */
    char *data_dir;  /* GRAVITY_DATA or ./data, absolute when it exists; owned */
    int port_offset; /* GRAVITY_PORT_OFFSET, default 0 */
    int ready_ms;    /* GRAVITY_READY_TIMEOUT (seconds), default 30 s per service */
};

/* Supervision states of one service (used by up.c). */
enum gravity_svc_state {
    GRAVITY_SVC_IDLE = 0, /* not started yet */
    GRAVITY_SVC_STARTING, /* running, /ready not yet 200 */
    GRAVITY_SVC_UP,       /* running and was ready once since its last start */
    GRAVITY_SVC_BACKOFF,  /* exited; restart scheduled at restart_at_ms */
    GRAVITY_SVC_STOPPED,  /* exited during shutdown */
};

struct gravity_svc {
    char *id;      /* "17-product-service": the binary's file name; owned */
    char *name;    /* "product-service"; from --describe when given; owned */
    char *version; /* from --describe, "" before; owned */
    char *path;    /* path of the binary; owned */
    int number;    /* 17 */
    int port;      /* described port + offset; 0 until described */

    /* Supervision, owned by up.c. Times ending in _ms are CLOCK_MONOTONIC milliseconds. */
    enum gravity_svc_state state;
    pid_t pid; /* 0 when not running */
    int restarts;
    int64_t backoff_ms;
    int64_t started_ms;
    time_t started_at; /* wall clock of the last start */
    int64_t restart_at_ms;
    int64_t ready_deadline_ms;
    int64_t next_probe_ms;
    bool ready_timed_out;
};

struct gravity_svcs {
    struct gravity_svc *v; /* owned */
    size_t n;
};

/*
 * The service credentials `up` hands to every service (SERVICES §0: service calls use
 * client-credentials tokens): SERVICE_CLIENT_ID/SERVICE_CLIENT_SECRET, which gr trades for a
 * token at AUTH_URL, and, with @bootstrap, AUTH_BOOTSTRAP_CLIENT_ID/_SECRET for the auth service
 * so that it creates that client at start-up. The secret is never printed or logged.
 */
struct gravity_creds {
    bool on;        /* false: the user set SERVICE_TOKEN or SERVICE_CLIENT_ID; add nothing */
    bool bootstrap; /* a secret made for this run: tell the auth service about it */
    char client_id[65];
    char secret[257];
    /* The port of the discovery service (02) of this run, 0 when none: every service is given
     * DISCOVERY_URL=http://127.0.0.1:<it> unless DISCOVERY_URL is set. */
    int discovery_port;
    /* The port of the config service (04) of this run, 0 when none: every other service is
     * given CONFIG_URL=http://127.0.0.1:<it> (hot reload, gr/confwatch.h) unless CONFIG_URL is
     * set. Its long-polls park without a thread in 04, so any number of services may watch. */
    int config_port;
};

/* ---- env.c -------------------------------------------------------------------------------- */

/**
 * Reads GRAVITY_BIN_DIR, GRAVITY_DATA, GRAVITY_PORT_OFFSET and GRAVITY_READY_TIMEOUT into @env.
 * Prints a one-line message and returns GR_ECONFIG when a value is invalid. Release with
 * gravity_env_release.
 */
GR_MUST_CHECK int gravity_env_load(struct gravity_env *env);
void gravity_env_release(struct gravity_env *env);

/** printf into a new string (caller frees with gr_free). */
char *gravity_strf(const char *fmt, ...) GR_PRINTF(1, 2);
/** `mkdir -p @path` (mode 0755). GR_EIO on failure, errno kept. */
GR_MUST_CHECK int gravity_mkdirs(const char *path);
/** CLOCK_MONOTONIC in milliseconds. */
int64_t gravity_now_ms(void);
/** Writes @t as RFC 3339 UTC ("2024-05-01T10:00:00Z") into @out (at least 32 bytes). */
void gravity_fmt_time(time_t t, char *out, size_t n);
/** Parses what gravity_fmt_time wrote; -1 on failure. */
time_t gravity_parse_time(const char *s);

/* ---- svc.c -------------------------------------------------------------------------------- */

/**
 * Lists the service binaries in env->bin_dir: regular executable files named `[0-9][0-9]-*`,
 * sorted by name. Does not run them. @out is filled (release with gravity_svcs_release).
 * GR_EIO when the directory cannot be read.
 */
GR_MUST_CHECK int gravity_svcs_scan(const struct gravity_env *env, struct gravity_svcs *out);
void gravity_svcs_release(struct gravity_svcs *s);
/** Frees one service's strings (used when a service is dropped from a list). */
void gravity_svc_release(struct gravity_svc *v);
/**
 * Finds a service by id ("17-product-service"), name ("product-service") or number ("17").
 * Returns a borrowed pointer into @s or NULL.
 */
struct gravity_svc *gravity_svcs_find(struct gravity_svcs *s, const char *key);
/**
 * Runs `<path> --describe` (5 s limit) and fills name, version and port (+ offset).
 * Prints a one-line reason and returns GR_EINVAL/GR_ETIMEOUT/GR_EIO when that fails.
 */
GR_MUST_CHECK int gravity_svc_describe(const struct gravity_env *env, struct gravity_svc *svc);
/** The service's data directory, <data>/<id> (caller frees). */
char *gravity_svc_data_dir(const struct gravity_env *env, const struct gravity_svc *svc);
/** The service's log file, <data>/logs/<id>.log (caller frees). */
char *gravity_svc_log_path(const struct gravity_env *env, const struct gravity_svc *svc);
/**
 * The environment for the service's process: the inherited one plus PORT and DATA_DIR. With
 * @keep_set, PORT and DATA_DIR already in the environment win. With a port offset,
 * EVENT_BUS_URL, AUTH_URL and JWKS_URL point at the moved 14 and 05 unless they are set. With
 * @creds (may be NULL) switched on, the service credentials are added (see gravity_creds).
 * Free with gravity_envp_free, which wipes the strings.
 */
char **gravity_svc_envp(const struct gravity_env *env, const struct gravity_svc *svc, bool keep_set,
                        const struct gravity_creds *creds);
void gravity_envp_free(char **envp);
/**
 * Decides the credentials of this `up` (see struct gravity_creds): none when SERVICE_TOKEN or
 * SERVICE_CLIENT_ID is set; the user's AUTH_BOOTSTRAP_CLIENT_ID/_SECRET when both are set;
 * otherwise client "gravity-platform" with a new random secret (256 bits from getrandom).
 * GR_EIO when no random bytes could be had. Wipe with gravity_creds_wipe.
 */
GR_MUST_CHECK int gravity_creds_init(struct gravity_creds *c);
void gravity_creds_wipe(struct gravity_creds *c);
/**
 * In a freshly forked child: undoes what the parent changed (blocked signals, ignored
 * SIGPIPE) so the exec'd program starts with default signal handling.
 */
void gravity_child_reset_signals(void);

/* ---- http.c ------------------------------------------------------------------------------- */

/**
 * GET @url with a total limit of @timeout_ms, no proxy. On a response, stores its status in
 * *@status and, when @body is not NULL, appends the body to it (borrowed, initialised by the
 * caller, whose limit applies: a longer body fails the call). GR_EUNAVAIL when no complete
 * response came (refused, timeout, too long).
 */
GR_MUST_CHECK int gravity_http_get(const char *url, long timeout_ms, long *status,
                                   struct gr_buf *body);

/* ---- state.c ------------------------------------------------------------------------------ */

/** <data>/gravity.state (caller frees). */
char *gravity_state_path(const struct gravity_env *env);
/**
 * Writes the state file atomically (temporary file + rename): gravity's pid and every
 * service's id, name, version, pid, port, state, started_at and restarts.
 */
GR_MUST_CHECK int gravity_state_write(const struct gravity_env *env, time_t started_at,
                                      const struct gravity_svcs *s);
/** Reads and parses the state file; *@out is a new reference (json_decref). GR_ENOTFOUND. */
GR_MUST_CHECK int gravity_state_read(const struct gravity_env *env, json_t **out);
/** Whether the process @pid exists. */
bool gravity_pid_alive(pid_t pid);

/* ---- commands ------------------------------------------------------------------------------ */

int gravity_cmd_up(const struct gravity_env *env, int argc, char **argv);
int gravity_cmd_status(const struct gravity_env *env, int argc, char **argv);
int gravity_cmd_logs(const struct gravity_env *env, int argc, char **argv);
int gravity_cmd_run(const struct gravity_env *env, int argc, char **argv);

#endif
