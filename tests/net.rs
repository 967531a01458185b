//! The promises of `veloq::net`, on real sockets on 127.0.0.1 through real io_uring
//! rings: data arrives intact and in order, errors come back as the kernel's errno,
//! dropping or cancelling an operation never lets the kernel touch its buffer again,
//! multishot accept takes many connections, and shutdown ends in-flight receives.

use std::ffi::c_void;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use veloq::io::RawOp;
use veloq::net::{TcpListener, TcpStream, UdpSocket};
use veloq::{time, Runtime, RuntimeContext};

fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

/// A small deterministic PRNG (xorshift64*), one per connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fnv1a(acc: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(acc, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A connected pair on the current worker: (client end, server end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    (client, server)
}

#[test]
fn a_thousand_concurrent_echo_connections_carry_their_bytes_intact() {
    const CONNS: usize = 1000;
    const BYTES: usize = 16 * 1024;
    let rt = runtime(2);
    let listener = TcpListener::bind_with("127.0.0.1:0", false, 4096).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt
        .spawn(async move {
            let mut incoming = listener.incoming();
            for _ in 0..CONNS {
                let stream = incoming.next().await.expect("open").expect("accepted");
                veloq::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        buf.clear();
                        let (r, b) = stream.read(buf).await;
                        let n = r.expect("server read");
                        if n == 0 {
                            return;
                        }
                        assert_eq!(b.len(), n);
                        let (r, b) = stream.write_all(b).await;
                        r.expect("server write");
                        buf = b;
                    }
                })
                .unwrap();
            }
        })
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..CONNS {
        clients.push(
            rt.spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
                let (mut sent_sum, mut got_sum) = (FNV_START, FNV_START);
                let mut left = BYTES;
                while left > 0 {
                    let n = (1 + rng.below(2048) as usize).min(left);
                    let chunk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    sent_sum = fnv1a(sent_sum, &chunk);
                    let (r, chunk) = stream.write_all(chunk).await;
                    r.expect("client write");
                    let (r, back) = stream.read_exact(vec![0u8; n].into_boxed_slice()).await;
                    r.expect("client read");
                    assert_eq!(&back[..], &chunk[..], "connection {i}: echoed bytes differ");
                    got_sum = fnv1a(got_sum, &back);
                    left -= n;
                }
                stream.close().await.expect("close");
                (sent_sum, got_sum)
            })
            .unwrap(),
        );
    }
    for c in clients {
        let (sent, got) = rt.block_on(c).unwrap();
        assert_eq!(sent, got);
    }
    rt.block_on(server).unwrap();
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let rt = runtime(1);
    // Bind, learn the port, close: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = rt
        .spawn(async move { TcpStream::connect(("127.0.0.1", port)).await })
        .unwrap();
    let err = rt.block_on(h).unwrap().expect_err("nothing listens");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
}

#[test]
fn bad_addresses_are_refused() {
    let rt = runtime(1);
    let err = TcpListener::bind("127.0.0.1").expect_err("no port");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // 192.0.2.0/24 is TEST-NET-1: no interface here has it.
    let err = TcpListener::bind("192.0.2.1:0").expect_err("not a local address");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{err}");
    let err = UdpSocket::bind("192.0.2.1:0").expect_err("not a local address");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{err}");
    let h = rt
        .spawn(async { TcpStream::connect("127.0.0.1:notaport").await })
        .unwrap();
    let err = rt.block_on(h).unwrap().expect_err("bad port");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn io_off_a_worker_fails_clearly_and_gives_the_buffer_back() {
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let stream = TcpStream::from_std(std_stream);
    let (r, buf) = rt.block_on(stream.read(vec![7u8; 3]));
    let err = r.expect_err("off a worker");
    assert!(err.to_string().contains("worker"), "{err}");
    assert_eq!(buf, vec![7u8; 3]);
}

#[test]
fn a_read_on_a_bad_descriptor_is_ebadf() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            // SAFETY (test): far above RLIMIT_NOFILE, so never an open descriptor; it is
            // taken back out below, never closed.
            let stream = unsafe { TcpStream::from_raw_fd(1 << 30) };
            let (r, _) = stream.read(vec![0u8; 16]).await;
            let (w, _) = stream.write(b"x".to_vec()).await;
            let _ = stream.into_raw_fd();
            (r.map(|_| ()), w.map(|_| ()))
        })
        .unwrap();
    let (r, w) = rt.block_on(h).unwrap();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::EBADF));
}

#[test]
fn a_closed_peer_reads_as_end_of_stream_and_writes_fail() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            drop(server);
            let (r, _) = client.read(Vec::with_capacity(16)).await;
            assert_eq!(r.expect("end of stream"), 0);
            // The first write may still be accepted (the peer answers it with a reset).
            for _ in 0..1000 {
                let (r, _) = client.write(b"after close".to_vec()).await;
                if let Err(e) = r {
                    return e.raw_os_error();
                }
                time::sleep(Duration::from_millis(1)).await;
            }
            None
        })
        .unwrap();
    let errno = rt.block_on(h).unwrap();
    assert!(
        errno == Some(libc::EPIPE) || errno == Some(libc::ECONNRESET),
        "{errno:?}"
    );
}

#[test]
fn socket_options_read_back_and_reuseport_shares_a_port() {
    let rt = runtime(1);
    let a = TcpListener::bind_with("127.0.0.1:0", true, 16).unwrap();
    let port = a.local_addr().unwrap().port();
    let b = TcpListener::bind_with(("127.0.0.1", port), true, 16).expect("SO_REUSEPORT");
    assert_eq!(b.local_addr().unwrap().port(), port);
    let err = TcpListener::bind(("127.0.0.1", port)).expect_err("no SO_REUSEPORT");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    let h = rt
        .spawn(async {
            let (client, _server) = pair().await;
            client.set_nodelay(true).unwrap();
            let on = client.nodelay().unwrap();
            client.set_nodelay(false).unwrap();
            (on, client.nodelay().unwrap())
        })
        .unwrap();
    assert_eq!(rt.block_on(h).unwrap(), (true, false));
}

#[test]
fn a_read_dropped_by_timeout_loses_no_data_for_the_next_read() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            let r = time::timeout(
                Duration::from_millis(5),
                server.read(Vec::with_capacity(64)),
            )
            .await;
            assert!(r.is_err(), "nothing was sent");
            client
                .write_all(b"after the drop".to_vec())
                .await
                .0
                .unwrap();
            let (r, buf) = server.read_exact(vec![0u8; 14].into_boxed_slice()).await;
            r.unwrap();
            buf
        })
        .unwrap();
    assert_eq!(&rt.block_on(h).unwrap()[..], b"after the drop");
}

#[test]
fn a_receive_deadline_ends_the_receive_then_data_still_arrives() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            let (r, buf) = server
                .recv_with_deadline(Vec::with_capacity(64), Duration::from_millis(5))
                .await;
            let kind = r.expect_err("nothing was sent").kind();
            client.write_all(b"late".to_vec()).await.0.unwrap();
            let (r, buf) = server
                .recv_with_deadline(buf, Duration::from_secs(60))
                .await;
            (kind, r.unwrap(), buf)
        })
        .unwrap();
    let (kind, n, buf) = rt.block_on(h).unwrap();
    assert_eq!(kind, ErrorKind::TimedOut);
    assert_eq!(&buf[..n], b"late");
}

#[test]
fn readable_waits_for_data_and_shutdown_write_ends_the_peers_stream() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            client.write_all(b"hi".to_vec()).await.0.unwrap();
            server.readable().await.unwrap();
            let (r, buf) = server.read(Vec::with_capacity(8)).await;
            assert_eq!(r.unwrap(), 2);
            client.shutdown(std::net::Shutdown::Write).await.unwrap();
            let (r, _) = server.read(buf).await;
            r.unwrap()
        })
        .unwrap();
    assert_eq!(rt.block_on(h).unwrap(), 0);
}

/// What the callback of a raw submission saw.
struct Calls {
    count: AtomicUsize,
    res: AtomicI64,
}

unsafe extern "C" fn record(_cx: *mut RuntimeContext, res: i64, _flags: u32, arg: *mut c_void) {
    // SAFETY: `arg` is the `Calls` the test keeps alive until the callback ran.
    let calls = unsafe { &*(arg as *const Calls) };
    calls.res.store(res, SeqCst);
    calls.count.fetch_add(1, SeqCst);
}

#[test]
fn a_cancelled_receive_completes_once_and_never_touches_its_buffer() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            let calls = Arc::new(Calls {
                count: AtomicUsize::new(0),
                res: AtomicI64::new(0),
            });
            let mut buf = vec![0xA5u8; 4096].into_boxed_slice();
            let op = RawOp::Recv {
                fd: server.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: buf.len() as u32,
                flags: 0,
            };
            let id = RuntimeContext::with_current(|cx| {
                let arg = Arc::as_ptr(&calls) as *mut c_void;
                // SAFETY: `buf` and `calls` live until the callback has run (checked
                // below before either is dropped).
                unsafe { cx.expect("on a worker").submit_io(op, record, arg) }
            })
            .expect("submitted");
            RuntimeContext::with_current(|cx| cx.unwrap().cancel_io(id)).expect("cancel");
            for _ in 0..10_000 {
                if calls.count.load(SeqCst) > 0 {
                    break;
                }
                time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(calls.count.load(SeqCst), 1, "one completion");
            assert_eq!(calls.res.load(SeqCst), -libc::ECANCELED as i64);
            let again = RuntimeContext::with_current(|cx| cx.unwrap().cancel_io(id));
            assert_eq!(
                again,
                Err(-libc::ENOENT),
                "finished ops cannot be cancelled"
            );
            // Data sent now goes to a new receive, never into the cancelled one's buffer.
            client.write_all(b"fresh data".to_vec()).await.0.unwrap();
            let (r, got) = server.read_exact(vec![0u8; 10].into_boxed_slice()).await;
            r.unwrap();
            assert_eq!(&got[..], b"fresh data");
            time::sleep(Duration::from_millis(10)).await;
            assert_eq!(calls.count.load(SeqCst), 1, "still one completion");
            buf.iter().all(|&b| b == 0xA5)
        })
        .unwrap();
    assert!(
        rt.block_on(h).unwrap(),
        "the cancelled receive's buffer was written"
    );
}

#[test]
fn a_raw_receive_with_a_deadline_is_cancelled_once_when_nothing_arrives() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (_client, server) = pair().await;
            let calls = Arc::new(Calls {
                count: AtomicUsize::new(0),
                res: AtomicI64::new(0),
            });
            let mut buf = vec![0u8; 64].into_boxed_slice();
            let op = RawOp::Recv {
                fd: server.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: buf.len() as u32,
                flags: 0,
            };
            // A timer has its own time, so a deadline on one is refused.
            let refused = RuntimeContext::with_current(|cx| {
                let arg = Arc::as_ptr(&calls) as *mut c_void;
                // SAFETY: refused, so nothing is kept.
                unsafe {
                    cx.expect("on a worker").submit_io_with_timeout(
                        RawOp::Timeout { ns: 1 },
                        1,
                        record,
                        arg,
                    )
                }
            });
            assert_eq!(refused, Err(-libc::EINVAL));
            RuntimeContext::with_current(|cx| {
                let arg = Arc::as_ptr(&calls) as *mut c_void;
                // SAFETY: `buf` and `calls` live until the callback ran (awaited below).
                unsafe {
                    cx.expect("on a worker")
                        .submit_io_with_timeout(op, 10_000_000, record, arg)
                }
            })
            .expect("submitted");
            for _ in 0..10_000 {
                if calls.count.load(SeqCst) > 0 {
                    break;
                }
                time::sleep(Duration::from_millis(1)).await;
            }
            time::sleep(Duration::from_millis(10)).await;
            (calls.count.load(SeqCst), calls.res.load(SeqCst))
        })
        .unwrap();
    assert_eq!(rt.block_on(h).unwrap(), (1, -libc::ECANCELED as i64));
}

#[test]
fn multishot_accept_takes_a_thousand_connections() {
    const CONNS: usize = 1000;
    let rt = runtime(2);
    let listener = TcpListener::bind_with("127.0.0.1:0", false, 4096).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt
        .spawn(async move {
            let mut incoming = listener.incoming();
            let mut streams = Vec::new();
            while streams.len() < CONNS {
                streams.push(incoming.next().await.expect("open").expect("accepted"));
            }
            incoming.stop();
            // Nothing else connects: the stream ends.
            assert!(incoming.next().await.is_none());
            let mut seen = vec![false; CONNS];
            for s in &streams {
                let (r, buf) = s.read_exact(vec![0u8; 4].into_boxed_slice()).await;
                r.unwrap();
                let i = u32::from_le_bytes(buf[..].try_into().unwrap()) as usize;
                assert!(!seen[i], "index {i} twice");
                seen[i] = true;
            }
            seen.iter().all(|&s| s)
        })
        .unwrap();
    let clients: Vec<_> = (0..CONNS as u32)
        .map(|i| {
            rt.spawn(async move {
                let s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(i.to_le_bytes().to_vec()).await.0.unwrap();
                // Keep the connection until the server has read its index.
                let (r, _) = s.read(Vec::with_capacity(1)).await;
                r.unwrap()
            })
            .unwrap()
        })
        .collect();
    assert!(rt.block_on(server).unwrap(), "every index arrived once");
    for c in clients {
        // The server's streams were dropped with it: each client sees the end.
        assert_eq!(rt.block_on(c).unwrap(), 0);
    }
}

#[test]
fn udp_reuseport_shares_a_port_and_without_it_the_port_is_taken() {
    let a = UdpSocket::bind_with("127.0.0.1:0", true).unwrap();
    let port = a.local_addr().unwrap().port();
    let b = UdpSocket::bind_with(("127.0.0.1", port), true).expect("SO_REUSEPORT");
    assert_eq!(b.local_addr().unwrap().port(), port);
    let err = UdpSocket::bind(("127.0.0.1", port)).expect_err("no SO_REUSEPORT");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
}

#[test]
fn udp_datagrams_round_trip_with_their_addresses() {
    let rt = runtime(2);
    let h = rt
        .spawn(async {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let (r, _) = a.send_to(b"ping".to_vec(), b_addr).await;
            assert_eq!(r.unwrap(), 4);
            let (r, buf) = b.recv_from(Vec::with_capacity(64)).await;
            let (n, from) = r.unwrap();
            assert_eq!((&buf[..n], from), (&b"ping"[..], a_addr));
            let (r, _) = b.send_to(b"pong!".to_vec(), from).await;
            assert_eq!(r.unwrap(), 5);
            let (r, buf) = a.recv_from(vec![0u8; 64]).await;
            let (n, from) = r.unwrap();
            assert_eq!((&buf[..n], from), (&b"pong!"[..], b_addr));
            // Connected: send/recv without addresses.
            a.connect(b_addr).await.unwrap();
            assert_eq!(a.peer_addr().unwrap(), b_addr);
            assert_eq!(a.send(b"third".to_vec()).await.0.unwrap(), 5);
            let (r, buf) = b.recv(Vec::with_capacity(64)).await;
            assert_eq!(&buf[..r.unwrap()], b"third");
            let ipv6: Result<SocketAddr, _> = "[::1]:9".parse();
            let (r, _) = a.send_to(b"x".to_vec(), ipv6.unwrap()).await;
            r.expect_err("an IPv6 destination on an IPv4 socket")
                .raw_os_error()
        })
        .unwrap();
    let errno = rt.block_on(h).unwrap();
    assert!(
        errno == Some(libc::EAFNOSUPPORT) || errno == Some(libc::EINVAL),
        "{errno:?}"
    );
}

#[test]
fn shutdown_ends_a_thousand_in_flight_receives() {
    const CONNS: usize = 1000;
    let rt = runtime(2);
    // The peers live on a plain thread and stay open (and silent) until the end: were they
    // the runtime's, shutdown could close one before its client's receive is cancelled,
    // and that receive would rightly end with its real result, end of stream.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: a listening socket we own; listen again only raises its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    let addr = listener.local_addr().unwrap();
    let (release_peers, peers_released) = std::sync::mpsc::channel::<()>();
    let peers = std::thread::spawn(move || {
        let streams: Vec<_> = (0..CONNS)
            .map(|_| listener.accept().expect("accepted").0)
            .collect();
        peers_released.recv().ok();
        streams.len()
    });
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CONNS)
        .map(|_| {
            let started = started.clone();
            rt.spawn(async move {
                let s = TcpStream::connect(addr).await.expect("connect");
                started.fetch_add(1, SeqCst);
                // Nobody ever sends: only shutdown ends this.
                let (r, _) = s.read(Vec::with_capacity(64)).await;
                r.expect_err("ended by shutdown").raw_os_error()
            })
            .unwrap()
        })
        .collect();
    for _ in 0..30_000 {
        if started.load(SeqCst) == CONNS {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(started.load(SeqCst), CONNS, "every connection made");
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown(Some(Duration::from_secs(30)))
        .expect("shutdown ends");
    for h in handles {
        let errno = rt.block_on(h).unwrap();
        assert!(
            errno == Some(libc::ECANCELED) || errno == Some(libc::ESHUTDOWN),
            "{errno:?}"
        );
    }
    release_peers.send(()).unwrap();
    assert_eq!(peers.join().unwrap(), CONNS);
}

#[test]
fn vectored_socket_sends_and_receives_keep_byte_order() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            let parts = vec![b"abc".to_vec(), Vec::new(), b"defgh".to_vec()];
            let (r, _) = client.write_vectored(parts).await;
            assert_eq!(r.unwrap(), 8);
            let mut got = Vec::new();
            while got.len() < 8 {
                let bufs = vec![Vec::with_capacity(2), Vec::with_capacity(64)];
                let (r, bufs) = server.read_vectored(bufs).await;
                let n = r.unwrap();
                assert!(n > 0);
                assert_eq!(bufs[0].len() + bufs[1].len(), n);
                got.extend_from_slice(&bufs[0]);
                got.extend_from_slice(&bufs[1]);
            }
            assert_eq!(got, b"abcdefgh");
            drop(client);
            let (r, _) = server
                .read_vectored(vec![Vec::<u8>::with_capacity(4)])
                .await;
            assert_eq!(r.unwrap(), 0, "end of stream");
        })
        .unwrap();
    rt.block_on(h).unwrap();
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
}

#[test]
fn write_all_of_more_than_the_socket_takes_at_once_arrives_whole_and_in_order() {
    // Several MiB cannot go in one send: the write is finished by further sends of the
    // rest, which must neither repeat nor skip a byte.
    const LEN: usize = 6 << 20;
    let rt = runtime(1);
    let h = rt
        .spawn_local_to(0, || async {
            let (client, server) = pair().await;
            let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
            let expected = fnv1a(FNV_START, &data);
            let reader = veloq::spawn_local(async move {
                let (r, buf) = server.read_exact(vec![0u8; LEN].into_boxed_slice()).await;
                r.unwrap();
                fnv1a(FNV_START, &buf)
            })
            .unwrap();
            let (r, data) = client.write_all(data).await;
            r.unwrap();
            assert_eq!(data.len(), LEN, "the buffer comes back as it was");
            (reader.await.unwrap(), expected)
        })
        .unwrap();
    let (got, expected) = rt.block_on(h).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn an_empty_write_all_sends_nothing_and_gives_the_buffer_back() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            let (r, buf) = client.write_all(Vec::with_capacity(16)).await;
            r.unwrap();
            assert_eq!(buf.capacity(), 16);
            // The next bytes are the first the peer sees.
            client.write_all(b"first".to_vec()).await.0.unwrap();
            let (r, buf) = server.read_exact(vec![0u8; 5].into_boxed_slice()).await;
            r.unwrap();
            buf
        })
        .unwrap();
    assert_eq!(&rt.block_on(h).unwrap()[..], b"first");
}

#[test]
fn a_read_dropped_before_it_was_polled_takes_no_data() {
    let rt = runtime(1);
    let h = rt
        .spawn(async {
            let (client, server) = pair().await;
            drop(server.read(Vec::with_capacity(64)));
            client.write_all(b"all here".to_vec()).await.0.unwrap();
            let (r, buf) = server.read_exact(vec![0u8; 8].into_boxed_slice()).await;
            r.unwrap();
            buf
        })
        .unwrap();
    assert_eq!(&rt.block_on(h).unwrap()[..], b"all here");
}

#[test]
fn a_read_started_by_one_task_and_finished_by_another_wakes_the_second() {
    use std::cell::RefCell;
    use std::future::{poll_fn, Future};
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::Poll;

    let rt = runtime(1);
    let h = rt
        .spawn_local_to(0, || async {
            let (client, server) = pair().await;
            let server = Rc::new(server);
            let handoff = Rc::new(RefCell::new(None));
            // The first task submits the read (its waker goes with it), then hands the
            // unfinished read over and ends.
            let (s, slot) = (server.clone(), handoff.clone());
            veloq::spawn_local(async move {
                let mut read = Box::pin(async move { s.read(Vec::with_capacity(64)).await });
                poll_fn(|cx| {
                    assert!(read.as_mut().poll(cx).is_pending(), "nothing was sent yet");
                    Poll::Ready(())
                })
                .await;
                *slot.borrow_mut() = Some(read);
            })
            .unwrap()
            .await
            .unwrap();
            let read: Pin<Box<dyn Future<Output = _>>> =
                handoff.borrow_mut().take().expect("handed over");
            let second = veloq::spawn_local(read).unwrap();
            client.write_all(b"to the second".to_vec()).await.0.unwrap();
            let (r, buf) = second.await.unwrap();
            assert_eq!(r.unwrap(), 13);
            buf
        })
        .unwrap();
    assert_eq!(&rt.block_on(h).unwrap()[..], b"to the second");
}

// ------------------------------------------------------------ multishot receive

/// Runs the `!Send` future `make` returns as a local task on worker 0 and waits for it.
fn on_worker<F, M>(rt: &Runtime, make: M) -> F::Output
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future + 'static,
    F::Output: Send + 'static,
{
    let h = rt
        .spawn_local_to(0, make)
        .unwrap_or_else(|_| panic!("spawn"));
    rt.block_on(h).expect("the task finished")
}

/// A listener on 127.0.0.1 and a blocking client (a std socket, for a plain thread) on
/// it; the server side is accepted by the caller's task.
fn listener_and_client() -> (TcpListener, std::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (listener, client)
}

/// Writes `total` pseudo-random bytes from `seed` in writes of random sizes, then
/// closes; returns the bytes' checksum.
fn send_random(mut client: std::net::TcpStream, seed: u64, total: usize) -> u64 {
    use std::io::Write;
    let mut rng = Rng(seed);
    let (mut sent, mut sum) = (0, FNV_START);
    while sent < total {
        let n = (1 + rng.below(3000) as usize).min(total - sent);
        let msg: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        client.write_all(&msg).unwrap();
        sum = fnv1a(sum, &msg);
        sent += n;
    }
    sum
}

#[test]
fn a_multishot_receive_delivers_every_byte_in_order_then_ends_at_end_of_stream() {
    const TOTAL: usize = 4 << 20;
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let writer = std::thread::spawn(move || send_random(client, 7, TOTAL));
    let (got, sum, arms) = on_worker(&rt, move || async move {
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(64, 4096).expect("a buffer ring (Linux >= 5.19)");
        assert_eq!((ring.count(), ring.buf_size()), (64, 4096));
        let mut rx = server.recv_multishot(&ring);
        let (mut got, mut sum) = (0, FNV_START);
        while let Some(chunk) = rx.next().await {
            let chunk = chunk.expect("no error before the end of stream");
            assert!(!chunk.is_empty() && chunk.len() <= 4096);
            sum = fnv1a(sum, &chunk);
            got += chunk.len();
        }
        assert!(rx.next().await.is_none(), "the stream stays ended");
        (got, sum, rx.arms())
    });
    assert_eq!(got, TOTAL);
    assert_eq!(sum, writer.join().unwrap(), "same bytes, same order");
    assert!(arms >= 1);
}

#[test]
fn a_tiny_ring_runs_dry_and_the_receive_is_rearmed_without_losing_or_reordering_bytes() {
    const TOTAL: usize = 256 << 10;
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let writer = std::thread::spawn(move || send_random(client, 11, TOTAL));
    let (got, sum, arms) = on_worker(&rt, move || async move {
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(2, 64).unwrap();
        let mut rx = server.recv_multishot(&ring);
        let (mut got, mut sum) = (0, FNV_START);
        let mut held = Vec::new();
        while let Some(chunk) = rx.next().await {
            let chunk = chunk.unwrap();
            got += chunk.len();
            held.push(chunk);
            if held.len() == 2 {
                // Every buffer is held: the kernel can only end the receive (ENOBUFS).
                for c in held.drain(..) {
                    sum = fnv1a(sum, &c);
                }
                // Yield so the kernel receives into no buffer meanwhile.
                time::sleep(Duration::from_micros(50)).await;
            }
        }
        for c in held.drain(..) {
            sum = fnv1a(sum, &c);
        }
        (got, sum, rx.arms())
    });
    assert_eq!(got, TOTAL);
    assert_eq!(sum, writer.join().unwrap(), "same bytes, same order");
    assert!(
        arms > 1,
        "a dry ring ended the multishot receive and it was re-armed"
    );
}

#[test]
fn next_waits_while_every_buffer_is_held_and_goes_on_once_one_is_dropped() {
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let out = on_worker(&rt, move || async move {
        use std::io::Write;
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(1, 8).unwrap();
        let mut rx = server.recv_multishot(&ring);
        let mut client = client;
        client.write_all(b"01234567abcdefgh").unwrap();
        let first = rx.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"01234567");
        let waited = time::timeout(Duration::from_millis(20), rx.next()).await;
        assert!(waited.is_err(), "no buffer: next waits");
        drop(first);
        let second = rx.next().await.unwrap().unwrap();
        second.to_vec()
    });
    assert_eq!(&out[..], b"abcdefgh");
}

#[test]
fn stop_then_draining_loses_nothing_and_a_plain_read_takes_the_rest() {
    const TOTAL: usize = 1 << 20;
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let writer = std::thread::spawn(move || send_random(client, 13, TOTAL));
    let (got, sum) = on_worker(&rt, move || async move {
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(16, 1024).unwrap();
        let (mut got, mut sum) = (0, FNV_START);
        {
            let mut rx = server.recv_multishot(&ring);
            for _ in 0..5 {
                let c = rx.next().await.unwrap().unwrap();
                got += c.len();
                sum = fnv1a(sum, &c);
            }
            rx.stop();
            while let Some(c) = rx.next().await {
                let c = c.expect("a stopped receive ends with None, not an error");
                got += c.len();
                sum = fnv1a(sum, &c);
            }
        }
        let mut buf = Vec::with_capacity(8192);
        loop {
            buf.clear();
            let (r, b) = server.read(buf).await;
            buf = b;
            if r.unwrap() == 0 {
                break;
            }
            got += buf.len();
            sum = fnv1a(sum, &buf);
        }
        (got, sum)
    });
    assert_eq!(got, TOTAL);
    assert_eq!(sum, writer.join().unwrap(), "same bytes, same order");
}

#[test]
fn a_dropped_stream_gives_back_its_buffers_and_a_plain_read_still_works() {
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let (after, tail) = on_worker(&rt, move || async move {
        use std::io::Write;
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(4, 64).unwrap();
        let mut client = client;
        // Chunks the dropped stream received but never returned: their buffers go back.
        let mut rx = server.recv_multishot(&ring);
        client.write_all(&[1u8; 10]).unwrap();
        assert_eq!(&rx.next().await.unwrap().unwrap()[..], &[1u8; 10]);
        let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        client.write_all(&sent).unwrap();
        time::sleep(Duration::from_millis(20)).await; // let completions queue up
        drop(rx);
        // The cancel reached the kernel once a later operation completed.
        veloq::io::nop().await.unwrap();
        // Every buffer is back: a new stream on the same ring receives what is left.
        let mut rx = server.recv_multishot(&ring);
        let mut tail = Vec::new();
        while tail.len() < 1000 - 4 * 64 {
            let c = time::timeout(Duration::from_secs(10), rx.next())
                .await
                .expect("buffers were given back")
                .unwrap()
                .unwrap();
            tail.extend_from_slice(&c);
        }
        rx.stop();
        while let Some(c) = rx.next().await {
            tail.extend_from_slice(&c.unwrap());
        }
        drop(rx);
        client.write_all(b"after the drop").unwrap();
        let (r, buf) = server.read_exact(vec![0u8; 14].into_boxed_slice()).await;
        r.unwrap();
        (buf, (tail, sent))
    });
    assert_eq!(&after[..], b"after the drop");
    let (tail, sent) = tail;
    assert!(
        sent.ends_with(&tail),
        "what is left arrives in order, nothing skipped"
    );
}

#[test]
fn a_reset_connection_is_one_error_then_none() {
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let (first, then) = on_worker(&rt, move || async move {
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(4, 64).unwrap();
        let mut rx = server.recv_multishot(&ring);
        // Close with SO_LINGER 0: the peer sees a reset.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket with a valid linger struct.
        let rc = unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const c_void,
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        drop(client);
        let first = rx.next().await.map(|r| r.map(|b| b.len()));
        let then = rx.next().await.is_none();
        (first.map(|r| r.map_err(|e| e.raw_os_error())), then)
    });
    assert_eq!(first, Some(Err(Some(libc::ECONNRESET))));
    assert!(then, "the error ends the stream");
}

#[test]
fn chunks_arriving_after_the_drop_give_their_buffers_back_too() {
    let rt = runtime(1);
    let (listener, client) = listener_and_client();
    let got = on_worker(&rt, move || async move {
        use std::io::Write;
        let (server, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(4, 64).unwrap();
        let mut client = client;
        let mut rx = server.recv_multishot(&ring);
        client.write_all(b"armed").unwrap();
        assert_eq!(&rx.next().await.unwrap().unwrap()[..], b"armed");
        // Enough for every buffer of the ring, received before the drop is seen by the
        // kernel. On a ring without DEFER_TASKRUN (e.g. under valgrind) the kernel
        // receives it during the write and the completions are reaped after the drop (the
        // driver gives their buffers back); with DEFER_TASKRUN the cancel goes first and
        // the bytes stay in the socket. Either way the ring gets every buffer back.
        client.write_all(&[9u8; 200]).unwrap();
        drop(rx);
        veloq::io::nop().await.unwrap();
        client.write_all(b"next").unwrap();
        let mut rx = server.recv_multishot(&ring);
        let mut got = Vec::new();
        while !got.ends_with(b"next") {
            let c = time::timeout(Duration::from_secs(10), rx.next())
                .await
                .expect("the dropped stream's buffers came back")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&c);
        }
        got
    });
    assert!(got.ends_with(b"next"));
    assert!(got[..got.len() - 4].iter().all(|&b| b == 9));
}

#[test]
fn a_receive_starved_by_another_streams_unread_chunks_waits_instead_of_rearming() {
    let rt = runtime(1);
    let (listener, client_a) = listener_and_client();
    let client_b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (arms_while_dry, b_got) = on_worker(&rt, move || async move {
        use std::io::Write;
        let (a, _) = listener.accept().await.unwrap();
        let (b, _) = listener.accept().await.unwrap();
        let ring = veloq::io::BufRing::new(2, 64).unwrap();
        let (mut client_a, mut client_b) = (client_a, client_b);
        let mut rx_a = a.recv_multishot(&ring);
        // Arm A's receive, then let the kernel fill both buffers with A's bytes, which
        // A's task does not read yet.
        assert!(time::timeout(Duration::from_millis(1), rx_a.next())
            .await
            .is_err());
        client_a.write_all(&[7u8; 200]).unwrap();
        time::sleep(Duration::from_millis(10)).await;
        // B finds the ring dry: its receive ends with ENOBUFS and waits for a buffer.
        client_b.write_all(b"b").unwrap();
        let mut rx_b = b.recv_multishot(&ring);
        assert!(time::timeout(Duration::from_millis(20), rx_b.next())
            .await
            .is_err());
        let arms_while_dry = rx_b.arms();
        // A reads (and drops) its chunks: B goes on.
        drop(rx_a.next().await.unwrap().unwrap());
        let b_got = rx_b.next().await.unwrap().unwrap().to_vec();
        (arms_while_dry, b_got)
    });
    assert_eq!(arms_while_dry, 1, "no re-arm before a buffer came back");
    assert_eq!(&b_got[..], b"b");
}
