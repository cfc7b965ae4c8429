/*
 * gr/metrics.h - a Prometheus registry rendered in the text exposition format 0.0.4.
 *
 * A series is one metric name plus a fixed label set. Getting or creating a series takes the
 * registry mutex; the returned pointer stays valid until gr_metrics_free(), so callers cache
 * it, and updates through it are lock-free atomics (the hot path of every request). Rendering
 * walks the registry under the mutex and reads each value atomically.
 *
 * Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]* (not
 * starting with "__", and never "le" on a histogram); anything else, a name reused with
 * another type, or a histogram reused with other buckets is a programming error (GR_BUG).
 */
#ifndef GR_METRICS_H
#define GR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "gr/status.h"

struct gr_buf;

struct gr_metrics;   /* the registry */
struct gr_counter;   /* one counter series */
struct gr_gauge;     /* one gauge series */
struct gr_histogram; /* one histogram series */

#define GR_METRICS_MAX_BUCKETS 64

/** Creates an empty registry into *@out (caller frees with gr_metrics_free). Always 0. */
GR_MUST_CHECK int gr_metrics_new(struct gr_metrics **out);
/** Frees the registry and every series in it (NULL is a no-op). Cached series pointers die. */
void gr_metrics_free(struct gr_metrics *m);

/**
 * Gets or creates the counter series @name{@labels}. @labels is NULL or a NULL-terminated
 * array of name, value pairs, e.g. (const char *[]){"method", "GET", "status", "200", NULL};
 * the same labels must be passed in the same order to get the same series. Values may hold
 * any text; they are escaped on output (\\, \", \n). @help is used by the first call for
 * @name (later ones are ignored). All strings are borrowed (copied). The result is owned by
 * the registry and stable until gr_metrics_free(). Thread-safe.
 */
struct gr_counter *gr_metrics_counter(struct gr_metrics *m, const char *name, const char *help,
                                      const char *const *labels);
/** Same for a gauge. */
struct gr_gauge *gr_metrics_gauge(struct gr_metrics *m, const char *name, const char *help,
                                  const char *const *labels);
/**
 * Same for a histogram. @buckets are strictly ascending finite upper bounds (at most
 * GR_METRICS_MAX_BUCKETS; +Inf is implicit), borrowed; NULL selects the default HTTP
 * latency buckets in seconds: .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10. Every
 * series of one name must use the same buckets.
 */
struct gr_histogram *gr_metrics_histogram(struct gr_metrics *m, const char *name, const char *help,
                                          const char *const *labels, const double *buckets,
                                          size_t nbuckets);

/** Adds @n to the counter. Lock-free, thread-safe. */
void gr_counter_add(struct gr_counter *c, uint64_t n);
/** Current value (for tests and health checks). */
uint64_t gr_counter_get(const struct gr_counter *c);
/** Sets the gauge. Lock-free, thread-safe. */
void gr_gauge_set(struct gr_gauge *g, double v);
/** Adds @v (negative to subtract) to the gauge. Lock-free, thread-safe. */
void gr_gauge_add(struct gr_gauge *g, double v);
/** Current value. */
double gr_gauge_get(const struct gr_gauge *g);
/** Records one observation @v: the first bucket with v <= bound, the sum and the count. */
void gr_histogram_observe(struct gr_histogram *h, double v);

/**
 * Registers @fn(@arg) to run at the start of every gr_metrics_render(), e.g. to refresh a
 * gauge from a DB count. Callbacks run outside the registry mutex, in registration order,
 * and may create or update series. @arg is borrowed and must outlive the registry.
 */
void gr_metrics_on_collect(struct gr_metrics *m, void (*fn)(void *), void *arg);

/**
 * Appends every family to @out: "# HELP" and "# TYPE" once per name, its series in creation
 * order; histograms as cumulative _bucket{le="…"} lines ending with le="+Inf", then _sum and
 * _count. Then the process metrics read from /proc/self and getrusage:
 * process_resident_memory_bytes, process_cpu_seconds_total, process_start_time_seconds and
 * process_open_fds. GR_ETOOBIG when @out reaches its limit (its contents are then partial).
 */
GR_MUST_CHECK int gr_metrics_render(struct gr_metrics *m, struct gr_buf *out);

#endif
