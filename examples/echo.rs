//! A multi-worker TCP echo server on veloq.
//!
//! ```text
//! cargo run --release --example echo -- [--port 7878] [--workers 2] [--seconds N]
//!     [--recv-per-request] [--spin-us US] [--batch-us US] [--sched-other] [--stats]
//! ```
//!
//! Each worker binds its own `SO_REUSEPORT` listener (the kernel spreads connections
//! over them) and accepts with one multishot accept; each connection is a local task
//! that keeps one multishot receive armed (`TcpStream::recv_multishot`) into a
//! provided-buffer ring its worker shares among its connections, and writes each chunk
//! straight from its ring buffer: no receive submitted per request. With
//! `--recv-per-request` a connection instead loops read → write_all with one 4 KiB
//! buffer that moves into each operation and back (one receive submitted per request);
//! either way the per-request path allocates nothing. `--spin-us` sets the longest an
//! idle worker spins before it parks (the runtime's default otherwise; the spin adapts
//! below it, see `RuntimeBuilder::spin_before_park`). `--batch-us` sets the longest a
//! busy worker's park waits for a batch of completions (`RuntimeBuilder::io_batch_wait`;
//! the runtime's default otherwise). `--sched-other` keeps the workers under the default
//! scheduling policy instead of `SCHED_BATCH` (`RuntimeBuilder::sched_batch(false)`).
//! `--stats` prints each worker's I/O counters when the
//! server stops (operations, `io_uring_enter` calls, parks: how many completions one
//! system call carried). `--multishot`, the default, is still accepted.
//! Runs until SIGINT/SIGTERM, or for `--seconds N`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use std::rc::Rc;

use veloq::io::BufRing;
use veloq::net::{TcpListener, TcpStream};
use veloq::Runtime;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, SeqCst);
}

struct Args {
    port: u16,
    workers: usize,
    seconds: Option<u64>,
    /// One multishot receive per connection (the default), or one receive submitted
    /// per request (`--recv-per-request`).
    multishot: bool,
    /// `spin_before_park` override (`--spin-us`); the runtime's default otherwise.
    spin: Option<Duration>,
    /// `io_batch_wait` override (`--batch-us`); the runtime's default otherwise.
    batch: Option<Duration>,
    /// Keep the workers under `SCHED_OTHER` (`--sched-other`).
    sched_other: bool,
    /// Print each worker's I/O counters at the end (`--stats`).
    stats: bool,
}

/// Buffers in each worker's ring (multishot mode) and their size.
const RING_BUFS: usize = 1024;
const RING_BUF_SIZE: usize = 4096;

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 7878,
        workers: 2,
        seconds: None,
        multishot: true,
        spin: None,
        batch: None,
        sched_other: false,
        stats: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--seconds" => {
                args.seconds = Some(value()?.parse().map_err(|e| format!("--seconds: {e}"))?)
            }
            "--multishot" => args.multishot = true,
            "--recv-per-request" => args.multishot = false,
            "--spin-us" => {
                let us: u64 = value()?.parse().map_err(|e| format!("--spin-us: {e}"))?;
                args.spin = Some(Duration::from_micros(us));
            }
            "--batch-us" => {
                let us: u64 = value()?.parse().map_err(|e| format!("--batch-us: {e}"))?;
                args.batch = Some(Duration::from_micros(us));
            }
            "--sched-other" => args.sched_other = true,
            "--stats" => args.stats = true,
            "-h" | "--help" => {
                return Err(
                    "usage: echo [--port P] [--workers W] [--seconds N] [--recv-per-request] \
                 [--spin-us US] [--batch-us US] [--sched-other] [--stats]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    Ok(args)
}

/// Echoes until the peer closes, an error, or shutdown cancels the read.
async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let (r, b) = stream.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (r, b) = stream.write_all(buf).await;
        buf = b;
        if r.is_err() {
            return;
        }
    }
}

/// Echoes with one multishot receive into `ring`, writing each chunk from its ring
/// buffer (which goes back to the ring once written), until the peer closes, an error,
/// or shutdown.
async fn echo_multishot(stream: TcpStream, ring: Rc<BufRing>) {
    let _ = stream.set_nodelay(true);
    let mut chunks = stream.recv_multishot(&ring);
    while let Some(Ok(chunk)) = chunks.next().await {
        if stream.write_all(chunk).await.0.is_err() {
            return;
        }
    }
}

/// One worker's accept loop on its own SO_REUSEPORT listener.
async fn serve(listener: TcpListener, multishot: bool) {
    let ring = if multishot {
        match BufRing::new(RING_BUFS, RING_BUF_SIZE) {
            Ok(r) => Some(Rc::new(r)),
            Err(e) => {
                eprintln!("buffer ring: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        match conn {
            Ok(stream) => {
                let spawned = match &ring {
                    Some(ring) => veloq::spawn_local(echo_multishot(stream, ring.clone())).is_ok(),
                    None => veloq::spawn_local(echo(stream)).is_ok(),
                };
                if !spawned {
                    return; // shutting down
                }
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let rt = Runtime::builder()
        .workers(args.workers)
        .spin_before_park(args.spin.unwrap_or(veloq::RuntimeBuilder::DEFAULT_SPIN))
        .io_batch_wait(
            args.batch
                .unwrap_or(veloq::RuntimeBuilder::DEFAULT_IO_BATCH_WAIT),
        )
        .sched_batch(!args.sched_other)
        .build()
        .unwrap_or_else(|e| {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        });
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let mut listeners = Vec::new();
    for w in 0..args.workers {
        // Bound here so a taken port fails at once; each listener then lives on its worker.
        let listener = TcpListener::bind_with(addr, true, 4096).unwrap_or_else(|e| {
            eprintln!("bind {addr}: {e}");
            std::process::exit(1);
        });
        listeners.push(
            rt.spawn_local_to(w, move || serve(listener, args.multishot))
                .unwrap_or_else(|_| panic!("spawn on worker {w}")),
        );
    }
    let mode = if args.multishot {
        " (multishot receive)"
    } else {
        " (one receive per request)"
    };
    println!(
        "echo: listening on {addr} with {} workers{mode}",
        args.workers
    );
    let start = Instant::now();
    while !STOP.load(SeqCst) {
        if args
            .seconds
            .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("echo: stopping");
    if args.stats {
        for (w, s) in rt.stats().iter().enumerate() {
            println!(
                "worker {w}: io submitted {} completed {}, io_uring_enter calls {}, parks {} \
                 ({} waited for a batch), scheduling policy {}",
                s.io_submitted,
                s.io_completed,
                s.io_enters,
                s.parks,
                s.io_batched_parks,
                match s.sched_policy {
                    libc::SCHED_BATCH => "SCHED_BATCH",
                    libc::SCHED_OTHER => "SCHED_OTHER",
                    _ => "another (inherited)",
                }
            );
        }
    }
    if rt.shutdown(Some(Duration::from_secs(5))).is_err() {
        // Connections still open were cancelled; wait for the workers to exit.
        let _ = rt.shutdown(None);
    }
}
