/*
 * test_metrics.c - the Prometheus registry: exact counts under 8 threads, gauges, histogram
 * bucket math, label escaping, get-or-create identity, collect callbacks, programming errors
 * (abort in a child process), and a line-by-line checker of the exposition format.
 *
 * With GR_METRICS_SAMPLE=<path> in the environment, test_sample also writes its rendered
 * output there, for check_metrics.py (prometheus_client parser) and `promtool check metrics`.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/metrics.h"

#define THREADS    8
#define PER_THREAD 100000

static int setup(void **state)
{
    struct gr_metrics *m = NULL;

    assert_int_equal(gr_metrics_new(&m), 0);
    *state = m;
    return 0;
}

static int teardown(void **state)
{
    gr_metrics_free(*state);
    return 0;
}

/* Renders @m into a fresh caller-freed string. */
static char *render(struct gr_metrics *m)
{
    struct gr_buf b = GR_BUF_INIT;

    assert_int_equal(gr_metrics_render(m, &b), 0);
    return gr_buf_detach(&b, NULL);
}

static void expect_line(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return;
    }
    fail_msg("line '%s' not found in:\n%s", line, text);
}

/* ---- a small exposition-format checker --------------------------------------------------- */

static bool name_char(char c, bool first, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
           (!first && c >= '0' && c <= '9');
}

static const char *skip_name(const char *p, bool colon)
{
    if (!name_char(*p, true, colon))
        return NULL;
    while (name_char(*p, false, colon))
        p++;
    return p;
}

static bool valid_value(const char *p, const char *end)
{
    char tmp[64], *e;
    size_t n = (size_t)(end - p);

    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    if (!strcmp(tmp, "NaN") || !strcmp(tmp, "+Inf") || !strcmp(tmp, "-Inf"))
        return true;
    strtod(tmp, &e);
    return *e == '\0';
}

/* True when @line is a comment or `name{labels} value` with well-formed labels. */
static bool valid_line(const char *line, const char *end)
{
    const char *p = line;

    if (*p == '#') {
        if (strncmp(p, "# TYPE ", 7) == 0) {
            p = skip_name(p + 7, true);
            if (!p || *p != ' ')
                return false;
            p++;
            return (end - p == 7 && !strncmp(p, "counter", 7)) ||
                   (end - p == 5 && !strncmp(p, "gauge", 5)) ||
                   (end - p == 9 && !strncmp(p, "histogram", 9));
        }
        if (strncmp(p, "# HELP ", 7) == 0) {
            p = skip_name(p + 7, true);
            return p && (*p == ' ' || p == end);
        }
        return false;
    }
    p = skip_name(p, true);
    if (!p)
        return false;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            p = skip_name(p, false);
            if (!p || *p++ != '=' || *p++ != '"')
                return false;
            while (*p != '"') {
                if (p >= end || *p == '\n')
                    return false;
                if (*p == '\\') {
                    p++;
                    if (*p != '\\' && *p != '"' && *p != 'n')
                        return false;
                }
                p++;
            }
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                return false;
        }
        p++;
    }
    if (*p++ != ' ')
        return false;
    return valid_value(p, end);
}

static void check_format(const char *text)
{
    const char *p = text, *nl;
    int lines = 0;

    assert_true(*text != '\0');
    assert_int_equal(text[strlen(text) - 1], '\n');
    for (; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        assert_non_null(nl);
        if (!valid_line(p, nl))
            fail_msg("bad exposition line: '%.*s'", (int)(nl - p), p);
        lines++;
    }
    assert_true(lines > 0);
}

static void test_checker_rejects(void **state)
{
    static const char *bad[] = {
        "x{a=\"b} 1\n",
        "x{a=b} 1\n",
        "x 1 2\n",
        "x{a=\"b\\q\"} 1\n",
        "9x 1\n",
        "x\n",
        "# TYPE x summaryy\n",
        "x{a=\"b\"c=\"d\"} 1\n",
        "x{} one\n",
        "#comment\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(valid_line(bad[i], strchr(bad[i], '\n')));
    assert_true(valid_line("x{} 1\n", strchr("x{} 1\n", '\n')));
    assert_true(valid_line("a:b_c{d=\"\\\"\\n\\\\\",e=\"\"} -1.5e-07\n",
                           strchr("a:b_c{d=\"\\\"\\n\\\\\",e=\"\"} -1.5e-07\n", '\n')));
}

/* ---- behaviour --------------------------------------------------------------------------- */

struct worker {
    struct gr_metrics *m;
    struct gr_counter *shared;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    /* Each thread also looks up (or creates) the series itself: it must be the same one. */
    struct gr_counter *mine =
        gr_metrics_counter(w->m, "hits_total", "Hits.", (const char *[]){ "route", "/x", NULL });
    struct gr_gauge *g = gr_metrics_gauge(w->m, "level", "Level.", NULL);

    for (int i = 0; i < PER_THREAD; i++) {
        gr_counter_add(i % 2 ? w->shared : mine, 1);
        gr_gauge_add(g, 2.0);
        gr_gauge_add(g, -1.0);
    }
    return NULL;
}

static void test_counter_threads(void **state)
{
    struct gr_metrics *m = *state;
    struct worker w[THREADS];
    pthread_t th[THREADS];
    struct gr_counter *c =
        gr_metrics_counter(m, "hits_total", "Hits.", (const char *[]){ "route", "/x", NULL });
    char *text;

    for (int t = 0; t < THREADS; t++) {
        w[t].m = m;
        w[t].shared = c;
        assert_int_equal(pthread_create(&th[t], NULL, worker_run, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    assert_int_equal(gr_counter_get(c), (uint64_t)THREADS * PER_THREAD);
    assert_true(gr_gauge_get(gr_metrics_gauge(m, "level", NULL, NULL)) ==
                (double)THREADS * PER_THREAD);
    text = render(m);
    expect_line(text, "hits_total{route=\"/x\"} 800000");
    expect_line(text, "level 800000");
    check_format(text);
    gr_free(text);
}

static void test_identity_and_order(void **state)
{
    struct gr_metrics *m = *state;
    struct gr_counter *a[300];
    char route[32], *text, *p1, *p2;

    for (int i = 0; i < 300; i++) {
        snprintf(route, sizeof(route), "/r/%d", i);
        a[i] = gr_metrics_counter(m, "req_total", "Requests.",
                                  (const char *[]){ "route", route, "status", "200", NULL });
        gr_counter_add(a[i], (uint64_t)i);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(route, sizeof(route), "/r/%d", i);
        assert_ptr_equal(
            a[i], gr_metrics_counter(m, "req_total", "ignored",
                                     (const char *[]){ "route", route, "status", "200", NULL }));
    }
    /* Other label values, label order or name are other series. */
    assert_ptr_not_equal(
        a[0], gr_metrics_counter(m, "req_total", NULL,
                                 (const char *[]){ "route", "/r/0", "status", "500", NULL }));
    assert_ptr_not_equal(
        a[0], gr_metrics_counter(m, "req_total", NULL,
                                 (const char *[]){ "status", "200", "route", "/r/0", NULL }));
    assert_ptr_not_equal(
        a[0], gr_metrics_counter(m, "req2_total", NULL,
                                 (const char *[]){ "route", "/r/0", "status", "200", NULL }));
    text = render(m);
    check_format(text);
    expect_line(text, "# HELP req_total Requests.");
    expect_line(text, "# TYPE req_total counter");
    expect_line(text, "req_total{route=\"/r/299\",status=\"200\"} 299");
    expect_line(text, "req_total{route=\"/r/0\",status=\"500\"} 0");
    /* One TYPE line per family, families and series in creation order. */
    p1 = strstr(text, "# TYPE req_total counter");
    assert_null(strstr(p1 + 1, "# TYPE req_total "));
    p1 = strstr(text, "req_total{route=\"/r/1\",");
    p2 = strstr(text, "req_total{route=\"/r/2\",");
    assert_true(p1 && p2 && p1 < p2);
    assert_true(strstr(text, "# TYPE req_total") < strstr(text, "# TYPE req2_total"));
    gr_free(text);
}

static void test_gauge(void **state)
{
    struct gr_metrics *m = *state;
    struct gr_gauge *g = gr_metrics_gauge(m, "temperature_celsius", "Temp.", NULL);
    char *text;

    gr_gauge_set(g, 21.5);
    gr_gauge_add(g, -0.25);
    assert_true(gr_gauge_get(g) == 21.25);
    text = render(m);
    expect_line(text, "# TYPE temperature_celsius gauge");
    expect_line(text, "temperature_celsius 21.25");
    gr_free(text);
    gr_gauge_set(g, 0.1);
    text = render(m);
    expect_line(text, "temperature_celsius 0.1"); /* shortest round-trip form */
    gr_free(text);
    gr_gauge_set(g, -1e300);
    text = render(m);
    expect_line(text, "temperature_celsius -1e+300");
    check_format(text);
    gr_free(text);
}

static void test_histogram(void **state)
{
    struct gr_metrics *m = *state;
    static const double b[] = { 0.125, 0.5, 1 };
    struct gr_histogram *h = gr_metrics_histogram(m, "job_seconds", "Job time.",
                                                  (const char *[]){ "q", "a", NULL }, b, 3);
    struct gr_histogram *d =
        gr_metrics_histogram(m, "http_request_duration_seconds", "Latency.", NULL, NULL, 0);
    char *text;

    gr_histogram_observe(h, 0.0625);
    gr_histogram_observe(h, 0.125); /* le is inclusive */
    gr_histogram_observe(h, 0.25);
    gr_histogram_observe(h, 1.0);
    gr_histogram_observe(h, 7.0);
    gr_histogram_observe(h, -2.0); /* below every bound: first bucket */
    gr_histogram_observe(d, 0.003);
    assert_ptr_equal(
        h, gr_metrics_histogram(m, "job_seconds", NULL, (const char *[]){ "q", "a", NULL }, b, 3));
    text = render(m);
    check_format(text);
    expect_line(text, "# TYPE job_seconds histogram");
    expect_line(text, "job_seconds_bucket{q=\"a\",le=\"0.125\"} 3");
    expect_line(text, "job_seconds_bucket{q=\"a\",le=\"0.5\"} 4");
    expect_line(text, "job_seconds_bucket{q=\"a\",le=\"1\"} 5");
    expect_line(text, "job_seconds_bucket{q=\"a\",le=\"+Inf\"} 6");
    expect_line(text, "job_seconds_sum{q=\"a\"} 6.4375");
    expect_line(text, "job_seconds_count{q=\"a\"} 6");
    /* Default buckets. */
    expect_line(text, "http_request_duration_seconds_bucket{le=\"0.001\"} 0");
    expect_line(text, "http_request_duration_seconds_bucket{le=\"0.0025\"} 0");
    expect_line(text, "http_request_duration_seconds_bucket{le=\"0.005\"} 1");
    expect_line(text, "http_request_duration_seconds_bucket{le=\"2.5\"} 1");
    expect_line(text, "http_request_duration_seconds_bucket{le=\"10\"} 1");
    expect_line(text, "http_request_duration_seconds_bucket{le=\"+Inf\"} 1");
    expect_line(text, "http_request_duration_seconds_sum 0.003");
    expect_line(text, "http_request_duration_seconds_count 1");
    gr_free(text);
}

static void test_escaping(void **state)
{
    struct gr_metrics *m = *state;
    struct gr_counter *c = gr_metrics_counter(
        m, "odd_total", "Help with \\ backslash\nand newline \"quoted\".",
        (const char *[]){ "path", "a\\b\"c\nd", "empty", "", "utf8", "caf\xc3\xa9 {x=1}", NULL });
    char *text;

    gr_counter_add(c, 3);
    text = render(m);
    check_format(text);
    expect_line(text, "# HELP odd_total Help with \\\\ backslash\\nand newline \"quoted\".");
    expect_line(text,
                "odd_total{path=\"a\\\\b\\\"c\\nd\",empty=\"\",utf8=\"caf\xc3\xa9 {x=1}\"} 3");
    gr_free(text);
}

static void refresh(void *arg)
{
    struct gr_metrics *m = arg;
    static int calls;

    /* Creating a series from a callback must not deadlock. */
    gr_gauge_set(gr_metrics_gauge(m, "outbox_pending", "Unsent outbox rows.", NULL), ++calls);
}

static void test_collect_and_process(void **state)
{
    struct gr_metrics *m = *state;
    char *text;

    gr_metrics_on_collect(m, refresh, m);
    text = render(m);
    expect_line(text, "outbox_pending 1");
    gr_free(text);
    text = render(m);
    check_format(text);
    expect_line(text, "outbox_pending 2");
    expect_line(text, "# TYPE process_resident_memory_bytes gauge");
    expect_line(text, "# TYPE process_cpu_seconds_total counter");
    expect_line(text, "# TYPE process_start_time_seconds gauge");
    expect_line(text, "# TYPE process_open_fds gauge");
    {
        const char *p = strstr(text, "\nprocess_resident_memory_bytes ");
        const char *s = strstr(text, "\nprocess_start_time_seconds ");
        const char *f = strstr(text, "\nprocess_open_fds ");
        double start, rss;

        assert_non_null(p);
        assert_non_null(s);
        assert_non_null(f);
        rss = strtod(p + 31, NULL);
        start = strtod(s + 28, NULL);
        assert_true(rss > 1e5);
        /* Started within the last hour (the test binary just started). */
        assert_true(start > (double)time(NULL) - 3600 && start <= (double)time(NULL) + 1);
        assert_true(strtod(f + 18, NULL) >= 3); /* stdin, stdout, stderr */
    }
    gr_free(text);
}

static void test_limit(void **state)
{
    struct gr_metrics *m = *state;
    struct gr_buf b;

    gr_metrics_counter(m, "a_total", "A.", NULL);
    gr_buf_init(&b, 16);
    assert_int_equal(gr_metrics_render(m, &b), GR_ETOOBIG);
    gr_buf_release(&b);
}

/* Runs @fn in a child and expects it to abort (GR_BUG). */
static void expect_bug(void (*fn)(struct gr_metrics *), struct gr_metrics *m)
{
    pid_t pid;
    int status = 0;

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Quiet child: the fatal line would only clutter the test output. */
        if (!freopen("/dev/null", "w", stderr))
            _exit(3);
        fn(m);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
}

static void bug_type(struct gr_metrics *m)
{
    gr_metrics_counter(m, "thing", NULL, NULL);
    gr_metrics_gauge(m, "thing", NULL, (const char *[]){ "a", "b", NULL });
}

static void bug_name(struct gr_metrics *m)
{
    gr_metrics_counter(m, "bad-name", NULL, NULL);
}

static void bug_label(struct gr_metrics *m)
{
    gr_metrics_counter(m, "ok_total", NULL, (const char *[]){ "__x", "1", NULL });
}

static void bug_le(struct gr_metrics *m)
{
    gr_metrics_histogram(m, "h", NULL, (const char *[]){ "le", "1", NULL }, NULL, 0);
}

static void bug_buckets(struct gr_metrics *m)
{
    static const double b[] = { 1, 0.5 };

    gr_metrics_histogram(m, "h2", NULL, NULL, b, 2);
}

static void bug_bucket_change(struct gr_metrics *m)
{
    static const double b[] = { 1, 2 };

    gr_metrics_histogram(m, "h3", NULL, NULL, b, 2);
    gr_metrics_histogram(m, "h3", NULL, (const char *[]){ "a", "b", NULL }, b, 1);
}

static void no_bug(struct gr_metrics *m)
{
    gr_metrics_counter(m, "fine:name_total", NULL, (const char *[]){ "_ok9", "v", NULL });
}

static void test_bugs(void **state)
{
    struct gr_metrics *m = *state;
    pid_t pid;
    int status = 0;

    expect_bug(bug_type, m);
    expect_bug(bug_name, m);
    expect_bug(bug_label, m);
    expect_bug(bug_le, m);
    expect_bug(bug_buckets, m);
    expect_bug(bug_bucket_change, m);
    /* And the control: a valid call in the same harness exits normally. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        no_bug(m);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_sample(void **state)
{
    struct gr_metrics *m = *state;
    const char *path = getenv("GR_METRICS_SAMPLE");
    struct gr_histogram *h;
    char *text;

    gr_counter_add(
        gr_metrics_counter(m, "http_requests_total", "HTTP requests.",
                           (const char *[]){ "method", "GET", "route", "/api/v1/products/{id}",
                                             "status", "200", NULL }),
        5);
    gr_counter_add(gr_metrics_counter(m, "http_requests_total", NULL,
                                      (const char *[]){ "method", "POST", "route", "/api/v1/orders",
                                                        "status", "422", NULL }),
                   1);
    h = gr_metrics_histogram(
        m, "http_request_duration_seconds", "HTTP request latency.",
        (const char *[]){ "method", "GET", "route", "/api/v1/products/{id}", NULL }, NULL, 0);
    gr_histogram_observe(h, 0.0042);
    gr_histogram_observe(h, 0.2);
    gr_gauge_set(gr_metrics_gauge(m, "outbox_pending", "Unsent outbox rows.", NULL), 3);
    gr_counter_add(gr_metrics_counter(m, "odd_total", "Escapes \\ and\nnewline.",
                                      (const char *[]){ "v", "a\\b\"c\nd", NULL }),
                   1);
    text = render(m);
    check_format(text);
    if (path) {
        FILE *f = fopen(path, "w");

        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
    }
    gr_free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects),
        cmocka_unit_test_setup_teardown(test_counter_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_and_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collect_and_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bugs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
