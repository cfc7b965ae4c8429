/*
 * up.c - `gravity up`: the supervisor behind `make run`.
 *
 * It starts every service binary as its own child process (own process group, stdout and
 * stderr appended to <data>/logs/<id>.log, PORT and DATA_DIR set, and the client credentials
 * of this run, which the auth service registers and gr trades for service tokens), waits for each
 * one's /ready, prints a table, and then keeps them running: a child that exits is restarted with
 * exponential backoff (0.5 s doubling to 30 s, reset once a run lasted 60 s). SIGINT, SIGTERM
 * or SIGHUP drain everything: SIGTERM to each child, up to 10 s to exit, SIGKILL for the rest.
 *
 * One single-threaded loop drives it all: signals arrive through a signalfd (they stay
 * blocked, so no handler ever runs), children are reaped with waitpid(WNOHANG), and timers
 * (restarts, probes, the kill deadline) set the poll timeout. Only PIDs gravity forked are
 * ever signalled. <data>/gravity.state mirrors the supervisor's view after every change.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gr/log.h"
#include "gravity.h"

#define BACKOFF_FIRST_MS 500
#define BACKOFF_MAX_MS   30000
#define BACKOFF_RESET_MS 60000
#define STOP_TIMEOUT_MS  10000
#define KILL_WAIT_MS     5000
#define PROBE_TIMEOUT_MS 500
#define PROBE_FAST_MS    100
#define PROBE_SLOW_MS    1000
#define LOOP_MAX_WAIT_MS 1000

struct sup {
    const struct gravity_env *env;
    struct gravity_svcs svcs; /* the services being supervised */
    time_t started_at;
    int sfd;     /* signalfd for SIGINT, SIGTERM, SIGHUP, SIGCHLD */
    int devnull; /* children's stdin */
    int64_t table_deadline_ms;
    bool table_printed;
    bool stopping;
    bool killed;
    int64_t kill_at_ms;
    bool state_warned;
    struct gravity_creds creds; /* the services' client credentials for this run */
    int phase;                  /* the start phase reached (see phase_of) */
    int64_t phase_deadline_ms;  /* when the next phase starts even if this one is not ready */
};

/*
 * Start order (ARCHITECTURE §1): discovery (02) first, so that every other service can
 * register with it; the gateway (03) last, so that it finds them registered; everything else
 * in between, all at once. A phase begins when the previous one is ready, or after
 * GRAVITY_READY_TIMEOUT at the latest.
 */
#define PHASE_LAST 2
static int phase_of(const struct gravity_svc *v)
{
    return v->number == 2 ? 0 : v->number == 3 ? 2 : 1;
}

static void save_state(struct sup *s)
{
    if (gravity_state_write(s->env, s->started_at, &s->svcs) < 0 && !s->state_warned) {
        gr_log_warn("cannot write state file", "data_dir", s->env->data_dir);
        s->state_warned = true;
    }
}

static void describe_exit(int st, char *out, size_t n)
{
    if (WIFEXITED(st))
        snprintf(out, n, "exit %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(out, n, "signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(out, n, "status 0x%x", (unsigned)st);
}

static void schedule_restart(struct gravity_svc *v, int64_t now)
{
    char in[32];

    if (v->backoff_ms == 0 || now - v->started_ms >= BACKOFF_RESET_MS)
        v->backoff_ms = BACKOFF_FIRST_MS;
    v->state = GRAVITY_SVC_BACKOFF;
    v->restart_at_ms = now + v->backoff_ms;
    snprintf(in, sizeof(in), "%.1fs", (double)v->backoff_ms / 1000.0);
    gr_log_warn("service will restart", "service", v->id, "in", in);
    v->backoff_ms *= 2;
    if (v->backoff_ms > BACKOFF_MAX_MS)
        v->backoff_ms = BACKOFF_MAX_MS;
}

/* The child side of spawn(): never returns. */
static void exec_child(const struct gravity_svc *v, char **envp, int logfd, int devnull,
                       pid_t parent)
{
    char *argv[] = { v->path, NULL };
    char msg[512];
    int n;

    setpgid(0, 0);
    /* If gravity dies without draining (SIGKILL), its children still get their SIGTERM. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1);
    gravity_child_reset_signals();
    dup2(devnull, STDIN_FILENO);
    dup2(logfd, STDOUT_FILENO);
    dup2(logfd, STDERR_FILENO);
    execve(v->path, argv, envp);
    n = snprintf(msg, sizeof(msg), "gravity: cannot exec '%s': %s\n", v->path, strerror(errno));
    if (n > 0)
        (void)!write(STDERR_FILENO, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
    _exit(127);
}

static void spawn(struct sup *s, struct gravity_svc *v)
{
    char *log = gravity_svc_log_path(s->env, v);
    char **envp = NULL;
    int64_t now = gravity_now_ms();
    pid_t parent = getpid();
    char spid[24];
    int logfd;
    pid_t pid;

    if (v->state == GRAVITY_SVC_BACKOFF)
        v->restarts++;
    v->started_ms = now;
    v->started_at = time(NULL);
    logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) {
        gr_log_error("cannot open log file", "service", v->id, "path", log, "error",
                     strerror(errno));
        schedule_restart(v, now);
        goto out;
    }
    envp = gravity_svc_envp(s->env, v, false, &s->creds);
    pid = fork();
    if (pid == 0)
        exec_child(v, envp, logfd, s->devnull, parent);
    close(logfd);
    if (pid < 0) {
        gr_log_error("cannot fork", "service", v->id, "error", strerror(errno));
        schedule_restart(v, now);
        goto out;
    }
    setpgid(pid, pid); /* also here, so it holds whichever side runs first */
    v->pid = pid;
    v->state = GRAVITY_SVC_STARTING;
    v->ready_timed_out = false;
    v->ready_deadline_ms = now + s->env->ready_ms;
    v->next_probe_ms = now + PROBE_FAST_MS / 2;
    snprintf(spid, sizeof(spid), "%d", (int)pid);
    if (v->restarts > 0)
        gr_log_info("service restarted", "service", v->id, "pid", spid);
    else
        gr_log_debug("service started", "service", v->id, "pid", spid);
out:
    save_state(s);
    gravity_envp_free(envp);
    gr_free(log);
}

static struct gravity_svc *by_pid(struct sup *s, pid_t pid)
{
    for (size_t i = 0; i < s->svcs.n; i++) {
        if (s->svcs.v[i].pid == pid)
            return &s->svcs.v[i];
    }
    return NULL;
}

static void reap(struct sup *s)
{
    int st;
    pid_t pid;

    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        struct gravity_svc *v = by_pid(s, pid);
        int64_t now = gravity_now_ms();
        char how[96], ran[32];

        if (!v)
            continue;
        describe_exit(st, how, sizeof(how));
        snprintf(ran, sizeof(ran), "%.1fs", (double)(now - v->started_ms) / 1000.0);
        v->pid = 0;
        if (s->stopping) {
            v->state = GRAVITY_SVC_STOPPED;
            gr_log_info("service stopped", "service", v->id, "status", how);
        } else {
            gr_log_warn("service exited", "service", v->id, "status", how, "after", ran);
            schedule_restart(v, now);
        }
        save_state(s);
    }
}

static void begin_stop(struct sup *s, int sig)
{
    char name[16];

    if (s->stopping) {
        /* A second Ctrl-C: do not wait for the drain any longer. */
        s->kill_at_ms = gravity_now_ms();
        return;
    }
    snprintf(name, sizeof(name), "SIG%s", sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
    gr_log_info("stopping services", "signal", name);
    s->stopping = true;
    s->kill_at_ms = gravity_now_ms() + STOP_TIMEOUT_MS;
    for (size_t i = 0; i < s->svcs.n; i++) {
        struct gravity_svc *v = &s->svcs.v[i];

        if (v->pid > 0)
            kill(v->pid, SIGTERM);
        else
            v->state = GRAVITY_SVC_STOPPED;
    }
    save_state(s);
}

static void kill_rest(struct sup *s)
{
    s->killed = true;
    for (size_t i = 0; i < s->svcs.n; i++) {
        struct gravity_svc *v = &s->svcs.v[i];

        if (v->pid > 0) {
            gr_log_warn("service did not stop in time, killing", "service", v->id);
            kill(v->pid, SIGKILL);
        }
    }
}

static size_t running(const struct sup *s)
{
    size_t n = 0;

    for (size_t i = 0; i < s->svcs.n; i++)
        n += s->svcs.v[i].pid > 0;
    return n;
}

static void probe(struct sup *s, struct gravity_svc *v, int64_t now)
{
    char *url = gravity_strf("http://127.0.0.1:%d/ready", v->port);
    long status = 0;

    if (gravity_http_get(url, PROBE_TIMEOUT_MS, &status, NULL) == 0 && status == 200) {
        v->state = GRAVITY_SVC_UP;
        if (s->table_printed)
            gr_log_info("service ready", "service", v->id);
        save_state(s);
    } else {
        now = gravity_now_ms();
        if (now >= v->ready_deadline_ms && !v->ready_timed_out) {
            v->ready_timed_out = true;
            gr_log_warn("service not ready in time, still waiting", "service", v->id, "url", url);
        }
        v->next_probe_ms = now + (v->ready_timed_out ? PROBE_SLOW_MS : PROBE_FAST_MS);
    }
    gr_free(url);
}

static const char *table_status(const struct gravity_svc *v)
{
    switch (v->state) {
    case GRAVITY_SVC_UP:
        return "ready";
    case GRAVITY_SVC_STARTING:
        return "not ready";
    case GRAVITY_SVC_BACKOFF:
        return "crashed";
    default:
        return "stopped";
    }
}

static void print_table(struct sup *s)
{
    int w = (int)strlen("SERVICE");
    size_t ready = 0;
    char nready[32];
    char *logs;

    for (size_t i = 0; i < s->svcs.n; i++) {
        int l = (int)strlen(s->svcs.v[i].id);
        w = l > w ? l : w;
    }
    printf("%-*s  %-5s  %-7s  %-9s  %s\n", w, "SERVICE", "PORT", "PID", "STATUS", "URL");
    for (size_t i = 0; i < s->svcs.n; i++) {
        const struct gravity_svc *v = &s->svcs.v[i];
        char pid[16] = "-";

        if (v->pid > 0)
            snprintf(pid, sizeof(pid), "%d", (int)v->pid);
        printf("%-*s  %-5d  %-7s  %-9s  http://127.0.0.1:%d\n", w, v->id, v->port, pid,
               table_status(v), v->port);
        ready += v->state == GRAVITY_SVC_UP;
    }
    fflush(stdout);
    s->table_printed = true;
    snprintf(nready, sizeof(nready), "%zu/%zu", ready, s->svcs.n);
    logs = gravity_strf("%s/logs", s->env->data_dir);
    gr_log_info("services started, Ctrl-C stops them", "ready", nready, "logs", logs);
    gr_free(logs);
}

static bool all_up(const struct sup *s)
{
    for (size_t i = 0; i < s->svcs.n; i++) {
        if (s->svcs.v[i].state != GRAVITY_SVC_UP)
            return false;
    }
    return true;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Starts the next phase that has services (see phase_of); the table waits for the last. */
static void start_phase(struct sup *s, int64_t now)
{
    while (s->phase < PHASE_LAST) {
        size_t n = 0;

        s->phase++;
        for (size_t i = 0; i < s->svcs.n; i++) {
            if (phase_of(&s->svcs.v[i]) == s->phase) {
                spawn(s, &s->svcs.v[i]);
                n++;
            }
        }
        if (n > 0)
            break;
    }
    s->phase_deadline_ms = now + s->env->ready_ms;
    s->table_deadline_ms = now + s->env->ready_ms;
}

/* True when every service of the phases started so far was ready once. */
static bool phase_up(const struct sup *s)
{
    for (size_t i = 0; i < s->svcs.n; i++) {
        const struct gravity_svc *v = &s->svcs.v[i];

        if (phase_of(v) <= s->phase && v->state == GRAVITY_SVC_STARTING)
            return false;
    }
    return true;
}

/* Runs what is due now and returns how long poll may wait for the next thing. */
static int tick(struct sup *s)
{
    int64_t now = gravity_now_ms();
    int64_t next = now + LOOP_MAX_WAIT_MS;

    if (!s->stopping && s->phase < PHASE_LAST && (phase_up(s) || now >= s->phase_deadline_ms))
        start_phase(s, now);
    if (!s->stopping && s->phase < PHASE_LAST)
        next = min64(next, s->phase_deadline_ms);

    for (size_t i = 0; i < s->svcs.n && !s->stopping; i++) {
        struct gravity_svc *v = &s->svcs.v[i];

        if (v->state == GRAVITY_SVC_BACKOFF && now >= v->restart_at_ms)
            spawn(s, v);
        if (v->state == GRAVITY_SVC_STARTING && now >= v->next_probe_ms)
            probe(s, v, now);
        if (v->state == GRAVITY_SVC_BACKOFF)
            next = min64(next, v->restart_at_ms);
        if (v->state == GRAVITY_SVC_STARTING)
            next = min64(next, v->next_probe_ms);
    }
    now = gravity_now_ms();
    if (!s->stopping && !s->table_printed && s->phase >= PHASE_LAST) {
        if (all_up(s) || now >= s->table_deadline_ms)
            print_table(s);
        else
            next = min64(next, s->table_deadline_ms);
    }
    if (s->stopping && !s->killed) {
        if (now >= s->kill_at_ms) {
            kill_rest(s);
            s->kill_at_ms = now + KILL_WAIT_MS;
        }
        next = min64(next, s->kill_at_ms);
    }
    return next > now ? (int)(next - now) : 0;
}

static void on_signals(struct sup *s)
{
    struct signalfd_siginfo si;

    while (read(s->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM || si.ssi_signo == SIGHUP)
            begin_stop(s, (int)si.ssi_signo);
    }
    reap(s);
}

static int supervise(struct sup *s)
{
    int64_t now = gravity_now_ms();

    s->phase = -1;
    start_phase(s, now);
    while (!s->stopping || running(s) > 0) {
        struct pollfd pfd = { .fd = s->sfd, .events = POLLIN };
        int wait_ms = tick(s);

        if (s->stopping && s->killed && gravity_now_ms() >= s->kill_at_ms) {
            gr_log_error("children still alive after SIGKILL, giving up on them");
            break;
        }
        if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR) {
            gr_log_error("poll failed", "error", strerror(errno));
            begin_stop(s, SIGTERM);
        }
        on_signals(s);
    }
    gr_log_info("all services stopped");
    return GRAVITY_EXIT_OK;
}

/* Keeps only the services named in @list (comma separated ids, names or numbers). */
static int select_only(struct gravity_svcs *all, const char *list)
{
    bool *keep = gr_xcalloc(all->n ? all->n : 1, sizeof(*keep));
    char *copy = gr_xstrdup(list);
    char *tok = copy;
    size_t k = 0;
    int rc = 0;

    while (tok) {
        char *comma = strchr(tok, ',');
        struct gravity_svc *v;

        if (comma)
            *comma = '\0';
        v = *tok ? gravity_svcs_find(all, tok) : NULL;
        if (*tok && !v) {
            fprintf(stderr, "gravity: unknown service '%s' in --only\n", tok);
            rc = GR_ENOTFOUND;
            goto out;
        }
        if (v)
            keep[v - all->v] = true;
        tok = comma ? comma + 1 : NULL;
    }
    for (size_t i = 0; i < all->n; i++) {
        if (keep[i]) {
            all->v[k++] = all->v[i];
            continue;
        }
        gravity_svc_release(&all->v[i]);
    }
    all->n = k;
out:
    gr_free(copy);
    gr_free(keep);
    return rc;
}

/* Describes every service; drops the ones that cannot say their port. */
static void describe_all(const struct gravity_env *env, struct gravity_svcs *all)
{
    size_t k = 0;

    for (size_t i = 0; i < all->n; i++) {
        if (gravity_svc_describe(env, &all->v[i]) == 0) {
            all->v[k++] = all->v[i];
            continue;
        }
        fprintf(stderr, "gravity: skipping '%s'\n", all->v[i].id);
        gravity_svc_release(&all->v[i]);
    }
    all->n = k;
}

static int prepare_dirs(const struct gravity_env *env, const struct gravity_svcs *all)
{
    char *logs = gravity_strf("%s/logs", env->data_dir);
    int rc = gravity_mkdirs(logs);

    if (rc < 0)
        fprintf(stderr, "gravity: cannot create '%s': %s\n", logs, strerror(errno));
    for (size_t i = 0; rc == 0 && i < all->n; i++) {
        char *d = gravity_svc_data_dir(env, &all->v[i]);

        rc = gravity_mkdirs(d);
        if (rc < 0)
            fprintf(stderr, "gravity: cannot create '%s': %s\n", d, strerror(errno));
        gr_free(d);
    }
    gr_free(logs);
    return rc;
}

/* Whether something already listens on 127.0.0.1:@port (a leftover process, another app). */
static bool port_busy(int port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    bool busy;

    if (fd < 0)
        return false;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    busy = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno == EADDRINUSE;
    close(fd);
    return busy;
}

/* Warns about ports that cannot work; the services are started anyway and will say why. */
static void check_ports(const struct gravity_svcs *all)
{
    for (size_t i = 0; i < all->n; i++) {
        const struct gravity_svc *v = &all->v[i];
        char port[16];

        snprintf(port, sizeof(port), "%d", v->port);
        for (size_t j = 0; j < i; j++) {
            if (all->v[j].port == v->port)
                gr_log_warn("port used by two services", "port", port, "service", v->id, "other",
                            all->v[j].id);
        }
        if (port_busy(v->port))
            gr_log_warn("port already in use by another process", "port", port, "service", v->id);
    }
}

static bool already_running(const struct gravity_env *env)
{
    json_t *st = NULL;
    bool yes = false;

    if (gravity_state_read(env, &st) == 0) {
        pid_t pid = (pid_t)json_integer_value(json_object_get(st, "pid"));

        if (pid != getpid() && gravity_pid_alive(pid)) {
            fprintf(stderr, "gravity: already running (pid %d) with data in '%s'\n", (int)pid,
                    env->data_dir);
            yes = true;
        }
    }
    json_decref(st);
    return yes;
}

int gravity_cmd_up(const struct gravity_env *env, int argc, char **argv)
{
    struct sup s = { .env = env, .sfd = -1, .devnull = -1 };
    const char *only = NULL;
    sigset_t set;
    char *state = NULL;
    int rc = GRAVITY_EXIT_FAIL;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strncmp(argv[i], "--only=", 7) == 0) {
            only = argv[i] + 7;
        } else {
            fprintf(stderr, "gravity: up: unexpected argument '%s'\n", argv[i]);
            return GRAVITY_EXIT_USAGE;
        }
    }
    /* Block the signals before any child exists, so none is lost or handled by default. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (gravity_svcs_scan(env, &s.svcs) < 0)
        goto out;
    if (only && select_only(&s.svcs, only) < 0) {
        rc = GRAVITY_EXIT_USAGE;
        goto out;
    }
    describe_all(env, &s.svcs);
    if (s.svcs.n == 0) {
        fprintf(stderr, "gravity: no service to start in '%s'\n", env->bin_dir);
        goto out;
    }
    if (already_running(env) || prepare_dirs(env, &s.svcs) < 0)
        goto out;
    check_ports(&s.svcs);
    s.sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    s.devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (s.sfd < 0 || s.devnull < 0) {
        fprintf(stderr, "gravity: cannot set up signals: %s\n", strerror(errno));
        goto out;
    }
    if (gravity_creds_init(&s.creds) < 0) {
        fprintf(stderr, "gravity: cannot make a service secret: %s\n", strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < s.svcs.n; i++) {
        if (s.svcs.v[i].number == 2)
            s.creds.discovery_port = s.svcs.v[i].port;
        if (s.svcs.v[i].number == 4)
            s.creds.config_port = s.svcs.v[i].port;
    }
    s.started_at = time(NULL);
    state = gravity_state_path(env);
    rc = supervise(&s);
    unlink(state);
out:
    if (s.sfd >= 0)
        close(s.sfd);
    if (s.devnull >= 0)
        close(s.devnull);
    gr_free(state);
    gravity_svcs_release(&s.svcs);
    gravity_creds_wipe(&s.creds);
    return rc;
}
