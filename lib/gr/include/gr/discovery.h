/*
 * gr/discovery.h - registration of a running service in 02-service-discovery (SERVICES §02).
 *
 * gr_discovery_start registers the instance from a background thread: it POSTs
 * {service, address, port, check:{kind:"ttl", ttl_s, deregister_after_s:60}} to
 * <discovery_url>/api/v1/registry/instances, retrying with jittered backoff (100 ms doubling
 * to 5 s) until the registry answers, then PUTs a heartbeat every ttl_s/3 and registers again
 * when a heartbeat is answered 404 (the registry removed the instance). ttl_s is DISCOVERY_TTL
 * (1..3600, default 10). Requests carry the process's service token (gr_svctoken_default),
 * when it has one; the registry requires registry:write.
 *
 * gr_discovery_stop stops the thread and DELETEs the instance (at most 2 s), so a draining
 * service leaves the registry before it stops serving.
 */
#ifndef GR_DISCOVERY_H
#define GR_DISCOVERY_H

#include <stddef.h>

#include "gr/status.h"

#define GR_DISCOVERY_URL_MAX      512
#define GR_DISCOVERY_ADDR_MAX     253
#define GR_DISCOVERY_TTL_DEFAULT  10
#define GR_DISCOVERY_DEREGISTER_S 60
#define GR_DISCOVERY_STOP_MS      2000

struct gr_discovery; /* opaque */

/**
 * The address to register from the environment into @out (@size bytes): DISCOVERY_ADDRESS
 * when set, else HOST unless it is empty, 0.0.0.0 or ::, else "127.0.0.1". GR_ETOOBIG when it
 * does not fit, GR_EINVAL when longer than GR_DISCOVERY_ADDR_MAX.
 */
GR_MUST_CHECK int gr_discovery_address(char *out, size_t size);

/**
 * Starts registering @service_name ([a-z0-9-]{1,63}) at @address (NULL: gr_discovery_address)
 * and @port (1..65535) with the registry at @discovery_url (http(s)://host:port, no trailing
 * slash needed). Returns at once; the thread keeps trying until the registry answers.
 * Errors: GR_EINVAL / GR_ECONFIG with one line in @err (@errlen bytes) for a bad argument or
 * DISCOVERY_TTL; *@out is NULL then.
 */
GR_MUST_CHECK int gr_discovery_start(const char *discovery_url, const char *service_name,
                                     const char *address, int port, struct gr_discovery **out,
                                     char *err, size_t errlen);

/** The registry's id of the instance ("" until registered), copied into @out (37 bytes). */
void gr_discovery_id(struct gr_discovery *d, char out[37]);

/** Stops the thread, deregisters (at most GR_DISCOVERY_STOP_MS) and frees @d. NULL is a no-op. */
void gr_discovery_stop(struct gr_discovery *d);

#endif
