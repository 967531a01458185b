//! TCP echo over loopback: every server of [`SERVERS`] that is built, driven by the one
//! load generator (`benches/io/loadgen.c`), with the system calls it makes per request.
//!
//! One run of one server: start it (`--port P --workers 2`, 127.0.0.1 only), wait until it
//! accepts connections, then
//!
//! 1. the measured pass: `loadgen` with `--warmup-ms` then `--duration-ms`, nothing else
//!    attached to the server; gives requests/s and p50/p99 latency;
//! 2. the counting pass, on the same server right after: a shorter loadgen run during which
//!    `perf stat -e raw_syscalls:sys_enter -p PID` counts the system calls every thread of
//!    the server makes; system calls per request = (count ÷ window) ÷ that pass's
//!    requests/s. Counting is a separate pass because the tracepoint costs ~0.3 µs per
//!    system call here, which would slow the servers making the most calls the most.
//!
//! then kill the server. Every server is a fresh process for every run.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{fmt_value, quick, repo_root, Goal, Row, Scenario, VELOQ};
use crate::rounds::{self, Contender};

/// How a server is started.
#[derive(Clone, Copy)]
pub enum Launch {
    /// An executable, relative to the repository root.
    Binary(&'static str),
    /// This bench binary itself, as `io serve <kind>` (see `servers.rs`).
    SelfServe(&'static str),
}

/// One echo server of the table.
pub struct Server {
    /// Its column in the result rows.
    pub name: &'static str,
    pub launch: Launch,
    /// Arguments given before `--port P --workers W`.
    pub args: &'static [&'static str],
    /// How to build it when it is missing.
    pub build: &'static str,
}

/// Every echo server, veloq's first. A `Binary` that does not exist is skipped with a
/// "not built" note, so veloq's rows appear as soon as its servers are built.
pub const SERVERS: [Server; 11] = [
    Server {
        name: VELOQ,
        launch: Launch::Binary("target/release/examples/echo"),
        // The example's default: one multishot receive per connection, the runtime's
        // default (adaptive) idle spin.
        args: &[],
        build: "cargo build --release --example echo",
    },
    Server {
        name: "veloq-recv",
        launch: Launch::Binary("target/release/examples/echo"),
        args: &["--recv-per-request"],
        build: "cargo build --release --example echo",
    },
    Server {
        name: "veloq-nobatch",
        launch: Launch::Binary("target/release/examples/echo"),
        // The default server with completion batching at park off
        // (`RuntimeBuilder::io_batch_wait`): what the batching buys or costs.
        args: &["--batch-us", "0"],
        build: "cargo build --release --example echo",
    },
    Server {
        name: "veloq-other",
        launch: Launch::Binary("target/release/examples/echo"),
        // The default server with its workers under SCHED_OTHER instead of SCHED_BATCH
        // (`RuntimeBuilder::sched_batch(false)`): what the policy buys or costs.
        args: &["--sched-other"],
        build: "cargo build --release --example echo",
    },
    Server {
        name: "veloq-c",
        launch: Launch::Binary("build/examples/echo_server"),
        args: &[],
        build: "make build/examples/echo_server",
    },
    Server {
        name: "veloq-c-ms",
        launch: Launch::Binary("build/examples/echo_server"),
        // The C server has no idle-spin knob: its workers spin as the runtime's default.
        args: &["--multishot"],
        build: "make build/examples/echo_server",
    },
    Server {
        name: "tokio",
        launch: Launch::SelfServe("tokio"),
        args: &[],
        build: "cargo bench --bench io",
    },
    Server {
        name: "monoio",
        launch: Launch::SelfServe("monoio"),
        args: &[],
        build: "cargo bench --bench io",
    },
    Server {
        name: "libuv",
        launch: Launch::Binary("build/bench/io/libuv_echo"),
        args: &[],
        build: "make bench-io-bins",
    },
    Server {
        name: "epoll",
        launch: Launch::Binary("build/bench/io/epoll_echo"),
        args: &[],
        build: "make bench-io-bins",
    },
    Server {
        name: "liburing",
        launch: Launch::Binary("build/bench/io/uring_echo"),
        args: &[],
        build: "make bench-io-bins",
    },
];

/// Runtimes with a goal of veloq ≥ 1.0× each (≥ the best of them).
const RUNTIMES: [&str; 3] = ["tokio", "monoio", "libuv"];
/// The minimal servers written for the bench: veloq ≥ 0.9× each (the better of them).
const MINIMAL: [&str; 2] = ["epoll", "liburing"];

/// The load generator.
const LOADGEN: &str = "build/bench/io/loadgen";
/// Server worker threads in every scenario.
const WORKERS: usize = 2;
/// Load generator threads: one epoll loop (a second one brought nothing on two cores).
const LOADGEN_THREADS: usize = 1;

/// One echo scenario.
#[derive(Clone, Copy)]
pub struct Load {
    pub conns: usize,
    pub depth: usize,
}

/// The scenarios, in run order; quick mode uses [`QUICK_LOADS`].
const LOADS: [Load; 4] = [
    Load {
        conns: 50,
        depth: 1,
    },
    Load {
        conns: 500,
        depth: 1,
    },
    Load {
        conns: 50,
        depth: 16,
    },
    Load {
        conns: 500,
        depth: 16,
    },
];
const QUICK_LOADS: [Load; 2] = [
    Load { conns: 4, depth: 1 },
    Load {
        conns: 4,
        depth: 16,
    },
];

/// Pass lengths in ms: the measured pass (warm-up, window), and the counting pass (warm-up,
/// counting window). The counting pass's load runs [`COUNT_MARGIN_MS`] past the counting
/// window, so that the server is under load for all of it even though `perf` takes some
/// tens of ms to attach.
fn passes() -> ((u64, u64), (u64, u64)) {
    if quick() {
        ((50, 200), (50, 200))
    } else {
        ((500, 2000), (200, 1000))
    }
}
const COUNT_MARGIN_MS: u64 = 400;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    syscalls_per_req: Option<f64>,
}

/// A started server, killed when dropped.
pub struct Running {
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn server_command(server: &Server) -> Option<Command> {
    match server.launch {
        Launch::Binary(path) => {
            let path = repo_root().join(path);
            path.is_file().then(|| Command::new(path))
        }
        Launch::SelfServe(kind) => {
            let mut cmd = Command::new(std::env::current_exe().ok()?);
            cmd.args(["serve", kind]);
            Some(cmd)
        }
    }
}

/// A port nobody listens on now (the kernel's pick for a throwaway listener).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

pub fn start(server: &Server, port: u16) -> Result<Running, String> {
    let mut cmd = server_command(server).ok_or("not built")?;
    cmd.args(server.args)
        .args([
            "--port",
            &port.to_string(),
            "--workers",
            &WORKERS.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let mut running = Running { child };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(format!("exited at start ({status})"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("not listening after 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Servers with a listener per worker may still be opening the others.
    std::thread::sleep(Duration::from_millis(100));
    Ok(running)
}

/// What the load generator printed last.
pub struct LoadgenResult {
    pub rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs the load generator; `at_measure` runs when its measured window opens and what it
/// returns is handed back with the result.
pub fn loadgen<T>(
    port: u16,
    load: Load,
    (warmup_ms, window_ms): (u64, u64),
    at_measure: impl FnOnce() -> T,
) -> Result<(LoadgenResult, Option<T>), String> {
    let mut child = Command::new(repo_root().join(LOADGEN))
        .args([
            "--port",
            &port.to_string(),
            "--conns",
            &load.conns.to_string(),
            "--depth",
            &load.depth.to_string(),
            "--threads",
            &LOADGEN_THREADS.to_string(),
            "--warmup-ms",
            &warmup_ms.to_string(),
            "--duration-ms",
            &window_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {LOADGEN}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut at_measure = Some(at_measure);
    let mut measured = None;
    let mut last = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading loadgen: {e}"))?;
        if line == "phase=measure" {
            measured = at_measure.take().map(|f| f());
        } else {
            last = line;
        }
    }
    let status = child.wait().map_err(|e| format!("loadgen: {e}"))?;
    if !status.success() {
        return Err(format!("loadgen failed ({status}; its message is above)"));
    }
    let field = |key: &str| -> Result<f64, String> {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("loadgen printed no {key}: {last:?}"))
    };
    let result = LoadgenResult {
        rps: field("rps")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
    };
    Ok((result, measured))
}

/// `perf stat` counting the system calls of every thread of `pid` for `window`.
fn perf_count(pid: u32, window: Duration) -> Option<Child> {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep", &format!("{:.3}", window.as_secs_f64())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// The count `perf stat -x,` printed (`<not counted>`: the threads never ran, 0).
fn perf_result(child: Child) -> Result<f64, String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .ok_or_else(|| format!("perf stat printed no count: {}", text.trim()))?;
    let count = line.split(',').next().unwrap_or("");
    if count.starts_with("<not") {
        return Ok(0.0);
    }
    count
        .parse()
        .map_err(|_| format!("perf stat: unexpected line {line:?}"))
}

/// Whether `perf stat` can count the syscall tracepoint here.
fn perf_works() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One complete run of `server` under `load`.
fn run_once(server: &Server, load: Load, count: bool) -> Result<Sample, String> {
    let port = free_port();
    let running = start(server, port)?;
    let (measure, counting) = passes();
    let (main, _) = loadgen(port, load, measure, || ())?;
    let mut syscalls_per_req = None;
    if count {
        let pid = running.child.id();
        let window = Duration::from_millis(counting.1);
        let pass_len = (counting.0, counting.1 + COUNT_MARGIN_MS);
        let (pass, perf) = loadgen(port, load, pass_len, || perf_count(pid, window))?;
        let perf = perf.flatten().ok_or("cannot start perf")?;
        let syscalls = perf_result(perf)?;
        syscalls_per_req = Some(syscalls / window.as_secs_f64() / pass.rps);
    }
    drop(running);
    Ok(Sample {
        rps: main.rps,
        p50_us: main.p50_us,
        p99_us: main.p99_us,
        syscalls_per_req,
    })
}

pub fn describe(load: Load) -> String {
    let pipelined = if load.depth > 1 {
        format!(" ×{} pipelined", load.depth)
    } else {
        String::new()
    };
    format!(
        "TCP echo 64 B{pipelined}, {} conns, {WORKERS} workers",
        load.conns
    )
}

/// Measures every built server under every load; returns the rows and prints the
/// per-scenario detail (requests/s beside system calls per request and latency).
pub fn all(rows: &mut Vec<Row>) {
    if !repo_root().join(LOADGEN).is_file() {
        eprintln!("echo: {LOADGEN} not built (make bench-io-bins): echo scenarios skipped");
        return;
    }
    let count = perf_works();
    if !count {
        eprintln!(
            "echo: `perf stat -e raw_syscalls:sys_enter` does not work here (make bench-io-tools \
             installs linux-perf): system calls per request not measured"
        );
    }
    let available: Vec<&Server> = SERVERS
        .iter()
        .filter(|s| {
            let built = server_command(s).is_some();
            if !built {
                let Launch::Binary(path) = s.launch else {
                    unreachable!()
                };
                eprintln!("echo: {:<9} not built ({path}; build: {})", s.name, s.build);
            }
            built
        })
        .collect();
    let loads: &[Load] = if quick() { &QUICK_LOADS } else { &LOADS };
    for &load in loads {
        let name = describe(load);
        eprintln!("• {name}");
        let mut contenders: Vec<Contender<'_, Option<Sample>>> = available
            .iter()
            .map(|&server| {
                Contender::new(server.name, move || match run_once(server, load, count) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        rounds::failed(server.name, &e);
                        None
                    }
                })
            })
            .collect();
        // Each run warms up inside the load generator: no untimed rounds.
        let samples = rounds::alternate(&mut contenders, 0);
        let medians: Vec<(String, [Option<f64>; 4])> = contenders
            .iter()
            .zip(&samples)
            .map(|(c, s)| {
                let s: Vec<Sample> = s.iter().flatten().cloned().collect();
                let m = [
                    rounds::median_of(&s, |x| Some(x.rps)),
                    rounds::median_of(&s, |x| x.syscalls_per_req),
                    rounds::median_of(&s, |x| Some(x.p50_us)),
                    rounds::median_of(&s, |x| Some(x.p99_us)),
                ];
                (c.name.clone(), m)
            })
            .collect();
        for (name, [rps, sc, p50, p99]) in &medians {
            let f = |v: &Option<f64>| v.map(fmt_value).unwrap_or_else(|| "—".into());
            eprintln!(
                "    {name:<9} {:>9} req/s  {:>6} syscalls/req  p50 {:>7} µs  p99 {:>7} µs",
                f(rps),
                f(sc),
                f(p50),
                f(p99)
            );
        }
        let column = |i: usize| -> Vec<(String, Option<f64>)> {
            medians.iter().map(|(n, m)| (n.clone(), m[i])).collect()
        };
        let mut rps = Scenario::higher_is_better(format!("{name}: requests/s"), "req/s");
        let mut syscalls =
            Scenario::lower_is_better(format!("{name}: system calls per request"), "syscalls/req");
        if load.depth == 1 {
            rps = rounds::goals_at_least(rps, &RUNTIMES, 1.0);
            rps = rounds::goals_at_least(rps, &MINIMAL, 0.9);
            for peer in RUNTIMES.iter().chain(&MINIMAL) {
                syscalls = syscalls.goal(Goal::within(peer));
            }
        } else {
            rps = rps
                .goal(Goal::at_least("tokio", 1.2))
                .goal(Goal::at_least("monoio", 1.0));
        }
        rows.push(rounds::row(rps, column(0)));
        if count {
            rows.push(rounds::row(syscalls, column(1)));
        }
        let p99 = Scenario::lower_is_better(format!("{name}: p99 latency"), "µs");
        rows.push(rounds::row(p99, column(3)));
    }
}
