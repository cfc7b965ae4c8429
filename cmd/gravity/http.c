/*
 * http.c - the one HTTP call gravity makes: a GET to a service on 127.0.0.1 (/ready while
 * starting, /health for status) through libcurl, with a hard time limit, no proxy and a
 * bounded body.
 */
#include <curl/curl.h>

#include "gravity.h"

static size_t on_body(char *p, size_t size, size_t nmemb, void *userdata)
{
    struct gr_buf *b = userdata;
    size_t n = size * nmemb;

    if (b && gr_buf_append(b, p, n) < 0)
        return 0; /* over the limit: abort the transfer */
    return n;
}

int gravity_http_get(const char *url, long timeout_ms, long *status, struct gr_buf *body)
{
    CURL *c = curl_easy_init();
    CURLcode cc;
    int rc = 0;

    *status = 0;
    if (!c)
        return GR_EINTERNAL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gravity");
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        rc = GR_EUNAVAIL;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
out:
    curl_easy_cleanup(c);
    return rc;
}
