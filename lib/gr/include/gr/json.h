/*
 * gr/json.h - strict JSON on top of jansson (SERVICES.md section 0).
 *
 * gr_json_parse() is the only way request bodies become json_t: it rejects everything the
 * contract calls malformed (400: syntax, invalid UTF-8, duplicate keys, trailing bytes, depth
 * over GR_JSON_MAX_DEPTH, NUL in strings, integers that do not fit int64) and reports integers
 * beyond +-2^53 as validation errors (422) with their JSON Pointer. The typed readers then pull
 * fields out of objects, accumulating field errors (RFC 6901 pointers) in a struct gr_errs so a
 * handler reports every bad field at once and checks errs->n at the end.
 *
 * Ownership: documents returned by gr_json_parse() belong to the arena (released with it);
 * strings and sub-values handed out by the readers are borrowed from the document.
 */
#ifndef GR_JSON_H
#define GR_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/status.h"

/* Deepest allowed nesting of arrays/objects; the root container counts as depth 1. */
#define GR_JSON_MAX_DEPTH 32
/* Largest magnitude of an integer that survives a round trip through an IEEE double. */
#define GR_JSON_MAX_INT 9007199254740992LL

/**
 * Parses @len bytes at @buf strictly. Any JSON value is accepted at the root.
 *
 * Returns GR_EINVAL (HTTP 400) for syntax errors, invalid UTF-8 (including overlong forms and
 * encoded or escaped lone surrogates), duplicate object keys at any depth, trailing bytes other
 * than whitespace, nesting deeper than GR_JSON_MAX_DEPTH (checked by a byte pre-scan before
 * jansson runs, so a million '[' never recurse), "\u0000" in strings or keys, and numbers that
 * do not fit int64/double. Returns GR_EVALID (422) when an integer lies outside
 * [-GR_JSON_MAX_INT, GR_JSON_MAX_INT], with one error per such integer at its JSON Pointer.
 * Syntax errors add one error with field "" and a message giving line, column and byte offset.
 * @errs may be NULL when the caller only wants the code.
 *
 * On success *@out is a new reference whose json_decref is deferred on @a (it lives exactly as
 * long as the arena); on failure *@out is NULL.
 */
GR_MUST_CHECK int gr_json_parse(struct gr_arena *a, const char *buf, size_t len, json_t **out,
                                struct gr_errs *errs);

/* ---- typed readers ----------------------------------------------------------------------- */

/* Reader context: where error strings are allocated and where errors accumulate (both
 * borrowed, never NULL). */
struct gr_json_rd {
    struct gr_arena *a;
    struct gr_errs *errs;
};

enum {
    GR_JSON_OPTIONAL = 0,
    GR_JSON_REQUIRED = 1 << 0, /* absent key is an error "is required" */
    GR_JSON_NULLABLE = 1 << 1, /* JSON null is accepted (reported present, out zeroed) */
};

/*
 * Common contract of the readers below (gr_json_str .. gr_json_arr, and gr_json_money in
 * gr/money.h). Each looks up @key in object @obj, whose own pointer is @ptr ("" for the root);
 * errors go to @ptr + "/" + RFC 6901-escaped @key.
 *  - Absent key (or @obj NULL / not an object): returns 0, *out untouched, *present = false.
 *    With GR_JSON_REQUIRED it adds "is required" and returns GR_EVALID instead.
 *  - JSON null: with GR_JSON_NULLABLE returns 0, *present = true and *out set to NULL / 0 /
 *    false (the caller tells null from a value with json_is_null on the member if it cares);
 *    without it adds "must not be null" and returns GR_EVALID.
 *  - Wrong type or out of range: adds an error, returns GR_EVALID, *out untouched, *present =
 *    true.
 *  - Otherwise stores the value, *present = true, returns 0.
 * @present may be NULL. Errors accumulate across calls, so callers may ignore the return value
 * and test errs->n once at the end.
 */

/**
 * Checks that @obj (pointer @ptr) is an object whose keys all appear in the NULL-terminated
 * list @allowed (NULL = no keys allowed). Adds "unknown field" at each other key's pointer and
 * "must be an object" at @ptr for a non-object. Returns 0 or GR_EVALID.
 */
int gr_json_only(const struct gr_json_rd *r, json_t *obj, const char *ptr,
                 const char *const *allowed);

/**
 * String of @min_chars..@max_chars Unicode code points. *@out is borrowed from the document
 * (NUL-terminated, valid UTF-8). Messages: "must be a string", "must not be empty", "must be at
 * least N characters", "must be at most N characters".
 */
int gr_json_str(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, size_t min_chars, size_t max_chars, const char **out,
                bool *present);

/**
 * Integer literal in @min..@max. Reals (1.0, 19.99, 1e2), strings ("5") and booleans give
 * "must be an integer"; out of range gives "must be between MIN and MAX".
 */
int gr_json_int(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, long long min, long long max, long long *out, bool *present);

/** true or false; anything else gives "must be a boolean". */
int gr_json_bool(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                 unsigned flags, bool *out, bool *present);

/** Object member; *@out is borrowed. Anything else gives "must be an object". */
int gr_json_obj(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, json_t **out, bool *present);

/**
 * Array of at most @max_items elements; *@out is borrowed. Messages: "must be an array",
 * "must have at most N items". Elements are checked by the caller, using gr_json_ptr_idx().
 */
int gr_json_arr(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, size_t max_items, json_t **out, bool *present);

/* ---- JSON Pointers (RFC 6901) ------------------------------------------------------------ */

/** @ptr + "/" + @key with '~' -> "~0" and '/' -> "~1". Arena string. */
const char *gr_json_ptr_key(struct gr_arena *a, const char *ptr, const char *key);
/** @ptr + "/" + decimal @idx. Arena string. */
const char *gr_json_ptr_idx(struct gr_arena *a, const char *ptr, size_t idx);

/* ---- transformations --------------------------------------------------------------------- */

/**
 * Applies the RFC 7396 JSON Merge Patch @patch to the object @target in place: members whose
 * patch value is null are removed, object values merge recursively, anything else replaces
 * the member with a deep copy. Both are borrowed and must be objects (a PATCH body that is not
 * an object is a validation error for the caller to report): GR_EVALID otherwise, with
 * @target unchanged. @patch may be @target or part of it. Returns 0, or GR_EINTERNAL if jansson
 * cannot allocate (@target may then be partly patched).
 */
GR_MUST_CHECK int gr_json_merge_patch(json_t *target, json_t *patch);

/**
 * The general RFC 7396 MergePatch(@target, @patch) for any values, including non-object roots
 * (a non-object patch replaces the target, so a null patch gives JSON null). @target may be
 * NULL (treated as absent). Returns a new reference (caller json_decrefs), NULL only on
 * allocation failure. Inputs are not modified.
 */
json_t *gr_json_merge_patch_value(json_t *target, json_t *patch);

/**
 * Dumps @v compactly (JSON_COMPACT | JSON_ENCODE_ANY, keys in insertion order, UTF-8 not
 * escaped) into NUL-terminated arena memory. Returns GR_EINTERNAL if jansson fails (e.g. a
 * reference cycle).
 */
GR_MUST_CHECK int gr_json_dump(struct gr_arena *a, const json_t *v, struct gr_str *out);

/* Arena bytes a dump first tries to fit in: a document up to this size is serialised once. */
#define GR_JSON_DUMP_GUESS 4096
/**
 * Dumps @v with jansson @flags into NUL-terminated arena memory, its length into *@len; NULL
 * if jansson fails. One serialisation when the text fits GR_JSON_DUMP_GUESS bytes, else two.
 */
char *gr_json_dumpb(struct gr_arena *a, const json_t *v, size_t flags, size_t *len);

#endif
