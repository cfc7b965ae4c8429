/*
 * notify.c - password-reset and email-verification links go straight to the notification
 * service (07), never on the bus (SERVICES §05): POST $NOTIFICATION_URL/api/v1/notifications.
 *
 * The request only queues the link; a sender thread delivers it. So a reset answers 202 after
 * the same work whether or not the email has an account (a slow 07 does not tell which do),
 * and a request never waits on 07. The queue holds at most QUEUE_MAX links (a flood drops the
 * extra ones with a log line); each delivery has a 3 s timeout and is tried once (the user
 * can ask again). Without NOTIFICATION_URL a link is dropped with a log line naming no secret.
 * AUTH_RESET_LINK_BASE / AUTH_VERIFY_LINK_BASE are the pages that take the token.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "auth.h"
#include "gr/log.h"

#define QUEUE_MAX 256

struct link {
    struct link *next;
    char *to, *template, *url, *request_id; /* url holds the token: cleansed after use */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct link *head, *tail; /* mu */
static size_t queued;            /* mu */
static bool running, stopping;   /* mu */
static pthread_t sender;

static size_t sink(void *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static void deliver(const struct link *l)
{
    const char *base = getenv("NOTIFICATION_URL");
    const char *svc_token = getenv("SERVICE_TOKEN");
    struct curl_slist *h = NULL;
    char hdr[GR_AUTH_TOKEN_MAX + 32], url[2048];
    json_t *body;
    char *text;
    CURL *c;
    CURLcode cc;
    long status = 0;

    body = json_pack("{s:s,s:s,s:s,s:{s:s}}", "channel", "email", "to", l->to, "template",
                     l->template, "data", "link", l->url);
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    c = curl_easy_init();
    if (!c || !text ||
        snprintf(url, sizeof(url), "%s/api/v1/notifications", base) >= (int)sizeof(url)) {
        gr_free(text);
        if (c)
            curl_easy_cleanup(c);
        return;
    }
    h = curl_slist_append(h, "Content-Type: application/json");
    if (svc_token && strlen(svc_token) < GR_AUTH_TOKEN_MAX) {
        snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", svc_token);
        h = curl_slist_append(h, hdr);
        OPENSSL_cleanse(hdr, sizeof(hdr));
    }
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s", l->request_id);
    h = curl_slist_append(h, hdr);
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
        gr_log_warn("link not delivered", "template", l->template, "request_id", l->request_id,
                    "error",
                    cc != CURLE_OK ? curl_easy_strerror(cc) : "notification service refused");
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    OPENSSL_cleanse(text, strlen(text));
    gr_free(text);
}

static void link_free(struct link *l)
{
    OPENSSL_cleanse(l->url, strlen(l->url));
    gr_free(l->to);
    gr_free(l->template);
    gr_free(l->url);
    gr_free(l->request_id);
    gr_free(l);
}

static void *sender_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        struct link *l;

        while (!head && !stopping)
            pthread_cond_wait(&cv, &mu);
        if (!head)
            break; /* stopping, queue drained */
        l = head;
        head = l->next;
        if (!head)
            tail = NULL;
        queued--;
        pthread_mutex_unlock(&mu);
        deliver(l);
        link_free(l);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void link_queue(struct gr_req *req, const char *email, const char *token,
                       const char *template, const char *link_env, const char *link_default)
{
    const char *base = getenv("NOTIFICATION_URL");
    const char *link_base = getenv(link_env);
    struct link *l;
    bool dropped = false;

    if (!base || !*base) {
        gr_log_info("no NOTIFICATION_URL: link not sent", "template", template);
        return;
    }
    l = gr_xcalloc(1, sizeof(*l));
    l->to = gr_xstrdup(email);
    l->template = gr_xstrdup(template);
    l->url = gr_xstrdup(
        gr_arena_printf(req->arena, "%s%s", link_base ? link_base : link_default, token));
    l->request_id = gr_xstrdup(req->request_id);
    pthread_mutex_lock(&mu);
    if (!running && !stopping) {
        if (pthread_create(&sender, NULL, sender_main, NULL) == 0)
            running = true;
    }
    if (!running || stopping || queued >= QUEUE_MAX) {
        dropped = true;
    } else {
        if (tail)
            tail->next = l;
        else
            head = l;
        tail = l;
        queued++;
        pthread_cond_signal(&cv);
    }
    pthread_mutex_unlock(&mu);
    if (dropped) {
        gr_log_warn("link dropped: too many queued", "template", template);
        link_free(l);
    }
}

void auth_reset_link_send(struct gr_req *req, const char *email, const char *token)
{
    link_queue(req, email, token, "password_reset", "AUTH_RESET_LINK_BASE",
               "http://127.0.0.1:8000/reset-password?token=");
}

void auth_verify_link_send(struct gr_req *req, const char *email, const char *token)
{
    link_queue(req, email, token, "email_verification", "AUTH_VERIFY_LINK_BASE",
               "http://127.0.0.1:8000/verify-email?token=");
}

void auth_links_stop(void)
{
    bool join;

    pthread_mutex_lock(&mu);
    stopping = true;
    join = running;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    if (join)
        pthread_join(sender, NULL);
}
