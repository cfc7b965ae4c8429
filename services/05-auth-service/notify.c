/*
 * notify.c - the password-reset link goes straight to the notification service (07), never
 * on the bus (SERVICES §05): POST $NOTIFICATION_URL/api/v1/notifications with the link, best
 * effort (the reset endpoint answers 202 whatever happens, so nobody learns whether the email
 * has an account). Email verification links travel the same way (AUTH_VERIFY_LINK_BASE). Without
 * NOTIFICATION_URL the link is dropped with a log line that names no secret. AUTH_RESET_LINK_BASE
 * is the page that takes the token (default http://127.0.0.1:8000/reset-password?token=).
 */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "auth.h"
#include "gr/log.h"

static size_t sink(void *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static void link_send(struct gr_req *req, const char *email, const char *token,
                      const char *template, const char *link_env, const char *link_default)
{
    const char *base = getenv("NOTIFICATION_URL");
    const char *link_base = getenv(link_env);
    const char *svc_token = getenv("SERVICE_TOKEN");
    struct curl_slist *h = NULL;
    json_t *body;
    char *text, *url;
    CURL *c;
    CURLcode cc;
    long status = 0;

    if (!base || !*base) {
        gr_log_info("no NOTIFICATION_URL: link not sent", "template", template);
        return;
    }
    body = json_pack(
        "{s:s,s:s,s:s,s:{s:s}}", "channel", "email", "to", email, "template", template, "data",
        "link", gr_arena_printf(req->arena, "%s%s", link_base ? link_base : link_default, token));
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    url = gr_arena_printf(req->arena, "%s/api/v1/notifications", base);
    c = curl_easy_init();
    if (!c || !text) {
        gr_free(text);
        if (c)
            curl_easy_cleanup(c);
        return;
    }
    h = curl_slist_append(h, "Content-Type: application/json");
    if (svc_token)
        h = curl_slist_append(h,
                              gr_arena_printf(req->arena, "Authorization: Bearer %s", svc_token));
    h = curl_slist_append(h, gr_arena_printf(req->arena, "X-Request-Id: %s", req->request_id));
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK || status < 200 || status >= 300)
        gr_log_warn("link not delivered", "template", template, "error",
                    cc != CURLE_OK ? curl_easy_strerror(cc) : "notification service refused");
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    gr_free(text);
}

void auth_reset_link_send(struct gr_req *req, const char *email, const char *token)
{
    link_send(req, email, token, "password_reset", "AUTH_RESET_LINK_BASE",
              "http://127.0.0.1:8000/reset-password?token=");
}

void auth_verify_link_send(struct gr_req *req, const char *email, const char *token)
{
    link_send(req, email, token, "email_verification", "AUTH_VERIFY_LINK_BASE",
              "http://127.0.0.1:8000/verify-email?token=");
}
