//! The Rust echo servers of the I/O bench, run as `io serve <kind> --port P --workers W`
//! (the bench binary starts itself as the server process, so `cargo bench --bench io`
//! builds everything Rust-side). Each is the plain echo loop of its runtime's own
//! examples: a 16 KiB buffer, read, write everything read, until EOF or an error.

use std::net::SocketAddr;

/// The Rust servers this binary can be, by the name given after `serve`.
pub const KINDS: [&str; 2] = ["tokio", "monoio"];

/// Runs the server `kind` on 127.0.0.1:`port` with `workers` threads; never returns unless
/// the arguments are wrong (then it says so and exits with status 2).
pub fn serve(args: &[String]) -> ! {
    let usage = || -> ! {
        eprintln!(
            "usage: io serve <{}> --port P [--workers W]",
            KINDS.join("|")
        );
        std::process::exit(2);
    };
    let Some(kind) = args.first() else { usage() };
    let mut port = None;
    let mut workers = 2usize;
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--port", Some(p)) if (1..=65535).contains(&p) => port = Some(p as u16),
            ("--workers", Some(w)) if w >= 1 => workers = w,
            _ => usage(),
        }
    }
    let Some(port) = port else { usage() };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match kind.as_str() {
        "tokio" => tokio_echo(addr, workers),
        "monoio" => monoio_echo(addr, workers),
        _ => usage(),
    }
    std::process::exit(0)
}

/// Tokio: one multi_thread runtime with `workers` worker threads and one listener; the
/// accept loop runs in `block_on` (as under `#[tokio::main]`) and spawns a task per
/// connection, which the workers share and steal.
fn tokio_echo(addr: SocketAddr, workers: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("tokio: bind");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Monoio: `workers` threads, each its own io_uring runtime with its own listener on the
/// same address (SO_REUSEPORT, the way Monoio spreads connections over cores); a task per
/// connection on the thread that accepted it.
fn monoio_echo(addr: SocketAddr, workers: usize) {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .build()
                    .expect("monoio runtime");
                rt.block_on(async move {
                    let opts = monoio::net::ListenerOpts::new()
                        .reuse_port(true)
                        .reuse_addr(true)
                        .backlog(4096);
                    let listener = monoio::net::TcpListener::bind_with_config(addr, &opts)
                        .expect("monoio: bind");
                    loop {
                        let Ok((mut stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        monoio::spawn(async move {
                            let mut buf = Vec::with_capacity(16 * 1024);
                            loop {
                                let (res, b) = stream.read(buf).await;
                                buf = b;
                                if !matches!(res, Ok(n) if n > 0) {
                                    return;
                                }
                                let (res, b) = stream.write_all(buf).await;
                                buf = b;
                                if res.is_err() {
                                    return;
                                }
                                buf.clear();
                            }
                        });
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
