/*
 * Runs an echo server example (the program named by $VELOQ_ECHO_SERVER, e.g.
 * build/examples/echo_server) for a few seconds with --port 0 --workers 2, reads the port from its first
 * line, drives 200 concurrent connections through it with checksummed messages, and then
 * checks that it stops cleanly: on SIGTERM (first run) and at --seconds (second run).
 * $VELOQ_ECHO_SERVER_ARG, when set, is passed as one more argument (e.g. --multishot).
 * Not a load generator: a correctness client.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/wait.h>

#include "vio.h"

static const char *g_server;
static const char *g_server_arg;

/* Starts the server; returns its pid and the port it printed, or -1. */
static pid_t start_server(const char *seconds, uint16_t *port, FILE **out) {
    int p[2];
    pid_t pid;
    char line[256];
    unsigned v = 0;
    if (pipe(p) != 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(g_server, g_server, "--port", "0", "--workers", "2", "--seconds", seconds,
              g_server_arg, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *out = fdopen(p[0], "r");
    if (pid < 0 || !*out || !fgets(line, sizeof line, *out) ||
        sscanf(strstr(line, "port ") ? strstr(line, "port ") : "", "port %u", &v) != 1) {
        check_fail_(__FILE__, __LINE__, "the server did not say where it listens");
        return -1;
    }
    *port = (uint16_t)v;
    return pid;
}

static size_t drive_clients(uint16_t port, size_t conns) {
    int *fds = (int *)calloc(conns, sizeof *fds);
    char out[3000], in[3000];
    size_t i, r, bad = 0;
    if (!fds)
        return conns;
    for (i = 0; i < conns; i++)
        if ((fds[i] = vio_connect(port)) < 0)
            bad++;
    for (r = 0; r < 4; r++) {
        for (i = 0; i < conns; i++) {
            size_t k, len = 1 + (i * 97 + r * 13) % sizeof out;
            for (k = 0; k < len; k++)
                out[k] = (char)(i + r * 5 + k * 3);
            if (fds[i] >= 0 && vio_write_all(fds[i], out, len) != 0)
                bad++;
        }
        for (i = 0; i < conns; i++) {
            size_t k, len = 1 + (i * 97 + r * 13) % sizeof out;
            for (k = 0; k < len; k++)
                out[k] = (char)(i + r * 5 + k * 3);
            if (fds[i] >= 0 && (vio_read_all(fds[i], in, len) != 0 ||
                                vio_fnv(VIO_FNV_INIT, in, len) != vio_fnv(VIO_FNV_INIT, out, len)))
                bad++;
        }
    }
    for (i = 0; i < conns; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    return bad;
}

static int wait_exit(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void echoes_200_connections_and_stops_on_sigterm(void) {
    uint16_t port;
    FILE *out = NULL;
    char line[256];
    int stopped = 0;
    pid_t pid = start_server("60", &port, &out);
    REQUIRE(pid > 0);
    CHECK_EQ(drive_clients(port, CHECK_SCALED(200)), 0);
    /* Connections left open are cancelled by the shutdown. */
    {
        int idle = vio_connect(port);
        CHECK_GE(idle, 0);
        check_sleep_ms(100);
        kill(pid, SIGTERM);
        CHECK_EQ(wait_exit(pid), 0);
        if (idle >= 0)
            close(idle);
    }
    while (fgets(line, sizeof line, out))
        stopped |= strstr(line, "stopped (SIGTERM)") != NULL;
    CHECK(stopped);
    fclose(out);
}

static void stops_by_itself_after_its_seconds(void) {
    uint16_t port;
    FILE *out = NULL;
    char line[256];
    int stopped = 0;
    pid_t pid = start_server("1", &port, &out);
    REQUIRE(pid > 0);
    CHECK_EQ(drive_clients(port, 20), 0);
    CHECK_EQ(wait_exit(pid), 0);
    while (fgets(line, sizeof line, out))
        stopped |= strstr(line, "stopped (time)") != NULL;
    CHECK(stopped);
    fclose(out);
}

int main(void) {
    g_server = getenv("VELOQ_ECHO_SERVER");
    g_server_arg = getenv("VELOQ_ECHO_SERVER_ARG");
    if (g_server_arg && !*g_server_arg)
        g_server_arg = NULL;
    check_init("example_echo", 120);
    if (!g_server || !*g_server) {
        printf("VELOQ_ECHO_SERVER names no program\n");
        return 2;
    }
    printf("server: %s%s%s\n", g_server, g_server_arg ? " " : "", g_server_arg ? g_server_arg : "");
    signal(SIGPIPE, SIG_IGN);
    RUN_CASE(echoes_200_connections_and_stops_on_sigterm);
    RUN_CASE(stops_by_itself_after_its_seconds);
    return check_summary();
}
