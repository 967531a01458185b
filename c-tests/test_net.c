/*
 * The synchronous socket helpers: veloq_tcp_listen and veloq_udp_bind make sockets the
 * runtime then serves (accept and datagrams through veloq_submit), honour
 * VELOQ_BIND_REUSEPORT, and refuse bad input with a negative errno and no descriptor
 * left open.
 */
#define _GNU_SOURCE
#include <sys/un.h>

#include "vio.h"

/* The lowest free descriptor number: a leaked descriptor moves it. */
static int next_fd(void) {
    int fd = dup(0);
    if (fd >= 0)
        close(fd);
    return fd;
}

static uint16_t port_of(int fd) {
    struct sockaddr_in6 a; /* room for either family */
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return 0;
    return ntohs(a.sin6_port); /* sin_port and sin6_port share their offset */
}

static int int_opt(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, name, &v, &len) < 0)
        return -errno;
    return v;
}

static void tcp_listener_is_made_listening_and_accepts_through_the_ring(void) {
    struct sockaddr_in a = vio_addr(0);
    veloq_runtime *rt;
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e;
    char buf[8];
    uint16_t port;
    int l, c;
    l = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 128, 0);
    REQUIRE(l >= 0);
    port = port_of(l);
    CHECK(port != 0);
    CHECK_EQ(int_opt(l, SOL_SOCKET, SO_ACCEPTCONN), 1);
    CHECK_EQ(int_opt(l, SOL_SOCKET, SO_REUSEADDR), 1);
    CHECK_EQ(int_opt(l, SOL_SOCKET, SO_REUSEPORT), 0);
    CHECK(fcntl(l, F_GETFD) & FD_CLOEXEC);
    rt = vt_runtime(1);
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_ACCEPT;
    s.fd = l;
    CHECK_EQ(veloq_submit(rt, -1, &s, cq, 1), 0);
    c = vio_connect(port);
    REQUIRE(c >= 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 1);
    CHECK(e.res >= 0);
    if (e.res >= 0) {
        CHECK_EQ(write(c, "ping", 4), 4);
        CHECK_EQ(vio_read_all((int)e.res, buf, 4), 0);
        CHECK(memcmp(buf, "ping", 4) == 0);
        close((int)e.res);
    }
    close(c);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    close(l);
}

static void reuseport_lets_listeners_share_a_port_and_without_it_eaddrinuse(void) {
    struct sockaddr_in a = vio_addr(0);
    int l1, l2, l3, plain;
    l1 = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 16, VELOQ_BIND_REUSEPORT);
    REQUIRE(l1 >= 0);
    CHECK_EQ(int_opt(l1, SOL_SOCKET, SO_REUSEPORT), 1);
    a = vio_addr(port_of(l1));
    l2 = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 16, VELOQ_BIND_REUSEPORT);
    CHECK(l2 >= 0);
    CHECK_EQ(port_of(l2), port_of(l1));
    /* Without the flag, the port is taken. */
    plain = next_fd();
    l3 = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 16, 0);
    CHECK_ERR(l3, -EADDRINUSE);
    CHECK_EQ(next_fd(), plain); /* the failed call closed its socket */
    if (l3 >= 0)
        close(l3);
    if (l2 >= 0)
        close(l2);
    close(l1);
}

static void ipv6_loopback_listens_when_the_host_has_it(void) {
    struct sockaddr_in6 a;
    int l;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    l = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 16, 0);
    if (l == -EAFNOSUPPORT || l == -EADDRNOTAVAIL) {
        printf("  (no IPv6 loopback here: %s; case skipped)\n", veloq_strerror(l));
        return;
    }
    REQUIRE(l >= 0);
    CHECK(port_of(l) != 0);
    CHECK_EQ(int_opt(l, SOL_SOCKET, SO_ACCEPTCONN), 1);
    close(l);
}

static void udp_sockets_bind_and_receive_through_the_ring(void) {
    struct sockaddr_in a = vio_addr(0), peer;
    struct iovec iov;
    struct msghdr m;
    veloq_runtime *rt;
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e;
    char buf[16];
    int u, v, w;
    u = veloq_udp_bind((const struct sockaddr *)&a, sizeof a, 0);
    REQUIRE(u >= 0);
    CHECK_EQ(int_opt(u, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
    CHECK_EQ(int_opt(u, SOL_SOCKET, SO_REUSEPORT), 0);
    CHECK(fcntl(u, F_GETFD) & FD_CLOEXEC);
    a = vio_addr(port_of(u));
    CHECK(port_of(u) != 0);
    /* The port is taken without the flag; two sockets share it with the flag. */
    CHECK_ERR(veloq_udp_bind((const struct sockaddr *)&a, sizeof a, 0), -EADDRINUSE);
    a = vio_addr(0);
    v = veloq_udp_bind((const struct sockaddr *)&a, sizeof a, VELOQ_BIND_REUSEPORT);
    REQUIRE(v >= 0);
    CHECK_EQ(int_opt(v, SOL_SOCKET, SO_REUSEPORT), 1);
    CHECK_EQ(int_opt(v, SOL_SOCKET, SO_REUSEADDR), 0); /* for UDP it would admit any user */
    a = vio_addr(port_of(v));
    w = veloq_udp_bind((const struct sockaddr *)&a, sizeof a, VELOQ_BIND_REUSEPORT);
    CHECK(w >= 0);
    if (w >= 0)
        close(w);
    /* A datagram to u arrives through a host-side recvmsg, with the sender's address. */
    rt = vt_runtime(1);
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(buf, 0, sizeof buf);
    iov.iov_base = buf;
    iov.iov_len = sizeof buf;
    memset(&m, 0, sizeof m);
    memset(&peer, 0, sizeof peer);
    m.msg_name = &peer;
    m.msg_namelen = sizeof peer;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_RECVMSG;
    s.fd = u;
    s.addr = (uint64_t)(uintptr_t)&m;
    CHECK_EQ(veloq_submit(rt, -1, &s, cq, 7), 0);
    a = vio_addr(port_of(u));
    CHECK_EQ(sendto(v, "datagram", 8, 0, (struct sockaddr *)&a, sizeof a), 8);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 7);
    CHECK_EQ(e.res, 8);
    CHECK(memcmp(buf, "datagram", 8) == 0);
    CHECK_EQ(ntohs(peer.sin_port), port_of(v));
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    close(v);
    close(u);
}

static void bad_input_is_refused_and_leaves_no_descriptor(void) {
    struct sockaddr_in a = vio_addr(0);
    struct sockaddr_storage big;
    struct sockaddr_un un;
    const struct sockaddr *sa = (const struct sockaddr *)&a;
    int before = next_fd();
    memset(&big, 0, sizeof big);
    memcpy(&big, &a, sizeof a);
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    CHECK_ERR(veloq_tcp_listen(NULL, sizeof a, 16, 0), -EINVAL);
    CHECK_ERR(veloq_tcp_listen(sa, 0, 16, 0), -EINVAL);
    CHECK_ERR(veloq_tcp_listen(sa, 1, 16, 0), -EINVAL);
    CHECK_ERR(veloq_tcp_listen(sa, sizeof a - 1, 16, 0), -EINVAL); /* short for AF_INET */
    CHECK_ERR(veloq_tcp_listen((const struct sockaddr *)&big, sizeof big + 1, 16, 0), -EINVAL);
    CHECK_ERR(veloq_tcp_listen(sa, sizeof a, -1, 0), -EINVAL);
    CHECK_ERR(veloq_tcp_listen(sa, sizeof a, 16, 2), -EINVAL); /* unknown flag */
    CHECK_ERR(veloq_tcp_listen(sa, sizeof a, 16, ~0u), -EINVAL);
    CHECK_ERR(veloq_tcp_listen((const struct sockaddr *)&un, sizeof un, 16, 0), -EAFNOSUPPORT);
    CHECK_ERR(veloq_udp_bind(NULL, sizeof a, 0), -EINVAL);
    CHECK_ERR(veloq_udp_bind(sa, 2, 0), -EINVAL);
    CHECK_ERR(veloq_udp_bind(sa, sizeof a, 4), -EINVAL);
    CHECK_ERR(veloq_udp_bind((const struct sockaddr *)&un, sizeof un, 0), -EAFNOSUPPORT);
    /* An address this host does not have: the kernel's error comes back. */
    a.sin_addr.s_addr = inet_addr("192.0.2.1"); /* TEST-NET-1 */
    CHECK_ERR(veloq_tcp_listen(sa, sizeof a, 16, 0), -EADDRNOTAVAIL);
    CHECK_ERR(veloq_udp_bind(sa, sizeof a, 0), -EADDRNOTAVAIL);
    CHECK_EQ(next_fd(), before);
    /* A longer addrlen than the family needs (up to a sockaddr_storage) is accepted. */
    {
        int l = veloq_tcp_listen((const struct sockaddr *)&big, sizeof big, 16, 0);
        CHECK(l >= 0);
        if (l >= 0)
            close(l);
    }
    CHECK_EQ(next_fd(), before);
}

int main(void) {
    check_init("test_net", 120);
    RUN_CASE(tcp_listener_is_made_listening_and_accepts_through_the_ring);
    RUN_CASE(reuseport_lets_listeners_share_a_port_and_without_it_eaddrinuse);
    RUN_CASE(ipv6_loopback_listens_when_the_host_has_it);
    RUN_CASE(udp_sockets_bind_and_receive_through_the_ring);
    RUN_CASE(bad_input_is_refused_and_leaves_no_descriptor);
    return check_summary();
}
