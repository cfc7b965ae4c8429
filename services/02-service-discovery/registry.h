/*
 * registry.h - service-discovery (SERVICES §02): the registry of running instances, their
 * health checks, blocking queries on the registry index and the checker thread.
 *
 * The registry index is a counter in the database (registry_index), bumped by every write
 * transaction that changes what readers see, so replicas on one PostgreSQL share it. Each
 * process also keeps a wait queue (gr_waitq) that its own writers notify after they commit;
 * blocking readers park on it without holding an HTTP thread (gr_req_wait) and re-read the
 * index at least once a second, so a change made by another replica is seen too.
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/router.h"
#include "gr/service.h"

#define REG_SOURCE          "/gravity/service-discovery"
#define REG_SERVICE_MAX     63
#define REG_ADDRESS_MAX     253
#define REG_TAGS_MAX        32
#define REG_TAG_MAX         128
#define REG_TTL_DEFAULT     10
#define REG_TTL_MAX         86400
#define REG_DEREG_DEFAULT   60
#define REG_WAIT_MAX_MS     60000
#define REG_CHECK_LOCK      720261 /* pg_try_advisory_xact_lock key of the checker */
#define REG_HTTP_TIMEOUT_MS 2000

/* The service state (req->app). */
struct registry {
    struct gr_db *db;
    struct gr_waitq *changed; /* notified after each local commit that moved the index */
    atomic_llong seen_idx;    /* highest index a blocking query read from the database */
    atomic_llong polled_ms;   /* when a parked blocking query last re-read it */
    pthread_mutex_t mu;       /* guards stop */
    pthread_cond_t tick;      /* the checker's pause */
    bool stop;
    bool running;
    pthread_t checker;
};

#define REGISTRY_NROUTES 7
extern const struct gr_route registry_routes[REGISTRY_NROUTES];

int instances_register(struct gr_req *req, struct gr_resp *resp);
int instances_heartbeat(struct gr_req *req, struct gr_resp *resp);
int instances_deregister(struct gr_req *req, struct gr_resp *resp);
int services_list(struct gr_req *req, struct gr_resp *resp);
int services_instances(struct gr_req *req, struct gr_resp *resp);
int prometheus_targets(struct gr_req *req, struct gr_resp *resp);
int instances_get(struct gr_req *req, struct gr_resp *resp);

/* Bumps the registry index inside the open transaction on @db. */
GR_MUST_CHECK int registry_bump(struct gr_db_conn *db);
/* The current registry index into *@idx. */
GR_MUST_CHECK int registry_index(struct gr_db_conn *db, struct gr_arena *a, int64_t *idx);
/* Wakes the blocking readers of this process (after a commit). */
void registry_notify(struct registry *r);
/* Emits @type with the instance row @id's snapshot (read inside the open transaction). */
GR_MUST_CHECK int registry_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type,
                                const char *id, const char *old_status);

/* The checker thread (checker.c). */
GR_MUST_CHECK int checker_start(struct registry *r);
void checker_stop(struct registry *r);

#endif
