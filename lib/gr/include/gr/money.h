/*
 * gr/money.h - money values and ISO 4217 currency codes (SERVICES.md section 0).
 *
 * Money is {"amount":1999,"currency":"usd"}: an integer count of minor units in
 * 0..GR_MONEY_MAX_AMOUNT and a lowercase ISO 4217 code. The currency table is static and
 * read-only, so every function here is thread-safe.
 */
#ifndef GR_MONEY_H
#define GR_MONEY_H

#include <jansson.h>
#include <stdbool.h>

#include "gr/json.h"
#include "gr/status.h"

#define GR_MONEY_MAX_AMOUNT 99999999LL

struct gr_money {
    long long amount; /* minor units, e.g. cents */
    char currency[4]; /* lowercase ISO 4217 code, NUL-terminated */
};

/**
 * True if @code is exactly three lowercase letters naming an active ISO 4217 currency (funds
 * codes such as "usn" or "clf" included). Codes without minor units (precious metals "xau",
 * "xdr", "xts", "xxx", bond units) are not money and give false. NULL gives false.
 */
bool gr_money_currency_valid(const char *code);

/** Minor-unit exponent of @code: 2 for "usd", 0 for "jpy", 3 for "kwd", 4 for "clf"; -1 if
 * gr_money_currency_valid(@code) is false. */
int gr_money_minor_digits(const char *code);

/**
 * Reads a money object at @obj[@key] with the presence/null/flags semantics of the gr_json
 * readers (gr/json.h); on null with GR_JSON_NULLABLE *@out is zeroed. The object must contain
 * exactly "amount" and "currency": other members give "unknown field" at their pointer,
 * "amount" must be an integer 0..GR_MONEY_MAX_AMOUNT (19.99 or "1999" -> "must be an integer"
 * at ptr/key/amount), "currency" must be a valid lowercase code ("USD", "dollars" -> "must be
 * a lowercase ISO 4217 currency code" at ptr/key/currency). Returns 0 or GR_EVALID; *@out is
 * written only when the whole value is valid.
 */
int gr_json_money(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                  unsigned flags, struct gr_money *out, bool *present);

/** {"amount":N,"currency":"xxx"} as a new reference (caller json_decrefs); NULL only if
 * jansson cannot allocate. */
json_t *gr_money_to_json(const struct gr_money *m);

/**
 * Adds @m to @acc. GR_EVALID if the currencies differ (SERVICES.md: mixing currencies -> 422)
 * or the sum would leave 0..GR_MONEY_MAX_AMOUNT; @acc is then unchanged.
 */
GR_MUST_CHECK int gr_money_add(struct gr_money *acc, const struct gr_money *m);

#endif
