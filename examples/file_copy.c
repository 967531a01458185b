/*
 * file_copy: copies a file with host-side I/O (veloq_submit) from the main thread.
 *
 *   file_copy SRC DST
 *
 * The main thread is not a worker: it routes reads and writes to the runtime's rings with
 * veloq_submit and takes their completions from one veloq_cq. Up to DEPTH chunks are in
 * flight at once; each chunk is read, then written at the same offset, and its buffer is
 * reused for the next unread chunk. Short reads and writes are resubmitted for the rest.
 * At the end DST is fsynced and its size checked against SRC's.
 *
 * The chunk buffers come from the workers' buffer pools (one callback per worker allocates
 * them; each pool is sized for its share of the chunks). Reads and writes use
 * VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED, which run on the worker owning the buffer:
 * a fixed-buffer operation (the kernel does not pin the buffer's pages each time) when the
 * pool is registered with that worker's ring, a plain one with the same result when the
 * registration failed (e.g. RLIMIT_MEMLOCK too low). The last line says how many of the
 * buffers were registered (veloq_buf_index).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <veloq.h>

#define CHUNK (256 * 1024)
#define DEPTH 16

enum stage { IDLE, READING, WRITING };

struct chunk {
    enum stage stage;
    uint64_t offset; /* of the chunk in the file */
    uint32_t len;    /* bytes of the chunk */
    uint32_t done;   /* bytes read (READING) or written (WRITING) so far */
    veloq_buf *buf;  /* from a worker's pool */
};

struct pool_alloc {
    struct chunk *chunks;
    uint32_t workers;
};

/* Runs on worker `w`: allocates the buffers of chunks w, w + workers, ... from that
 * worker's pool. */
static int64_t alloc_buffers(veloq_ctx *ctx, void *arg) {
    struct pool_alloc *a = (struct pool_alloc *)arg;
    uint32_t i;
    int rc;
    for (i = veloq_ctx_worker(ctx); i < DEPTH; i += a->workers)
        if ((rc = veloq_buf_alloc(ctx, CHUNK, &a->chunks[i].buf)) < 0)
            return rc;
    return 0;
}

/* Reads (READING) or writes (WRITING) the rest of chunk c, on the worker owning its buffer
 * (worker -1 with a pool buffer). */
static int submit(veloq_runtime *rt, veloq_cq *cq, int fd, struct chunk *c, uint64_t id) {
    veloq_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = c->stage == READING ? VELOQ_OP_READ_FIXED : VELOQ_OP_WRITE_FIXED;
    s.fd = fd;
    s.addr = (uint64_t)(uintptr_t)c->buf;
    s.addr2 = c->done;
    s.len = c->len - c->done;
    s.offset = c->offset + c->done;
    return veloq_submit(rt, -1, &s, cq, id);
}

int main(int argc, char **argv) {
    veloq_runtime *rt = NULL;
    veloq_builder *b = NULL;
    veloq_cq *cq = NULL;
    struct chunk chunks[DEPTH];
    struct stat st, out;
    uint64_t size, next = 0;
    uint32_t workers;
    int in, dst, rc, i, busy = 0, failed = 0, registered = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s SRC DST\n", argv[0]);
        return 2;
    }
    in = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (in < 0 || fstat(in, &st) < 0) {
        fprintf(stderr, "file_copy: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    dst = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (dst < 0) {
        fprintf(stderr, "file_copy: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    size = (uint64_t)st.st_size;
    /* One worker per online CPU (the default, made explicit), each pool holding that
     * worker's share of the DEPTH chunk buffers. */
    {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        workers = cpus < 1 ? 1 : cpus > 64 ? 64 : (uint32_t)cpus;
    }
    if (!(b = veloq_builder_new())) {
        fprintf(stderr, "file_copy: out of memory\n");
        return 1;
    }
    if ((rc = veloq_builder_workers(b, workers)) < 0 ||
        (rc = veloq_builder_buffer_pool(b, CHUNK, (DEPTH + workers - 1) / workers)) < 0) {
        veloq_builder_free(b);
        fprintf(stderr, "file_copy: %s\n", veloq_strerror(rc));
        return 1;
    }
    if ((rc = veloq_runtime_build(b, &rt)) < 0 || (rc = veloq_cq_new(rt, 2 * DEPTH, &cq)) < 0) {
        fprintf(stderr, "file_copy: %s\n", veloq_strerror(rc));
        return 1;
    }
    memset(chunks, 0, sizeof chunks);
    {
        struct pool_alloc a;
        uint32_t w;
        veloq_cqe e;
        a.chunks = chunks;
        a.workers = workers;
        for (w = 0; w < a.workers && w < DEPTH; w++) {
            rc = veloq_spawn_to(rt, w, alloc_buffers, &a, cq, 0);
            if (rc == 0)
                rc = veloq_cq_wait(cq, &e, 1, 1, -1) == 1 ? (int)e.res : -EIO;
            if (rc < 0) {
                fprintf(stderr, "file_copy: buffers: %s\n", veloq_strerror(rc));
                return 1;
            }
        }
        for (i = 0; i < DEPTH; i++)
            registered += veloq_buf_index(chunks[i].buf) >= 0;
    }

    /* Start reading the first DEPTH chunks. */
    for (;;) {
        veloq_cqe e[DEPTH];
        int n, k;
        for (i = 0; i < DEPTH && !failed; i++) {
            struct chunk *c = &chunks[i];
            if (c->stage != IDLE || next >= size)
                continue;
            c->offset = next;
            c->len = (uint32_t)(size - next < CHUNK ? size - next : CHUNK);
            c->done = 0;
            next += c->len;
            c->stage = READING;
            if ((rc = submit(rt, cq, in, c, (uint64_t)i)) < 0) {
                failed = rc;
                c->stage = IDLE;
            } else
                busy++;
        }
        if (busy == 0)
            break;
        n = veloq_cq_wait(cq, e, DEPTH, 1, -1);
        if (n < 0) {
            failed = n;
            break;
        }
        for (k = 0; k < n; k++) {
            struct chunk *c = &chunks[e[k].user_data];
            if (e[k].res <= 0) { /* an error, or a file that shrank under us */
                failed = e[k].res < 0 ? (int)e[k].res : -EIO;
                c->stage = IDLE;
                busy--;
                continue;
            }
            c->done += (uint32_t)e[k].res;
            if (c->done < c->len) { /* short: submit the rest of the same stage */
                rc = submit(rt, cq, c->stage == READING ? in : dst, c, e[k].user_data);
            } else if (c->stage == READING) {
                c->stage = WRITING;
                c->done = 0;
                rc = submit(rt, cq, dst, c, e[k].user_data);
            } else {
                c->stage = IDLE;
                busy--;
                continue;
            }
            if (rc < 0) {
                failed = rc;
                c->stage = IDLE;
                busy--;
            }
        }
    }
    if (!failed) {
        veloq_sqe s;
        veloq_cqe e;
        memset(&s, 0, sizeof s);
        s.opcode = VELOQ_OP_FSYNC;
        s.fd = dst;
        rc = veloq_submit(rt, -1, &s, cq, 0);
        if (rc == 0)
            rc = veloq_cq_wait(cq, &e, 1, 1, -1) == 1 ? (int)e.res : -EIO;
        if (rc < 0)
            failed = rc;
    }
    veloq_runtime_free(rt);
    veloq_cq_free(cq);
    for (i = 0; i < DEPTH; i++)
        veloq_buf_free(chunks[i].buf); /* from any thread, after the runtime too */
    if (!failed && (fstat(dst, &out) < 0 || (uint64_t)out.st_size != size))
        failed = -EIO;
    close(in);
    close(dst);
    if (failed) {
        fprintf(stderr, "file_copy: %s\n", veloq_strerror(failed));
        return 1;
    }
    printf("file_copy: %" PRIu64 " bytes copied, size verified (%d of %d buffers registered)\n",
           size, registered, DEPTH);
    return 0;
}
