// echo_server (C++): the TCP echo server of echo_server.c, written with veloq.hpp.
//
//   echo_server_cpp --port P --workers W [--seconds N]
//
// One SO_REUSEPORT listener per worker, started there with spawn_to and served by one
// multishot accept; per connection one heap object with its buffer, looping recv -> send.
// Completions are lambdas (veloq::Io) that capture the connection's shared owner. Stops on
// SIGINT, SIGTERM or after --seconds: the runtime's shutdown cancels every operation.
#include <veloq.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace {

std::atomic<std::uint64_t> g_accepted{0}, g_closed{0}, g_bytes{0};

struct Conn {
    explicit Conn(int fd) : fd(fd) {}
    ~Conn() {
        ::close(fd);
        g_closed++;
    }
    Conn(const Conn &) = delete;
    Conn &operator=(const Conn &) = delete;
    int fd;
    std::uint32_t have = 0, sent = 0;
    char buf[16384];
};

void echo_recv(veloq::Io io, std::shared_ptr<Conn> c);

void echo_send(veloq::Io io, std::shared_ptr<Conn> c) {
    Conn *p = c.get();
    io.send(p->fd, p->buf + p->sent, p->have - p->sent, MSG_NOSIGNAL,
            [c = std::move(c)](veloq::Io io, std::int64_t res, std::uint32_t) mutable {
                if (res <= 0)
                    return; // the last owner goes: the connection closes
                g_bytes += static_cast<std::uint64_t>(res);
                c->sent += static_cast<std::uint32_t>(res);
                if (c->sent < c->have)
                    echo_send(io, std::move(c));
                else
                    echo_recv(io, std::move(c));
            });
}

void echo_recv(veloq::Io io, std::shared_ptr<Conn> c) {
    Conn *p = c.get();
    io.recv(p->fd, p->buf, sizeof p->buf, 0,
            [c = std::move(c)](veloq::Io io, std::int64_t res, std::uint32_t) mutable {
                if (res <= 0)
                    return;
                c->have = static_cast<std::uint32_t>(res);
                c->sent = 0;
                echo_send(io, std::move(c));
            });
}

void accept_on(veloq::Io io, int listener) {
    io.accept(listener, true, [listener](veloq::Io io, std::int64_t fd, std::uint32_t flags) {
        if (fd >= 0) {
            g_accepted++;
            echo_recv(io, std::make_shared<Conn>(static_cast<int>(fd)));
        }
        if (!(flags & VELOQ_CQE_F_MORE) && fd != -ECANCELED)
            accept_on(io, listener); // the kernel ended it: start again
    });
}

// A SO_REUSEPORT listener on `port` (0: any free port); `bound` gets its port. Throws
// veloq::Error.
int listen_on(std::uint16_t port, std::uint16_t &bound) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(port);
    int fd = veloq::tcp_listen(reinterpret_cast<const sockaddr *>(&a), sizeof a, 4096,
                               VELOQ_BIND_REUSEPORT);
    if (::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) < 0) {
        int e = -errno;
        ::close(fd);
        throw veloq::Error(e, "getsockname");
    }
    bound = ntohs(a.sin_port);
    return fd;
}

[[noreturn]] void usage(const char *argv0) {
    std::fprintf(stderr, "usage: %s --port P --workers W [--seconds N]\n", argv0);
    std::exit(2);
}

} // namespace

int main(int argc, char **argv) {
    long port = -1, workers = -1, seconds = 0;
    int i = 1;
    for (; i + 1 < argc; i += 2) {
        std::string opt = argv[i];
        long v = std::strtol(argv[i + 1], nullptr, 10);
        if (opt == "--port")
            port = v;
        else if (opt == "--workers")
            workers = v;
        else if (opt == "--seconds")
            seconds = v;
        else
            usage(argv[0]);
    }
    if (i != argc || port < 0 || port > 65535 || workers < 1 || workers > 1024 || seconds < 0)
        usage(argv[0]);

    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr); // before the workers start: they inherit it

    std::uint16_t bound = static_cast<std::uint16_t>(port);
    std::vector<int> listeners;
    for (long w = 0; w < workers; w++) {
        try {
            listeners.push_back(listen_on(bound, bound));
        } catch (const veloq::Error &e) {
            std::fprintf(stderr, "echo_server_cpp: cannot listen: %s\n", e.what());
            return 1;
        }
    }

    int sig = 0;
    try {
        veloq::Runtime rt = veloq::Runtime::builder().workers(static_cast<std::uint32_t>(workers)).build();
        for (long w = 0; w < workers; w++) {
            int fd = listeners[static_cast<std::size_t>(w)];
            rt.spawn_to(static_cast<std::uint32_t>(w), [fd](veloq_ctx *ctx) { accept_on(veloq::Io(ctx), fd); });
        }
        std::printf("echo_server_cpp: listening on port %u with %ld workers\n", bound, workers);
        std::fflush(stdout);
        std::uint64_t last = 0;
        for (long s = 1; !seconds || s <= seconds; s++) {
            timespec one{1, 0};
            sig = sigtimedwait(&stop, nullptr, &one);
            if (sig == SIGINT || sig == SIGTERM)
                break;
            std::uint64_t bytes = g_bytes.load();
            std::printf("echo_server_cpp: %lds: %llu connections, %llu bytes echoed, %.1f MB/s\n",
                        s, static_cast<unsigned long long>(g_accepted.load()),
                        static_cast<unsigned long long>(bytes), double(bytes - last) / 1e6);
            std::fflush(stdout);
            last = bytes;
        }
        rt.shutdown(); // cancels everything; every lambda runs and frees its connection
    } catch (const veloq::Error &e) {
        std::fprintf(stderr, "echo_server_cpp: %s\n", e.what());
        return 1;
    }
    for (int fd : listeners)
        ::close(fd);
    std::uint64_t open = g_accepted.load() - g_closed.load();
    std::printf("echo_server_cpp: stopped (%s): %llu connections, %llu still open, %llu bytes echoed\n",
                sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "time",
                static_cast<unsigned long long>(g_accepted.load()),
                static_cast<unsigned long long>(open),
                static_cast<unsigned long long>(g_bytes.load()));
    return open == 0 ? 0 : 1;
}
