/*
 * loadgen: the one TCP echo load generator of the I/O bench (benches/io.rs), used for every
 * server alike.
 *
 *   loadgen --port P [--conns N] [--depth D] [--size S] [--threads T]
 *           [--warmup-ms W] [--duration-ms M]
 *
 * Opens N connections to 127.0.0.1:P (only ever the loopback address), spread over T threads
 * (default 1), each thread one epoll loop. Every connection runs a closed loop of batches: it
 * writes D requests of S bytes (default 64) in one write(2), reads until all D echoes are
 * back, checks every byte against what it sent, and starts the next batch. D = 1 is plain
 * request/response; D > 1 is pipelining. A request's latency runs from its batch's write to
 * the read that completes its echo.
 *
 * Time: W ms of warm-up (default 1000), then a measured window of M ms (default 2000), then
 * every thread stops; the whole run is bounded by W + M plus connection set-up. Only requests
 * completed inside the window count.
 *
 * Output (stdout, for the driver):
 *   phase=measure                    when the measured window starts (flushed at once)
 *   rps=... p50_us=... p99_us=... requests=... seconds=... conns=N depth=D threads=T
 * Anything wrong (a refused connection, a closed connection, a byte echoed wrong) is
 * printed on stderr and the exit status is 1; nothing about speed is ever asserted.
 *
 * Written in C rather than Rust so that the load generator shares no runtime, allocator or
 * I/O library with any server it measures, and so that its own cost per request is the
 * bare minimum (one write, one read, an amortised epoll_wait): it shares the machine's
 * cores with the server.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
/* Log-linear latency histogram: exact below 128 ns, then 64 buckets per power of two
 * (under 1.6% error), up to 2^63 ns. */
#define SUB_BUCKETS 64
#define BUCKETS (SUB_BUCKETS * 64)

struct conn {
    int fd;
    uint32_t id;
    uint64_t seq;        /* sequence number of the first request of the current batch */
    uint64_t batch_start; /* ns */
    size_t sent;         /* bytes of the batch written so far */
    size_t received;     /* bytes of the batch read so far */
    size_t checked;      /* bytes of the batch verified so far (whole requests) */
    int want_out;        /* EPOLLOUT registered */
    unsigned char *out;  /* the batch as sent */
    unsigned char *in;   /* the echoes as read */
};

struct worker {
    pthread_t thread;
    int epfd;
    struct conn *conns;
    size_t nconns;
    uint64_t requests; /* completed inside the window */
    uint64_t *hist;
    int failed;
};

static int g_depth = 1;
static size_t g_size = 64;
static uint64_t g_measure_start, g_measure_end; /* ns, CLOCK_MONOTONIC */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned bucket_of(uint64_t v) {
    if (v < 2 * SUB_BUCKETS)
        return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - 6; /* v >> shift in [64, 128) */
    return shift * SUB_BUCKETS + (unsigned)(v >> shift);
}

static uint64_t bucket_floor(unsigned b) {
    if (b < 2 * SUB_BUCKETS)
        return b;
    unsigned shift = b / SUB_BUCKETS - 1;
    return (uint64_t)(b - shift * SUB_BUCKETS) << shift;
}

/* The bytes of request `seq` of connection `id`: the sequence number, the connection,
 * then a pattern that depends on both. */
static void fill_request(unsigned char *p, uint32_t id, uint64_t seq) {
    memcpy(p, &seq, sizeof seq);
    memcpy(p + 8, &id, sizeof id);
    for (size_t i = 12; i < g_size; i++)
        p[i] = (unsigned char)(seq * 31u + id * 7u + i);
}

static void fail(struct worker *w, struct conn *c, const char *what) {
    fprintf(stderr, "loadgen: connection %u: %s%s%s\n", c->id, what, errno ? ": " : "",
            errno ? strerror(errno) : "");
    w->failed = 1;
}

static int start_batch(struct worker *w, struct conn *c);

/* Writes what is left of the batch; registers for EPOLLOUT while some stays unwritten. */
static int push(struct worker *w, struct conn *c) {
    size_t len = (size_t)g_depth * g_size;
    while (c->sent < len) {
        ssize_t n = write(c->fd, c->out + c->sent, len - c->sent);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            fail(w, c, "write");
            return -1;
        }
        c->sent += (size_t)n;
    }
    int want = c->sent < len;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            fail(w, c, "epoll_ctl");
            return -1;
        }
        c->want_out = want;
    }
    return 0;
}

static int start_batch(struct worker *w, struct conn *c) {
    for (int i = 0; i < g_depth; i++)
        fill_request(c->out + (size_t)i * g_size, c->id, c->seq + (uint64_t)i);
    c->sent = c->received = c->checked = 0;
    c->batch_start = now_ns();
    return push(w, c);
}

/* Reads what is there, checks every echo that is complete, starts the next batch once the
 * whole batch is back. */
static int pull(struct worker *w, struct conn *c, uint64_t now) {
    size_t len = (size_t)g_depth * g_size;
    ssize_t n = read(c->fd, c->in + c->received, len - c->received);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        if (n == 0)
            errno = 0;
        fail(w, c, n == 0 ? "closed by the server" : "read");
        return -1;
    }
    if ((size_t)n > len - c->received || c->received + (size_t)n > c->sent) {
        errno = 0;
        fail(w, c, "more bytes echoed than sent");
        return -1;
    }
    c->received += (size_t)n;
    int measured = now >= g_measure_start && now < g_measure_end;
    while (c->checked + g_size <= c->received) {
        if (memcmp(c->in + c->checked, c->out + c->checked, g_size) != 0) {
            errno = 0;
            fail(w, c, "echo differs from the request");
            return -1;
        }
        c->checked += g_size;
        if (measured) {
            w->requests++;
            w->hist[bucket_of(now - c->batch_start)]++;
        }
    }
    if (c->received == len) {
        c->seq += (uint64_t)g_depth;
        return start_batch(w, c);
    }
    return 0;
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    struct epoll_event events[MAX_EVENTS];
    for (size_t i = 0; i < w->nconns && !w->failed; i++)
        start_batch(w, &w->conns[i]);
    while (!w->failed) {
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            w->failed = 1;
            break;
        }
        uint64_t now = now_ns();
        if (now >= g_measure_end)
            break;
        for (int i = 0; i < n && !w->failed; i++) {
            struct conn *c = events[i].data.ptr;
            if (events[i].events & EPOLLOUT)
                push(w, c);
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                pull(w, c, now);
        }
    }
    return NULL;
}

static int connect_one(int port, uint64_t deadline) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        int err = errno;
        close(fd);
        /* A server that is still starting: retry for a while. */
        if ((err != ECONNREFUSED && err != EAGAIN) || now_ns() > deadline) {
            errno = err;
            return -1;
        }
        usleep(10000);
    }
}

static long arg_long(const char *flag, const char *value, long min, long max) {
    char *end;
    long v = value ? strtol(value, &end, 10) : 0;
    if (!value || *end || v < min || v > max) {
        fprintf(stderr, "loadgen: %s needs a number in [%ld, %ld]\n", flag, min, max);
        exit(2);
    }
    return v;
}

static void sleep_until(uint64_t t) {
    uint64_t now = now_ns();
    if (t > now) {
        struct timespec ts = {.tv_sec = (time_t)((t - now) / 1000000000u),
                              .tv_nsec = (long)((t - now) % 1000000000u)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
}

int main(int argc, char **argv) {
    long port = 0, conns = 50, threads = 1, warmup_ms = 1000, duration_ms = 2000;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--port"))
            port = arg_long(argv[i], v, 1, 65535);
        else if (!strcmp(argv[i], "--conns"))
            conns = arg_long(argv[i], v, 1, 100000);
        else if (!strcmp(argv[i], "--depth"))
            g_depth = (int)arg_long(argv[i], v, 1, 4096);
        else if (!strcmp(argv[i], "--size"))
            g_size = (size_t)arg_long(argv[i], v, 16, 1 << 20);
        else if (!strcmp(argv[i], "--threads"))
            threads = arg_long(argv[i], v, 1, 256);
        else if (!strcmp(argv[i], "--warmup-ms"))
            warmup_ms = arg_long(argv[i], v, 0, 600000);
        else if (!strcmp(argv[i], "--duration-ms"))
            duration_ms = arg_long(argv[i], v, 1, 600000);
        else {
            fprintf(stderr,
                    "usage: loadgen --port P [--conns N] [--depth D] [--size S] [--threads T] "
                    "[--warmup-ms W] [--duration-ms M]\n");
            return 2;
        }
        i++;
    }
    if (!port) {
        fprintf(stderr, "loadgen: --port is required\n");
        return 2;
    }
    if (threads > conns)
        threads = conns;

    struct conn *all = calloc((size_t)conns, sizeof *all);
    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    size_t batch = (size_t)g_depth * g_size;
    if (!all || !workers)
        return 1;
    uint64_t connect_deadline = now_ns() + 5000000000u;
    for (long i = 0; i < conns; i++) {
        struct conn *c = &all[i];
        c->id = (uint32_t)i;
        c->fd = connect_one((int)port, connect_deadline);
        c->out = malloc(batch);
        c->in = malloc(batch);
        if (c->fd < 0 || !c->out || !c->in) {
            fprintf(stderr, "loadgen: connect to 127.0.0.1:%ld (connection %ld): %s\n", port, i,
                    strerror(errno));
            return 1;
        }
    }
    /* Each thread takes a contiguous share of the connections. */
    size_t per = (size_t)conns / (size_t)threads, extra = (size_t)conns % (size_t)threads, at = 0;
    for (long t = 0; t < threads; t++) {
        struct worker *w = &workers[t];
        w->conns = all + at;
        w->nconns = per + ((size_t)t < extra);
        at += w->nconns;
        w->hist = calloc(BUCKETS, sizeof *w->hist);
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!w->hist || w->epfd < 0)
            return 1;
        for (size_t i = 0; i < w->nconns; i++) {
            struct conn *c = &w->conns[i];
            int fl = fcntl(c->fd, F_GETFL);
            if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
                perror("loadgen: fcntl");
                return 1;
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
                perror("loadgen: epoll_ctl");
                return 1;
            }
        }
    }
    uint64_t start = now_ns();
    g_measure_start = start + (uint64_t)warmup_ms * 1000000u;
    g_measure_end = g_measure_start + (uint64_t)duration_ms * 1000000u;
    for (long t = 0; t < threads; t++) {
        if (pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]) != 0) {
            fprintf(stderr, "loadgen: pthread_create failed\n");
            return 1;
        }
    }
    sleep_until(g_measure_start);
    printf("phase=measure\n");
    fflush(stdout);

    uint64_t requests = 0;
    int failed = 0;
    static uint64_t hist[BUCKETS];
    for (long t = 0; t < threads; t++) {
        pthread_join(workers[t].thread, NULL);
        requests += workers[t].requests;
        failed |= workers[t].failed;
        for (size_t b = 0; b < BUCKETS; b++)
            hist[b] += workers[t].hist[b];
    }
    if (failed)
        return 1;
    if (requests == 0) {
        fprintf(stderr, "loadgen: no request completed in the measured window\n");
        return 1;
    }
    double p[2] = {0, 0};
    const double q[2] = {0.50, 0.99};
    for (int k = 0; k < 2; k++) {
        uint64_t rank = (uint64_t)(q[k] * (double)requests), seen = 0;
        for (size_t b = 0; b < BUCKETS; b++) {
            seen += hist[b];
            if (seen > rank) {
                p[k] = (double)bucket_floor((unsigned)b) / 1000.0;
                break;
            }
        }
    }
    double seconds = (double)duration_ms / 1000.0;
    printf("rps=%.1f p50_us=%.2f p99_us=%.2f requests=%llu seconds=%.3f conns=%ld depth=%d "
           "threads=%ld\n",
           (double)requests / seconds, p[0], p[1], (unsigned long long)requests, seconds, conns,
           g_depth, threads);
    fflush(stdout);
    for (long i = 0; i < conns; i++)
        close(all[i].fd);
    return 0;
}
