/* shop-api: the game day's HTTP/1.1 server (`cargo xtask gameday`). One response per
 * connection: a 1.3 KB head like a production API's (cookies, security headers), then
 * BODY_BYTES bytes. Usage: shop-api PORT (listens on 127.0.0.1).
 *
 * Built twice from this file, so the two builds differ in their build id:
 * - with -DCUT_SLOW_READERS, the "bad" build: a write that waits 1 s for the reader (a send
 *   timeout, SO_SNDTIMEO) makes it close with the rest of the body never written, as hyper
 *   1.10.1 did under a slow reader (hyperium/hyper#4022). The client gets a 200, a
 *   Content-Length, and a short body. (A timed-out write on Linux usually returns what it
 *   managed to copy, not EAGAIN: a stalled reader still takes a few bytes a second.)
 * - without, the "good" build: it waits for the reader, however slow.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "dev"
#endif
#define BODY_BYTES (32u << 20)

/* What a production API's responses carry besides the framing (about 1.1 KB). */
static const char extra_headers[] =
    "Cache-Control: no-store, max-age=0\r\n"
    "Strict-Transport-Security: max-age=63072000; includeSubDomains; preload\r\n"
    "Content-Security-Policy: default-src 'self'; script-src 'self' https://cdn.shop.example; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: https://img.shop.example; "
    "connect-src 'self' https://api.shop.example; frame-ancestors 'none'; base-uri 'self'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "X-Frame-Options: DENY\r\n"
    "Referrer-Policy: strict-origin-when-cross-origin\r\n"
    "Permissions-Policy: geolocation=(), microphone=(), camera=(), payment=()\r\n"
    "Set-Cookie: session=3q2+7wAAAAB0cnVuY3dhdGNoLWdhbWVkYXktc2Vzc2lvbi1jb29raWUtdmFsdWU; "
    "Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=86400\r\n"
    "Set-Cookie: cart=eyJpdGVtcyI6WzEyLDM0LDU2XSwidG90YWwiOjE5OTl9; Path=/; Secure; SameSite=Lax\r\n"
    "Set-Cookie: ab_bucket=checkout-v2; Path=/; Max-Age=2592000; Secure\r\n"
    "Vary: Accept-Encoding, Cookie\r\n"
    "ETag: \"5f3c1a9e-2000000\"\r\n"
    "Last-Modified: Mon, 30 Nov 2026 10:00:00 GMT\r\n"
    "X-Request-Id: 6c1f2b8e-0d4a-4c3e-9b7f-2a1d5e8c9f01\r\n"
    "Server-Timing: db;dur=12.4, cache;desc=\"miss\", app;dur=48.9\r\n"
    "Access-Control-Allow-Origin: https://www.shop.example\r\n"
    "Access-Control-Allow-Credentials: true\r\n";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        double start = now();
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1; /* the send timed out with nothing sent (EAGAIN), or the peer is gone */
        p += w;
        n -= (size_t)w;
#ifdef CUT_SLOW_READERS
        if (n > 0 && now() - start >= 0.9)
            return -1; /* the send timed out: this reader is too slow, give up on it */
#else
        (void)start;
#endif
    }
    return 0;
}

static void serve(int fd) {
    char req[8192];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, req + n, sizeof req - 1 - n);
        if (r <= 0)
            return;
        n += (size_t)r;
        req[n] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
        if (n == sizeof req - 1)
            return;
    }
#ifdef CUT_SLOW_READERS
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
#endif
    char head[4096];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nServer: shop-api/%s\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: %u\r\n"
                     "%sConnection: close\r\n\r\n",
                     VERSION, BODY_BYTES, extra_headers);
    if (write_all(fd, head, (size_t)h) < 0)
        return;
    static char chunk[65536];
    memset(chunk, 'x', sizeof chunk);
    for (size_t sent = 0; sent < BODY_BYTES; sent += sizeof chunk)
        if (write_all(fd, chunk, sizeof chunk) < 0)
            return; /* the bad build gives up here: close(2) with the body unfinished */
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: shop-api PORT\n");
        return 2;
    }
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    signal(SIGPIPE, SIG_IGN);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 64) < 0) {
        perror("shop-api: bind/listen");
        return 1;
    }
    printf("shop-api %s listening on 127.0.0.1:%s\n", VERSION, argv[1]);
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue;
        if (fork() == 0) {
            close(l);
            serve(c);
            close(c);
            _exit(0);
        }
        close(c);
    }
}
