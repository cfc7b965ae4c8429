/*
 * money.c - ISO 4217 currency codes and the money value {"amount","currency"} of SERVICES.md
 * section 0. The currency table is a static, sorted list of the active ISO 4217 codes (SIX
 * "list one", including the transition pairs ang/xcg, sll/sle and zwl/zwg that are both still
 * listed) with their minor-unit exponents, searched with bsearch. Codes without minor units
 * (xau, xag, xpd, xpt, xdr, xba..xbd, xsu, xua, xts, xxx) are left out because an amount in
 * minor units means nothing for them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gr/money.h"

struct currency {
    char code[4];
    int digits;
};

/* Sorted by code (strcmp order); test_money looks up every code, so a break in the order
 * fails the tests. */
static const struct currency currencies[] = {
    { "aed", 2 }, { "afn", 2 }, { "all", 2 }, { "amd", 2 }, { "ang", 2 }, { "aoa", 2 },
    { "ars", 2 }, { "aud", 2 }, { "awg", 2 }, { "azn", 2 }, { "bam", 2 }, { "bbd", 2 },
    { "bdt", 2 }, { "bgn", 2 }, { "bhd", 3 }, { "bif", 0 }, { "bmd", 2 }, { "bnd", 2 },
    { "bob", 2 }, { "bov", 2 }, { "brl", 2 }, { "bsd", 2 }, { "btn", 2 }, { "bwp", 2 },
    { "byn", 2 }, { "bzd", 2 }, { "cad", 2 }, { "cdf", 2 }, { "che", 2 }, { "chf", 2 },
    { "chw", 2 }, { "clf", 4 }, { "clp", 0 }, { "cny", 2 }, { "cop", 2 }, { "cou", 2 },
    { "crc", 2 }, { "cuc", 2 }, { "cup", 2 }, { "cve", 2 }, { "czk", 2 }, { "djf", 0 },
    { "dkk", 2 }, { "dop", 2 }, { "dzd", 2 }, { "egp", 2 }, { "ern", 2 }, { "etb", 2 },
    { "eur", 2 }, { "fjd", 2 }, { "fkp", 2 }, { "gbp", 2 }, { "gel", 2 }, { "ghs", 2 },
    { "gip", 2 }, { "gmd", 2 }, { "gnf", 0 }, { "gtq", 2 }, { "gyd", 2 }, { "hkd", 2 },
    { "hnl", 2 }, { "htg", 2 }, { "huf", 2 }, { "idr", 2 }, { "ils", 2 }, { "inr", 2 },
    { "iqd", 3 }, { "irr", 2 }, { "isk", 0 }, { "jmd", 2 }, { "jod", 3 }, { "jpy", 0 },
    { "kes", 2 }, { "kgs", 2 }, { "khr", 2 }, { "kmf", 0 }, { "kpw", 2 }, { "krw", 0 },
    { "kwd", 3 }, { "kyd", 2 }, { "kzt", 2 }, { "lak", 2 }, { "lbp", 2 }, { "lkr", 2 },
    { "lrd", 2 }, { "lsl", 2 }, { "lyd", 3 }, { "mad", 2 }, { "mdl", 2 }, { "mga", 2 },
    { "mkd", 2 }, { "mmk", 2 }, { "mnt", 2 }, { "mop", 2 }, { "mru", 2 }, { "mur", 2 },
    { "mvr", 2 }, { "mwk", 2 }, { "mxn", 2 }, { "mxv", 2 }, { "myr", 2 }, { "mzn", 2 },
    { "nad", 2 }, { "ngn", 2 }, { "nio", 2 }, { "nok", 2 }, { "npr", 2 }, { "nzd", 2 },
    { "omr", 3 }, { "pab", 2 }, { "pen", 2 }, { "pgk", 2 }, { "php", 2 }, { "pkr", 2 },
    { "pln", 2 }, { "pyg", 0 }, { "qar", 2 }, { "ron", 2 }, { "rsd", 2 }, { "rub", 2 },
    { "rwf", 0 }, { "sar", 2 }, { "sbd", 2 }, { "scr", 2 }, { "sdg", 2 }, { "sek", 2 },
    { "sgd", 2 }, { "shp", 2 }, { "sle", 2 }, { "sll", 2 }, { "sos", 2 }, { "srd", 2 },
    { "ssp", 2 }, { "stn", 2 }, { "svc", 2 }, { "syp", 2 }, { "szl", 2 }, { "thb", 2 },
    { "tjs", 2 }, { "tmt", 2 }, { "tnd", 3 }, { "top", 2 }, { "try", 2 }, { "ttd", 2 },
    { "twd", 2 }, { "tzs", 2 }, { "uah", 2 }, { "ugx", 0 }, { "usd", 2 }, { "usn", 2 },
    { "uyi", 0 }, { "uyu", 2 }, { "uyw", 4 }, { "uzs", 2 }, { "ved", 2 }, { "ves", 2 },
    { "vnd", 0 }, { "vuv", 0 }, { "wst", 2 }, { "xaf", 0 }, { "xcd", 2 }, { "xcg", 2 },
    { "xof", 0 }, { "xpf", 0 }, { "yer", 2 }, { "zar", 2 }, { "zmw", 2 }, { "zwg", 2 },
    { "zwl", 2 },
};

static int cmp_currency(const void *key, const void *elem)
{
    const struct currency *c = elem;

    return strcmp(key, c->code);
}

static const struct currency *find(const char *code)
{
    if (!code || strlen(code) != 3)
        return NULL;
    for (size_t i = 0; i < 3; i++) {
        if (code[i] < 'a' || code[i] > 'z')
            return NULL;
    }
    return bsearch(code, currencies, sizeof(currencies) / sizeof(currencies[0]),
                   sizeof(currencies[0]), cmp_currency);
}

bool gr_money_currency_valid(const char *code)
{
    return find(code) != NULL;
}

int gr_money_minor_digits(const char *code)
{
    const struct currency *c = find(code);

    return c ? c->digits : -1;
}

int gr_json_money(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                  unsigned flags, struct gr_money *out, bool *present)
{
    static const char *const fields[] = { "amount", "currency", NULL };
    struct gr_money m = { 0 };
    const char *mptr, *code = NULL;
    json_t *v = NULL;
    int rc;

    rc = gr_json_obj(r, obj, ptr, key, flags, &v, present);
    if (rc < 0)
        return rc;
    if (json_is_object(obj) && json_is_null(json_object_get(obj, key))) {
        /* Accepted null (gr_json_obj already rejected it without GR_JSON_NULLABLE). */
        *out = (struct gr_money){ 0 };
        return 0;
    }
    if (!v)
        return 0;
    mptr = gr_json_ptr_key(r->a, ptr, key);
    if (gr_json_only(r, v, mptr, fields) < 0)
        rc = GR_EVALID;
    if (gr_json_int(r, v, mptr, "amount", GR_JSON_REQUIRED, 0, GR_MONEY_MAX_AMOUNT, &m.amount,
                    NULL) < 0)
        rc = GR_EVALID;
    if (gr_json_str(r, v, mptr, "currency", GR_JSON_REQUIRED, 0, SIZE_MAX, &code, NULL) < 0) {
        rc = GR_EVALID;
    } else if (!gr_money_currency_valid(code)) {
        gr_errs_addk(r->errs, r->a, mptr, "currency", "must be a lowercase ISO 4217 currency code");
        rc = GR_EVALID;
    }
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < sizeof(m.currency); i++)
        m.currency[i] = code[i]; /* three letters and the NUL, checked above */
    *out = m;
    return 0;
}

json_t *gr_money_to_json(const struct gr_money *m)
{
    return json_pack("{s:I,s:s}", "amount", (json_int_t)m->amount, "currency", m->currency);
}

int gr_money_add(struct gr_money *acc, const struct gr_money *m)
{
    if (strcmp(acc->currency, m->currency) != 0)
        return GR_EVALID;
    if (m->amount < 0 || acc->amount < 0 || m->amount > GR_MONEY_MAX_AMOUNT ||
        acc->amount > GR_MONEY_MAX_AMOUNT - m->amount)
        return GR_EVALID;
    acc->amount += m->amount;
    return 0;
}
