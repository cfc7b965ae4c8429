/*
 * gr/svctoken.h - the service token: the bearer token a service presents when it calls another
 * service or the event bus (SERVICES §0: "service calls use client-credentials JWTs with role
 * service").
 *
 * A struct gr_svctoken hands the current token to any thread. It works in one of two modes:
 *
 * - static: SERVICE_TOKEN is set; that string is the token for the life of the process (custom
 *   setups, tests). Nothing is fetched.
 * - client credentials: SERVICE_CLIENT_ID and SERVICE_CLIENT_SECRET are set; a background
 *   thread obtains a token from the auth service at AUTH_URL (POST /api/v1/auth/token, form
 *   body grant_type=client_credentials, RFC 6749 §4.4), and renews it at 80 % of its
 *   expires_in, or sooner when a callee refused it (gr_svctoken_refused, at most once per
 *   refused_ms). While auth cannot be reached (it may start after us) the thread retries with
 *   jittered backoff; callers meanwhile get the last token that has not expired, or none (a
 *   caller without a token treats its callee as unavailable and retries, as the bus does).
 *
 * gr_main creates the process's provider from the environment and makes it the default
 * (gr_svctoken_default) before any thread starts; the bus's http backend and outbound HTTP
 * clients take their token from there. The client secret is never logged and is wiped from
 * memory when the provider is freed. Every function here is thread-safe.
 */
#ifndef GR_SVCTOKEN_H
#define GR_SVCTOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "gr/arena.h"
#include "gr/status.h"

#define GR_SVCTOKEN_MAX          8000  /* bytes of a token (fits an 8 KiB header line) */
#define GR_SVCTOKEN_RESP_MAX     65536 /* bytes of auth's answer */
#define GR_SVCTOKEN_FETCH_MS     5000  /* limit of one token request */
#define GR_SVCTOKEN_CONNECT_MS   2000  /* of its connection */
#define GR_SVCTOKEN_RETRY_MIN_MS 100   /* first pause after a failed request, doubling... */
#define GR_SVCTOKEN_RETRY_MAX_MS 2000  /* ...up to this (jittered) */
#define GR_SVCTOKEN_REFUSED_MS   5000  /* at most one early renewal per this many ms */
#define GR_SVCTOKEN_PATH         "/api/v1/auth/token"
#define GR_SVCTOKEN_AUTH_URL     "http://127.0.0.1:8001" /* default AUTH_URL */

/* What a provider is made from. Every string is borrowed (copied by gr_svctoken_new). */
struct gr_svctoken_opts {
    const char *token;         /* static mode: the token (SERVICE_TOKEN); NULL otherwise */
    const char *auth_url;      /* AUTH_URL: http(s)://host:port[/prefix], no trailing path */
    const char *client_id;     /* SERVICE_CLIENT_ID: 3..64 of a-z 0-9 . _ - */
    const char *client_secret; /* SERVICE_CLIENT_SECRET: 32..256 printable bytes */
    /* Tuning, 0 for the defaults above (tests shorten them). */
    int retry_min_ms;
    int retry_max_ms;
    int refused_ms;
};

/* A provider. Opaque; shared by every thread of the process. */
struct gr_svctoken;

/**
 * Reads SERVICE_TOKEN, AUTH_URL (default GR_SVCTOKEN_AUTH_URL), SERVICE_CLIENT_ID and
 * SERVICE_CLIENT_SECRET into @o (pointers into the environment) and validates them; starts
 * nothing. @o->token and @o->client_id are both NULL when the service has no service token.
 * SERVICE_TOKEN wins over the client pair. Used by gr_config_load, so a bad value stops
 * start-up. Errors: GR_ECONFIG with one line in @err naming the variable (a secret or token
 * is never echoed), also when only one of SERVICE_CLIENT_ID / SERVICE_CLIENT_SECRET is set.
 */
GR_MUST_CHECK int gr_svctoken_opts_from_env(struct gr_svctoken_opts *o, char *err, size_t errlen);

/**
 * Creates a provider. With @o->token it is static; otherwise @o->auth_url, @o->client_id and
 * @o->client_secret are all required and a thread starts fetching at once (it does not wait
 * for the first token: see gr_svctoken_wait). On success *@out is caller-freed with
 * gr_svctoken_free().
 * Errors: GR_ECONFIG with one line in @err (@errlen bytes) naming the bad value (SERVICE_TOKEN,
 * AUTH_URL, SERVICE_CLIENT_ID or SERVICE_CLIENT_SECRET; a secret is never echoed);
 * GR_EINTERNAL when libcurl or the thread cannot start.
 */
GR_MUST_CHECK int gr_svctoken_new(const struct gr_svctoken_opts *o, struct gr_svctoken **out,
                                  char *err, size_t errlen);

/**
 * Creates the provider the environment asks for: SERVICE_TOKEN (static) if set, else
 * SERVICE_CLIENT_ID and SERVICE_CLIENT_SECRET against AUTH_URL (default
 * GR_SVCTOKEN_AUTH_URL). Sets *@out to NULL and returns 0 when none of them is set.
 * Errors as gr_svctoken_new; also GR_ECONFIG when only one of the client pair is set.
 */
GR_MUST_CHECK int gr_svctoken_from_env(struct gr_svctoken **out, char *err, size_t errlen);

/** Stops the thread (waiting for a request in flight, at most GR_SVCTOKEN_FETCH_MS), wipes the
 * secret and the token, frees @t. NULL is a no-op. No other call on @t may be running. */
void gr_svctoken_free(struct gr_svctoken *t);

/**
 * Copies the current token, NUL-terminated, into @buf (@size bytes) and returns its length.
 * Errors: GR_EUNAVAIL when there is none (not obtained yet, or expired while auth was
 * unreachable); GR_ETOOBIG when @size is too small (GR_SVCTOKEN_MAX + 1 always suffices).
 */
GR_MUST_CHECK int gr_svctoken_copy(struct gr_svctoken *t, char *buf, size_t size);

/**
 * The current token as a string in @a (arena), or NULL when there is none (see
 * gr_svctoken_copy). For outbound HTTP clients: "Authorization: Bearer <it>".
 */
const char *gr_svctoken_get(struct gr_svctoken *t, struct gr_arena *a);

/**
 * Tells @t that a callee answered 401 to @token (borrowed; the string that was sent). When it
 * is the current token and no request to auth started in the last refused_ms, the thread
 * renews the token now; otherwise this is a no-op (static mode: always). The current token
 * stays in use until a new one arrives.
 */
void gr_svctoken_refused(struct gr_svctoken *t, const char *token);

/**
 * Waits up to @timeout_ms for a token newer than generation @after (0: any token) and stores
 * the current generation in *@gen (may be NULL). Each token obtained from auth is one
 * generation (1, 2, ...); a static token is generation 1.
 * Errors: GR_ETIMEOUT when none came in time.
 */
GR_MUST_CHECK int gr_svctoken_wait(struct gr_svctoken *t, uint64_t after, int timeout_ms,
                                   uint64_t *gen);

/** Requests sent to auth so far, successful or not (tests, diagnostics). */
unsigned gr_svctoken_requests(struct gr_svctoken *t);

/**
 * The process's provider (borrowed), or NULL when the service has no service token. Set by
 * gr_main before any thread starts and cleared after they all stopped.
 */
struct gr_svctoken *gr_svctoken_default(void);
/** gr_main's: makes @t (borrowed, may be NULL) the process's provider. */
void gr_svctoken_set_default(struct gr_svctoken *t);

#endif
