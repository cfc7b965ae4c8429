/*
 * metrics.c - the Prometheus registry (gr/metrics.h).
 *
 * Families (one per metric name) sit in a list in creation order, each with its series in
 * creation order, so the output is stable. A hash table keyed by name plus the rendered label
 * string finds an existing series on get-or-create. Both are guarded by one mutex, taken only
 * to create or look up a series and to render. Values are atomics updated without the lock:
 * counters are uint64, gauges and histogram sums are doubles stored as their bit patterns and
 * updated with compare-and-swap, and histograms keep per-bucket (non-cumulative) counts whose
 * running sum is rendered, so +Inf always equals _count even while observations race with a
 * render. Process metrics are read fresh from /proc/self and getrusage at each render.
 */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/metrics.h"

#define MAX_COLLECT     16
#define LABELS_MAX      (16 * 1024) /* bytes of one rendered label set */
#define INITIAL_BUCKETS 64          /* hash table size, a power of two */

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

static const char *const kind_names[] = { "counter", "gauge", "histogram" };

static const double default_bounds[] = { .001, .0025, .005, .01, .025, .05, .1,
                                         .25,  .5,    1,    2.5, 5,    10 };

struct gr_counter {
    _Atomic uint64_t v;
};

struct gr_gauge {
    _Atomic uint64_t bits; /* a double */
};

struct gr_histogram {
    const double *bounds; /* the family's, nbounds of them */
    size_t nbounds;
    _Atomic uint64_t sum_bits; /* a double */
    _Atomic uint64_t *counts;  /* nbounds + 1, the last one for +Inf; not cumulative */
};

struct family;

struct series {
    struct series *next;      /* in the family, creation order */
    struct series *hash_next; /* in the hash chain */
    struct family *fam;
    char *labels; /* rendered `a="x",b="y"`, "" for none; owned */
    uint64_t hash;
    struct gr_counter counter;
    struct gr_gauge gauge;
    struct gr_histogram hist;
};

struct family {
    struct family *next; /* creation order */
    char *name;          /* owned */
    char *help;          /* owned, may be NULL */
    enum kind kind;
    double *bounds; /* histograms: owned copy */
    size_t nbounds;
    struct series *first, *last;
};

struct collect_cb {
    void (*fn)(void *);
    void *arg;
};

struct gr_metrics {
    pthread_mutex_t lock;
    struct family *families, *last_family;
    struct series **table; /* hash table of every series */
    size_t table_size;     /* power of two */
    size_t nseries;
    struct collect_cb collect[MAX_COLLECT];
    size_t ncollect;
};

/* ---- doubles in atomics ---------------------------------------------------------------- */

static uint64_t dbits(double v)
{
    uint64_t b;

    memcpy(&b, &v, sizeof(b));
    return b;
}

static double bitsd(uint64_t b)
{
    double v;

    memcpy(&v, &b, sizeof(v));
    return v;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(p, &old, dbits(bitsd(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- hot path ---------------------------------------------------------------------------- */

void gr_counter_add(struct gr_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t gr_counter_get(const struct gr_counter *c)
{
    return atomic_load_explicit(&c->v, memory_order_relaxed);
}

void gr_gauge_set(struct gr_gauge *g, double v)
{
    atomic_store_explicit(&g->bits, dbits(v), memory_order_relaxed);
}

void gr_gauge_add(struct gr_gauge *g, double v)
{
    atomic_add_double(&g->bits, v);
}

double gr_gauge_get(const struct gr_gauge *g)
{
    return bitsd(atomic_load_explicit(&g->bits, memory_order_relaxed));
}

void gr_histogram_observe(struct gr_histogram *h, double v)
{
    size_t lo = 0, hi = h->nbounds;

    /* First bound >= v; NaN compares false everywhere and lands in +Inf. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->counts[lo], 1, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v);
}

/* ---- registry ---------------------------------------------------------------------------- */

int gr_metrics_new(struct gr_metrics **out)
{
    struct gr_metrics *m = gr_xcalloc(1, sizeof(*m));

    pthread_mutex_init(&m->lock, NULL);
    m->table_size = INITIAL_BUCKETS;
    m->table = gr_xcalloc(m->table_size, sizeof(*m->table));
    *out = m;
    return 0;
}

void gr_metrics_free(struct gr_metrics *m)
{
    struct family *f, *fnext;
    struct series *s, *snext;

    if (!m)
        return;
    for (f = m->families; f; f = fnext) {
        fnext = f->next;
        for (s = f->first; s; s = snext) {
            snext = s->next;
            gr_free(s->hist.counts);
            gr_free(s->labels);
            gr_free(s);
        }
        gr_free(f->name);
        gr_free(f->help);
        gr_free(f->bounds);
        gr_free(f);
    }
    gr_free(m->table);
    pthread_mutex_destroy(&m->lock);
    gr_free(m);
}

void gr_metrics_on_collect(struct gr_metrics *m, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&m->lock);
    if (m->ncollect == MAX_COLLECT)
        GR_BUG("too many metrics collect callbacks");
    m->collect[m->ncollect].fn = fn;
    m->collect[m->ncollect].arg = arg;
    m->ncollect++;
    pthread_mutex_unlock(&m->lock);
}

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s || isdigit((unsigned char)*s))
        return false;
    for (; *s; s++) {
        char c = *s;

        if (!(isalnum((unsigned char)c) || c == '_' || (colon && c == ':')) || (c & 0x80))
            return false;
    }
    return true;
}

static int escape_into(struct gr_buf *b, const char *s, bool quote)
{
    int rc = 0;

    for (; *s && rc == 0; s++) {
        if (*s == '\\')
            rc = gr_buf_puts(b, "\\\\");
        else if (*s == '\n')
            rc = gr_buf_puts(b, "\\n");
        else if (quote && *s == '"')
            rc = gr_buf_puts(b, "\\\"");
        else
            rc = gr_buf_putc(b, *s);
    }
    return rc;
}

/* Renders @labels as `a="x",b="y"` into @b; bugs out on invalid names. */
static void render_labels(struct gr_buf *b, const char *const *labels, enum kind kind)
{
    int rc = 0;

    for (size_t i = 0; labels && labels[i]; i += 2) {
        const char *name = labels[i], *value = labels[i + 1];

        if (!value)
            GR_BUG("metric labels must come in name, value pairs");
        if (!valid_name(name, false) || strncmp(name, "__", 2) == 0 ||
            (kind == KIND_HISTOGRAM && strcmp(name, "le") == 0))
            GR_BUG("invalid metric label name");
        if (i > 0)
            rc = rc ? rc : gr_buf_putc(b, ',');
        rc = rc ? rc : gr_buf_puts(b, name);
        rc = rc ? rc : gr_buf_puts(b, "=\"");
        rc = rc ? rc : escape_into(b, value, true);
        rc = rc ? rc : gr_buf_putc(b, '"');
    }
    if (rc < 0)
        GR_BUG("metric label set too long");
}

static uint64_t hash_key(const char *name, const char *labels)
{
    uint64_t h = UINT64_C(14695981039346656037);

    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
    h = (h ^ 0xff) * UINT64_C(1099511628211); /* separator no name can contain */
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
    return h;
}

static void table_grow(struct gr_metrics *m)
{
    size_t size = m->table_size * 2;
    struct series **t = gr_xcalloc(size, sizeof(*t));

    for (size_t i = 0; i < m->table_size; i++) {
        struct series *s = m->table[i], *next;

        for (; s; s = next) {
            next = s->hash_next;
            s->hash_next = t[s->hash & (size - 1)];
            t[s->hash & (size - 1)] = s;
        }
    }
    gr_free(m->table);
    m->table = t;
    m->table_size = size;
}

static struct family *family_get(struct gr_metrics *m, const char *name, const char *help,
                                 enum kind kind, const double *bounds, size_t nbounds)
{
    struct family *f;

    for (f = m->families; f; f = f->next) {
        if (strcmp(f->name, name) == 0)
            break;
    }
    if (f) {
        if (f->kind != kind)
            GR_BUG("metric name reused with another type");
        if (kind == KIND_HISTOGRAM &&
            (f->nbounds != nbounds || memcmp(f->bounds, bounds, nbounds * sizeof(*bounds)) != 0))
            GR_BUG("histogram reused with other buckets");
        return f;
    }
    f = gr_xcalloc(1, sizeof(*f));
    f->name = gr_xstrdup(name);
    f->help = help && *help ? gr_xstrdup(help) : NULL;
    f->kind = kind;
    if (kind == KIND_HISTOGRAM) {
        f->bounds = gr_xmalloc(nbounds * sizeof(*bounds));
        memcpy(f->bounds, bounds, nbounds * sizeof(*bounds));
        f->nbounds = nbounds;
    }
    if (m->last_family)
        m->last_family->next = f;
    else
        m->families = f;
    m->last_family = f;
    return f;
}

static struct series *series_get(struct gr_metrics *m, const char *name, const char *help,
                                 const char *const *labels, enum kind kind, const double *bounds,
                                 size_t nbounds)
{
    struct gr_buf lb;
    struct series *s;
    struct family *f;
    uint64_t h;

    if (!valid_name(name, true))
        GR_BUG("invalid metric name");
    gr_buf_init(&lb, LABELS_MAX);
    render_labels(&lb, labels, kind);
    h = hash_key(name, gr_buf_cstr(&lb));

    pthread_mutex_lock(&m->lock);
    for (s = m->table[h & (m->table_size - 1)]; s; s = s->hash_next) {
        if (s->hash == h && strcmp(s->fam->name, name) == 0 &&
            strcmp(s->labels, gr_buf_cstr(&lb)) == 0)
            break;
    }
    if (s) {
        if (s->fam->kind != kind)
            GR_BUG("metric name reused with another type");
        if (kind == KIND_HISTOGRAM && (s->fam->nbounds != nbounds ||
                                       memcmp(s->fam->bounds, bounds, nbounds * sizeof(*bounds))))
            GR_BUG("histogram reused with other buckets");
        goto out;
    }
    f = family_get(m, name, help, kind, bounds, nbounds);
    s = gr_xcalloc(1, sizeof(*s));
    s->fam = f;
    s->labels = gr_xstrdup(gr_buf_cstr(&lb));
    s->hash = h;
    if (kind == KIND_HISTOGRAM) {
        s->hist.bounds = f->bounds;
        s->hist.nbounds = f->nbounds;
        s->hist.counts = gr_xcalloc(f->nbounds + 1, sizeof(*s->hist.counts));
    }
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    s->hash_next = m->table[h & (m->table_size - 1)];
    m->table[h & (m->table_size - 1)] = s;
    if (++m->nseries > m->table_size)
        table_grow(m);
out:
    pthread_mutex_unlock(&m->lock);
    gr_buf_release(&lb);
    return s;
}

struct gr_counter *gr_metrics_counter(struct gr_metrics *m, const char *name, const char *help,
                                      const char *const *labels)
{
    return &series_get(m, name, help, labels, KIND_COUNTER, NULL, 0)->counter;
}

struct gr_gauge *gr_metrics_gauge(struct gr_metrics *m, const char *name, const char *help,
                                  const char *const *labels)
{
    return &series_get(m, name, help, labels, KIND_GAUGE, NULL, 0)->gauge;
}

struct gr_histogram *gr_metrics_histogram(struct gr_metrics *m, const char *name, const char *help,
                                          const char *const *labels, const double *buckets,
                                          size_t nbuckets)
{
    if (!buckets) {
        buckets = default_bounds;
        nbuckets = sizeof(default_bounds) / sizeof(default_bounds[0]);
    }
    if (nbuckets > GR_METRICS_MAX_BUCKETS)
        GR_BUG("too many histogram buckets");
    for (size_t i = 0; i < nbuckets; i++) {
        if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
            GR_BUG("histogram buckets must be finite and strictly ascending");
    }
    return &series_get(m, name, help, labels, KIND_HISTOGRAM, buckets, nbuckets)->hist;
}

/* ---- rendering --------------------------------------------------------------------------- */

/* Formats @v as the shortest text that parses back to the same double (Go ParseFloat style). */
static void format_double(char out[32], double v)
{
    if (isnan(v)) {
        memcpy(out, "NaN", 4);
        return;
    }
    if (isinf(v)) {
        memcpy(out, v > 0 ? "+Inf" : "-Inf", 5);
        return;
    }
    /* Whole numbers print in full ("800000", not "8e+05"), like Go's FormatFloat(v, 'g'). */
    if (v == trunc(v) && fabs(v) < 1e15) {
        snprintf(out, 32, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static int put_head(struct gr_buf *out, const struct family *f)
{
    int rc = 0;

    if (f->help) {
        rc = gr_buf_printf(out, "# HELP %s ", f->name);
        rc = rc ? rc : escape_into(out, f->help, false);
        rc = rc ? rc : gr_buf_putc(out, '\n');
    }
    rc = rc ? rc : gr_buf_printf(out, "# TYPE %s %s\n", f->name, kind_names[f->kind]);
    return rc;
}

/* One sample line: name[suffix]{labels[,extra]} value. */
static int put_sample(struct gr_buf *out, const char *name, const char *suffix, const char *labels,
                      const char *extra, const char *value)
{
    bool any = *labels || extra;

    return gr_buf_printf(out, "%s%s%s%s%s%s%s %s\n", name, suffix, any ? "{" : "", labels,
                         *labels && extra ? "," : "", extra ? extra : "", any ? "}" : "", value);
}

static int put_histogram(struct gr_buf *out, const struct family *f, const struct series *s)
{
    char value[32], le[32], extra[48];
    uint64_t cum = 0;
    int rc = 0;

    for (size_t i = 0; i <= s->hist.nbounds && rc == 0; i++) {
        cum += atomic_load_explicit(&s->hist.counts[i], memory_order_relaxed);
        if (i < s->hist.nbounds)
            format_double(le, s->hist.bounds[i]);
        else
            memcpy(le, "+Inf", 5);
        snprintf(extra, sizeof(extra), "le=\"%s\"", le);
        snprintf(value, sizeof(value), "%" PRIu64, cum);
        rc = put_sample(out, f->name, "_bucket", s->labels, extra, value);
    }
    format_double(value, bitsd(atomic_load_explicit(&s->hist.sum_bits, memory_order_relaxed)));
    rc = rc ? rc : put_sample(out, f->name, "_sum", s->labels, NULL, value);
    snprintf(value, sizeof(value), "%" PRIu64, cum);
    rc = rc ? rc : put_sample(out, f->name, "_count", s->labels, NULL, value);
    return rc;
}

static int put_family(struct gr_buf *out, const struct family *f)
{
    char value[32];
    int rc = put_head(out, f);

    for (const struct series *s = f->first; s && rc == 0; s = s->next) {
        switch (f->kind) {
        case KIND_COUNTER:
            snprintf(value, sizeof(value), "%" PRIu64, gr_counter_get(&s->counter));
            rc = put_sample(out, f->name, "", s->labels, NULL, value);
            break;
        case KIND_GAUGE:
            format_double(value, gr_gauge_get(&s->gauge));
            rc = put_sample(out, f->name, "", s->labels, NULL, value);
            break;
        case KIND_HISTOGRAM:
            rc = put_histogram(out, f, s);
            break;
        }
    }
    return rc;
}

/* Reads a small /proc file into @buf (NUL-terminated); false if unreadable. */
static bool read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    ssize_t got;

    if (fd < 0)
        return false;
    while (n + 1 < size) {
        got = read(fd, buf + n, size - 1 - n);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = '\0';
    return n > 0;
}

static double resident_bytes(void)
{
    char buf[256], *p;
    unsigned long long pages;

    if (!read_small("/proc/self/statm", buf, sizeof(buf)))
        return 0;
    strtoull(buf, &p, 10); /* size */
    pages = strtoull(p, NULL, 10);
    return (double)pages * (double)sysconf(_SC_PAGESIZE);
}

/* Process start in Unix seconds: boot time + starttime (field 22 of /proc/self/stat). */
static double start_time_seconds(void)
{
    char stat[1024], proc_stat[8192], *p, *bt;
    unsigned long long start_ticks, btime;
    long tck = sysconf(_SC_CLK_TCK);

    if (!read_small("/proc/self/stat", stat, sizeof(stat)) ||
        !read_small("/proc/stat", proc_stat, sizeof(proc_stat)) || tck <= 0)
        return 0;
    p = strrchr(stat, ')'); /* comm may contain spaces and ')' */
    bt = strstr(proc_stat, "\nbtime ");
    if (!p || !bt)
        return 0;
    p++;
    /* After ")" come fields 3 (state) .. ; skip 3..21, field 22 is starttime. */
    while (*p == ' ')
        p++;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    start_ticks = strtoull(p, NULL, 10);
    btime = strtoull(bt + 7, NULL, 10);
    return (double)btime + (double)start_ticks / (double)tck;
}

static double open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    double n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n > 0 ? n - 1 : 0; /* not counting the descriptor of the listing itself */
}

static int put_process(struct gr_buf *out)
{
    struct rusage ru;
    double cpu = 0;
    char v[4][32];
    int rc;

    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)((int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                       ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) /
              1e6;
    format_double(v[0], resident_bytes());
    format_double(v[1], cpu);
    format_double(v[2], start_time_seconds());
    format_double(v[3], open_fds());
    rc = gr_buf_printf(out,
                       "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                       "# TYPE process_resident_memory_bytes gauge\n"
                       "process_resident_memory_bytes %s\n"
                       "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
                       "seconds.\n"
                       "# TYPE process_cpu_seconds_total counter\n"
                       "process_cpu_seconds_total %s\n"
                       "# HELP process_start_time_seconds Start time of the process since unix "
                       "epoch in seconds.\n"
                       "# TYPE process_start_time_seconds gauge\n"
                       "process_start_time_seconds %s\n"
                       "# HELP process_open_fds Number of open file descriptors.\n"
                       "# TYPE process_open_fds gauge\n"
                       "process_open_fds %s\n",
                       v[0], v[1], v[2], v[3]);
    return rc;
}

int gr_metrics_render(struct gr_metrics *m, struct gr_buf *out)
{
    struct collect_cb cbs[MAX_COLLECT];
    size_t ncb;
    int rc = 0;

    /* Callbacks run unlocked: they may create series, which takes the lock. */
    pthread_mutex_lock(&m->lock);
    ncb = m->ncollect;
    memcpy(cbs, m->collect, ncb * sizeof(cbs[0]));
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; i < ncb; i++)
        cbs[i].fn(cbs[i].arg);

    pthread_mutex_lock(&m->lock);
    for (const struct family *f = m->families; f && rc == 0; f = f->next)
        rc = put_family(out, f);
    pthread_mutex_unlock(&m->lock);
    if (rc == 0)
        rc = put_process(out);
    return rc;
}
