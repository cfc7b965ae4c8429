/*
 * product_json.c - the JSON text of products and variants, written straight from database rows
 * into one growing buffer. product_doc.c renders the stored documents of a product (doc_full,
 * doc_public) with product_out_product, and reads send those documents as they are, so a page
 * of products costs no jansson tree, no second dump and no re-parse of every stored
 * attributes/options object. The write paths get the text of one row parsed into a json_t
 * (product_row_json, product_variant_json), so this file is the only place that defines the
 * shape of a product in the API.
 *
 * Bytes are those jansson's compact dump gave for the same rows: keys in the same order,
 * strings escaped like jansson (\" \\ \b \f \n \r \t, other control characters as \u00XX),
 * and a stored object text is copied as it is when it is a well-formed JSON object (it was
 * written by gr_json_dump, so re-dumping it would give the same bytes), or "{}" otherwise.
 */
#include <string.h>

#include "product.h"

/* Room for any number this file writes, sign included. */
#define INT_TEXT_MAX 24

/* Depth of a stored object text accepted by obj_valid (the service writes depth 1). */
#define STORED_DEPTH_MAX 32

static void out_free(void *arg)
{
    struct product_out *o = arg;

    gr_free(o->p);
    o->p = NULL;
}

struct product_out *product_out_new(struct gr_arena *a, size_t cap)
{
    struct product_out *o = gr_arena_calloc(a, sizeof(*o));

    if (cap < 256)
        cap = 256;
    if (cap > PRODUCT_OUT_MAX)
        cap = PRODUCT_OUT_MAX;
    o->p = gr_xmalloc(cap);
    o->cap = cap;
    gr_arena_defer(a, out_free, o);
    return o;
}

/* Makes room for @n more bytes; false (and toobig set) beyond PRODUCT_OUT_MAX. */
static bool out_room(struct product_out *o, size_t n)
{
    size_t cap = o->cap;

    if (o->toobig)
        return false;
    if (n <= cap - o->len)
        return true;
    if (n > PRODUCT_OUT_MAX - o->len) {
        o->toobig = true;
        return false;
    }
    while (n > cap - o->len)
        cap = cap > PRODUCT_OUT_MAX / 2 ? PRODUCT_OUT_MAX : 2 * cap;
    o->p = gr_xrealloc(o->p, cap);
    o->cap = cap;
    return true;
}

/* product_out_mem for this file's many short writes: the common case is inlined. */
static inline void put(struct product_out *o, const char *s, size_t n)
{
    if (n > o->cap - o->len && !out_room(o, n))
        return;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* Appends a string literal. */
#define LIT(o, s) put((o), "" s, sizeof(s) - 1)

void product_out_mem(struct product_out *o, const char *s, size_t n)
{
    put(o, s, n);
}

void product_out_int(struct product_out *o, long long v)
{
    char tmp[INT_TEXT_MAX];
    size_t i = sizeof(tmp);
    /* Unsigned, so that LLONG_MIN negates without overflow. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        tmp[--i] = '-';
    put(o, tmp + i, sizeof(tmp) - i);
}

/* The escape of byte @c inside a JSON string as jansson writes it, in @esc; its length. */
static size_t escape(unsigned char c, char esc[6])
{
    static const char hex[] = "0123456789ABCDEF";

    esc[0] = '\\';
    switch (c) {
    case '"':
    case '\\':
        esc[1] = (char)c;
        return 2;
    case '\b':
        esc[1] = 'b';
        return 2;
    case '\f':
        esc[1] = 'f';
        return 2;
    case '\n':
        esc[1] = 'n';
        return 2;
    case '\r':
        esc[1] = 'r';
        return 2;
    case '\t':
        esc[1] = 't';
        return 2;
    default:
        esc[1] = 'u';
        esc[2] = '0';
        esc[3] = '0';
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
}

void product_out_str(struct product_out *o, const char *s)
{
    size_t run = 0;

    if (s == NULL) {
        LIT(o, "null");
        return;
    }
    put(o, "\"", 1);
    for (;; s += run + 1) {
        unsigned char c;
        char esc[6];

        /* Copy the longest run that needs no escape in one go. */
        for (run = 0; (c = (unsigned char)s[run]) >= 0x20 && c != '"' && c != '\\'; run++)
            ;
        put(o, s, run);
        if (c == '\0')
            break;
        put(o, esc, escape(c, esc));
    }
    put(o, "\"", 1);
}

/* ---- validation of stored object texts ----------------------------------------------------- */

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return s;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The end of the string literal at @s (on its opening quote), or NULL. */
static const char *string_end(const char *s)
{
    for (s++;; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"')
            return s + 1;
        if (c < 0x20)
            return NULL; /* control characters, and the end of the text */
        if (c != '\\')
            continue;
        s++;
        if (*s == 'u') {
            if (!is_hex(s[1]) || !is_hex(s[2]) || !is_hex(s[3]) || !is_hex(s[4]))
                return NULL;
            s += 4;
        } else if (strchr("\"\\/bfnrt", *s) == NULL || *s == '\0') {
            return NULL;
        }
    }
}

/* The end of the number at @s, or NULL (RFC 8259 grammar). */
static const char *number_end(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (is_digit(*s))
        while (is_digit(*s))
            s++;
    else
        return NULL;
    if (*s == '.') {
        if (!is_digit(*++s))
            return NULL;
        while (is_digit(*s))
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!is_digit(*s))
            return NULL;
        while (is_digit(*s))
            s++;
    }
    return s;
}

static const char *value_end(const char *s, int depth);

/* The end of the object or array at @s (on its bracket), or NULL. */
static const char *container_end(const char *s, int depth)
{
    char close = *s == '{' ? '}' : ']';
    bool object = *s == '{';

    if (depth >= STORED_DEPTH_MAX)
        return NULL;
    s = skip_ws(s + 1);
    if (*s == close)
        return s + 1;
    for (;;) {
        if (object) {
            if (*s != '"')
                return NULL;
            s = string_end(s);
            if (s == NULL)
                return NULL;
            s = skip_ws(s);
            if (*s != ':')
                return NULL;
            s = skip_ws(s + 1);
        }
        s = value_end(s, depth + 1);
        if (s == NULL)
            return NULL;
        s = skip_ws(s);
        if (*s == close)
            return s + 1;
        if (*s != ',')
            return NULL;
        s = skip_ws(s + 1);
    }
}

static const char *value_end(const char *s, int depth)
{
    switch (*s) {
    case '{':
    case '[':
        return container_end(s, depth);
    case '"':
        return string_end(s);
    case 't':
        return strncmp(s, "true", 4) == 0 ? s + 4 : NULL;
    case 'f':
        return strncmp(s, "false", 5) == 0 ? s + 5 : NULL;
    case 'n':
        return strncmp(s, "null", 4) == 0 ? s + 4 : NULL;
    default:
        return number_end(s);
    }
}

/* True when @s is one JSON object and nothing else but whitespace. */
static bool obj_valid(const char *s)
{
    s = skip_ws(s);
    if (*s != '{')
        return false;
    s = container_end(s, 0);
    return s != NULL && *skip_ws(s) == '\0';
}

void product_out_obj_text(struct product_out *o, const char *text)
{
    if (text == NULL || (strcmp(text, "{}") != 0 && !obj_valid(text)))
        text = "{}";
    put(o, text, strlen(text));
}

/* ---- products and variants ----------------------------------------------------------------- */

/* {"amount":N,"currency":"xxx"} (the currency cut to 3 bytes, like struct gr_money). */
static void out_money(struct product_out *o, long long amount, const char *currency)
{
    char cur[4] = "";

    if (currency != NULL) {
        size_t n = strlen(currency);
        if (n > 3)
            n = 3;
        memcpy(cur, currency, n);
        cur[n] = '\0';
    }
    LIT(o, "{\"amount\":");
    product_out_int(o, amount);
    LIT(o, ",\"currency\":");
    product_out_str(o, cur);
    put(o, "}", 1);
}

/* Product row @i of @rows as an object that is still open after "updated_at". */
static void out_product_open(struct product_out *o, const struct gr_db_rows *rows, size_t i)
{
    LIT(o, "{\"id\":");
    product_out_str(o, gr_db_text(rows, i, 0));
    LIT(o, ",\"title\":");
    product_out_str(o, gr_db_text(rows, i, 1));
    LIT(o, ",\"slug\":");
    product_out_str(o, gr_db_text(rows, i, 2));
    LIT(o, ",\"description\":");
    product_out_str(o, gr_db_text(rows, i, 3));
    LIT(o, ",\"brand\":");
    product_out_str(o, gr_db_text(rows, i, 4));
    LIT(o, ",\"status\":");
    product_out_str(o, gr_db_text(rows, i, 5));
    LIT(o, ",\"category_id\":");
    product_out_str(o, gr_db_text(rows, i, 6));
    LIT(o, ",\"attributes\":");
    product_out_obj_text(o, gr_db_text(rows, i, 7));
    LIT(o, ",\"price\":");
    if (!gr_db_isnull(rows, i, 8) && !gr_db_isnull(rows, i, 10)) {
        const char *cur = gr_db_text(rows, i, 10);
        LIT(o, "{\"min\":");
        out_money(o, gr_db_int(rows, i, 8), cur);
        LIT(o, ",\"max\":");
        out_money(o, gr_db_int(rows, i, 9), cur);
        put(o, "}", 1);
    } else {
        LIT(o, "null");
    }
    LIT(o, ",\"version\":");
    product_out_int(o, gr_db_int(rows, i, PCOL_VERSION));
    LIT(o, ",\"created_at\":");
    product_out_str(o, gr_db_text(rows, i, PCOL_CREATED));
    LIT(o, ",\"updated_at\":");
    product_out_str(o, gr_db_text(rows, i, 13));
}

/* Variant row @i of @rows whose VARIANT_COLS start at column @b, as an object. */
static void out_variant(struct product_out *o, const struct gr_db_rows *rows, size_t i, size_t b)
{
    LIT(o, "{\"id\":");
    product_out_str(o, gr_db_text(rows, i, b));
    LIT(o, ",\"product_id\":");
    product_out_str(o, gr_db_text(rows, i, b + 1));
    LIT(o, ",\"sku\":");
    product_out_str(o, gr_db_text(rows, i, b + VCOL_SKU));
    LIT(o, ",\"price\":");
    out_money(o, gr_db_int(rows, i, b + VCOL_AMOUNT), gr_db_text(rows, i, b + VCOL_CURRENCY));
    LIT(o, ",\"weight_g\":");
    if (gr_db_isnull(rows, i, b + 5))
        LIT(o, "null");
    else
        product_out_int(o, gr_db_int(rows, i, b + 5));
    LIT(o, ",\"options\":");
    product_out_obj_text(o, gr_db_text(rows, i, b + 6));
    if (gr_db_int(rows, i, b + VCOL_ARCHIVED) != 0)
        LIT(o, ",\"archived\":true");
    else
        LIT(o, ",\"archived\":false");
    LIT(o, ",\"version\":");
    product_out_int(o, gr_db_int(rows, i, b + VCOL_VERSION));
    LIT(o, ",\"created_at\":");
    product_out_str(o, gr_db_text(rows, i, b + 9));
    LIT(o, ",\"updated_at\":");
    product_out_str(o, gr_db_text(rows, i, b + 10));
    put(o, "}", 1);
}

void product_out_product(struct product_out *o, const struct product_rows *p, bool archived)
{
    const struct gr_db_rows *r = p->rows;
    const struct gr_db_rows *img = p->images;
    bool first = true;

    out_product_open(o, r, 0);
    LIT(o, ",\"variants\":[");
    for (size_t j = 0; j < p->nvariants; j++) {
        if (!archived && gr_db_int(r, j, PCOL_NCOLS + VCOL_ARCHIVED) != 0)
            continue;
        if (!first)
            put(o, ",", 1);
        first = false;
        out_variant(o, r, j, PCOL_NCOLS);
    }
    LIT(o, "],\"images\":[");
    for (size_t j = 0; img != NULL && j < gr_db_nrows(img); j++) {
        if (j != 0)
            put(o, ",", 1);
        LIT(o, "{\"file_id\":");
        product_out_str(o, gr_db_text(img, j, PIMG_FILE));
        LIT(o, ",\"position\":");
        product_out_int(o, gr_db_int(img, j, PIMG_POSITION));
        put(o, "}", 1);
    }
    LIT(o, "]}");
}

int product_out_send(struct gr_resp *resp, struct product_out *o, int status)
{
    if (o->toobig)
        return GR_ETOOBIG;
    resp->status = status;
    resp->body = o->p;
    resp->body_len = o->len;
    resp->content_type = "application/json";
    return 0;
}

/* The text of @o parsed (arena-owned); a bug when it is not JSON, since this file wrote it. */
static json_t *out_parse(struct gr_req *req, const struct product_out *o)
{
    json_t *v;

    if (o->toobig)
        GR_BUG("product text beyond PRODUCT_OUT_MAX");
    v = json_loadb(o->p, o->len, 0, NULL);
    if (v == NULL)
        GR_BUG("product text is not JSON");
    return product_own(req, v);
}

json_t *product_row_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i)
{
    struct product_out *o = product_out_new(req->arena, 1024);

    out_product_open(o, rows, i);
    put(o, "}", 1);
    return out_parse(req, o);
}

json_t *product_variant_json(struct gr_req *req, const struct gr_db_rows *rows, size_t i)
{
    struct product_out *o = product_out_new(req->arena, 512);

    out_variant(o, rows, i, 0);
    return out_parse(req, o);
}
