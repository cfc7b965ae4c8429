/*
 * gr/status.h - error codes shared by every gr module, and field-level error lists.
 *
 * A function that can fail returns int: 0 on success, a negative GR_E* code on failure
 * (STYLE R7). The HTTP layer maps each code to a status and an RFC 9457 problem type in one
 * table (gr_err_http_status, gr_err_name). Field errors (JSON Pointers or "query.<name>") are
 * collected in a struct gr_errs that the handler's response carries.
 */
#ifndef GR_STATUS_H
#define GR_STATUS_H

#include <stddef.h>

#define GR_MUST_CHECK   __attribute__((warn_unused_result))
#define GR_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* X-macro: code, value, HTTP status, problem slug, title. */
#define GR_ERRNO_MAP(X)                                                                            \
    X(GR_EINVAL, -1, 400, "malformed_request", "Malformed request")                                \
    X(GR_EUNAUTH, -2, 401, "unauthorized", "Unauthorized")                                         \
    X(GR_EFORBIDDEN, -3, 403, "forbidden", "Forbidden")                                            \
    X(GR_ENOTFOUND, -4, 404, "not_found", "Not found")                                             \
    X(GR_EMETHOD, -5, 405, "method_not_allowed", "Method not allowed")                             \
    X(GR_ECONFLICT, -6, 409, "conflict", "Conflict")                                               \
    X(GR_ETOOBIG, -7, 413, "payload_too_large", "Payload too large")                               \
    X(GR_EMEDIA, -8, 415, "unsupported_media_type", "Unsupported media type")                      \
    X(GR_EVALID, -9, 422, "validation_error", "Validation failed")                                 \
    X(GR_ERATE, -10, 429, "rate_limited", "Too many requests")                                     \
    X(GR_EHDRTOOBIG, -11, 431, "headers_too_large", "Request header fields too large")             \
    X(GR_EINTERNAL, -12, 500, "internal_error", "Internal error")                                  \
    X(GR_EUNAVAIL, -13, 503, "unavailable", "Service unavailable")                                 \
    X(GR_ETIMEOUT, -14, 504, "timeout", "Timed out")                                               \
    X(GR_EIO, -15, 500, "io_error", "I/O error")                                                   \
    X(GR_EDB, -16, 500, "database_error", "Database error")                                        \
    X(GR_EBUSY, -17, 503, "busy", "Busy")                                                          \
    X(GR_ECONFIG, -18, 500, "config_error", "Configuration error")                                 \
    X(GR_EPRECOND, -19, 412, "precondition_failed", "Precondition failed")

enum gr_errno {
    GR_OK = 0,
#define GR__ERRNO_ENUM(name, val, http, slug, title) name = (val),
    GR_ERRNO_MAP(GR__ERRNO_ENUM)
#undef GR__ERRNO_ENUM
};

/** Human-readable text for a code (static string, never NULL). */
const char *gr_strerror(int code);
/** Problem slug for a code, e.g. "not_found" (static string, never NULL). */
const char *gr_err_name(int code);
/** HTTP status for a code; 200 for 0, 500 for unknown codes. */
int gr_err_http_status(int code);
/** The GR_E* code whose HTTP status is @status (first match), or GR_EINTERNAL. */
int gr_err_from_http_status(int status);

/* ---- field-level errors ------------------------------------------------------------------ */

#define GR_ERRS_MAX 32

struct gr_arena;

struct gr_field_err {
    const char *field;   /* JSON Pointer ("/variants/0/sku") or "query.<name>"; arena */
    const char *message; /* arena */
};

/*
 * A bounded list of field errors. Strings live in the arena given to gr_errs_add. When more
 * than GR_ERRS_MAX errors are added, the extra ones are counted in `dropped` and not stored.
 */
struct gr_errs {
    struct gr_field_err items[GR_ERRS_MAX];
    size_t n;
    size_t dropped;
};

#define GR_ERRS_INIT                                                                               \
    {                                                                                              \
        .n = 0                                                                                     \
    }

/** Adds one error; @field is copied, @fmt formatted into @a. */
void gr_errs_add(struct gr_errs *e, struct gr_arena *a, const char *field, const char *fmt, ...)
    GR_PRINTF(4, 5);
/** Same with a JSON Pointer made of @prefix + "/" + escaped @key (RFC 6901 escaping). */
void gr_errs_addk(struct gr_errs *e, struct gr_arena *a, const char *prefix, const char *key,
                  const char *fmt, ...) GR_PRINTF(5, 6);

#endif
