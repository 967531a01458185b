/* A program as a user writes it against an installed libveloq: only <veloq.h>, flags from
 * `pkg-config --cflags --libs veloq` (or --static). Spawns tasks, reaps them, checks them. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include <veloq.h>

#define TASKS 1000

static int64_t square(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return (int64_t)(uintptr_t)arg * (int64_t)(uintptr_t)arg;
}

int main(void) {
    static unsigned char seen[TASKS];
    veloq_runtime *rt = NULL;
    veloq_cq *cq = NULL;
    veloq_cqe batch[64];
    int i, n, got = 0, bad = 0, rc;

    if (veloq_version() != ((VELOQ_VERSION_MAJOR << 16) | (VELOQ_VERSION_MINOR << 8) |
                            VELOQ_VERSION_PATCH)) {
        printf("consumer: header and library versions differ\n");
        return 1;
    }
    if ((rc = veloq_runtime_new(&rt)) < 0 || (rc = veloq_cq_new(rt, 64, &cq)) < 0) {
        printf("consumer: %s\n", veloq_strerror(rc));
        return 1;
    }
    for (i = 0; i < TASKS; i++)
        if (veloq_spawn_balanced(rt, square, (void *)(uintptr_t)i, cq, (uint64_t)i) != 0)
            bad++;
    while (got < TASKS && (n = veloq_cq_wait(cq, batch, 64, 1, 10LL * 1000000000LL)) > 0) {
        int k;
        for (k = 0; k < n; k++) {
            uint64_t id = batch[k].user_data;
            if (id >= TASKS || seen[id]++ || batch[k].res != (int64_t)(id * id))
                bad++;
        }
        got += n;
    }
    if (veloq_cq_free(cq) != 0)
        bad++;
    veloq_runtime_free(rt);
    printf("consumer: %d of %d completions, %d bad\n", got, TASKS, bad);
    return got == TASKS && bad == 0 ? 0 : 1;
}
