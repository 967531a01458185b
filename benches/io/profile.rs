//! Where the machine's CPU time goes in one echo scenario, per server:
//!
//! ```text
//! cargo bench --bench io -- profile [--conns N] [--depth D] [--rounds R] [SERVER ...]
//! make bench-echo-profile PROFILE_ARGS="--conns 500 --depth 16 veloq tokio"
//! ```
//!
//! Each run is one echo bench run (same server start, same load generator, same warm-up)
//! during which `perf record -a` samples every CPU for one second. Each sample is charged
//! to a *role* (the load generator, the server's threads, the idle loop, anything else)
//! and to a *part* of the work by its symbol (user space, system call entry and file
//! lookup, the event interface — epoll or io_uring —, the scheduler, the rest of the
//! kernel: on loopback TCP that is the TCP/IP stack, socket buffers and copies). The table
//! gives CPU nanoseconds per request, so servers measured at different request rates
//! compare directly.
//!
//! It also prints the ceiling the load generator sets: it is one thread, so requests/s can
//! never exceed one CPU-second divided by its CPU time per request. On loopback most of
//! that time is kernel work (a sender's system call carries the receiver's TCP receive
//! path); `docs/echo-profile.md` gives what this measured.
//!
//! A diagnostic: it writes no result file and has no goals. `VELOQ_BENCH_QUICK=1` makes
//! the passes tiny (0.2 s of sampling; the smoke run of `make test`, which fails if a run
//! fails). Samples come from a timer interrupt, so time spent with interrupts off is
//! charged to the function that turns them back on (`_raw_spin_unlock_irqrestore`, in the
//! kernel part): the split between parts is approximate. The split between roles is exact
//! up to sampling noise (a share of a few percent).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::echo::{self, Load, SERVERS};
use crate::harness::quick;
use crate::rounds;

/// How long `perf record` samples (s), inside the measured window.
fn sample_seconds() -> f64 {
    if quick() {
        0.2
    } else {
        1.0
    }
}
/// The measured pass: warm-up and window (ms); the window holds the sampling.
fn pass_ms() -> (u64, u64) {
    if quick() {
        (50, 500)
    } else {
        (500, 2000)
    }
}
/// Samples per second per CPU (a prime, so it does not beat with periodic work).
const SAMPLE_HZ: u32 = 1999;

/// Who a sample's thread belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Loadgen,
    Idle,
    Other,
}
const ROLES: [(Role, &str); 4] = [
    (Role::Server, "server"),
    (Role::Loadgen, "loadgen"),
    (Role::Other, "other"),
    (Role::Idle, "idle"),
];

/// What a sample's symbol was doing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    User,
    Syscall,
    Events,
    Scheduler,
    Kernel,
    Halt,
}
const PARTS: [(Part, &str); 6] = [
    (Part::User, "user"),
    (Part::Syscall, "syscall"),
    (Part::Events, "epoll/uring"),
    (Part::Scheduler, "sched"),
    (Part::Kernel, "kernel:TCP/IP…"),
    (Part::Halt, "halted"),
];

/// The part a kernel or user symbol belongs to.
fn part_of(kernel: bool, symbol: &str) -> Part {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| symbol.starts_with(p));
    if !kernel {
        Part::User
    } else if starts(&[
        "pv_native_safe_halt",
        "native_safe_halt",
        "default_idle",
        "cpuidle",
        "do_idle",
        "cpu_idle_poll",
        "acpi_idle",
        "intel_idle",
        "poll_idle",
        "mwait_idle",
    ]) {
        Part::Halt
    } else if starts(&[
        "io_",
        "__io_",
        "tctx_task_work",
        "ep_",
        "do_epoll",
        "__x64_sys_epoll",
    ]) {
        Part::Events
    } else if starts(&[
        "entry_SYSCALL",
        "do_syscall_64",
        "syscall_exit",
        "syscall_return",
        "x64_sys_call",
        "exit_to_user_mode",
        "__x64_sys_",
        "fdget",
        "fput",
        "__fget",
    ]) {
        Part::Syscall
    } else if symbol.contains("schedule")
        || starts(&[
            "finish_task_switch",
            "pick_next",
            "__switch_to",
            "dequeue_",
            "enqueue_",
            "update_curr",
            "update_load_avg",
            "try_to_wake_up",
            "ttwu_",
            "select_task_rq",
            "set_next_entity",
            "put_prev",
            "psi_",
            "futex",
        ])
    {
        Part::Scheduler
    } else {
        Part::Kernel
    }
}

/// Samples per (role, part).
#[derive(Default)]
struct Tally {
    samples: [[u64; PARTS.len()]; ROLES.len()],
}

impl Tally {
    fn add(&mut self, role: Role, part: Part, n: u64) {
        let r = ROLES.iter().position(|(x, _)| *x == role).unwrap();
        let p = PARTS.iter().position(|(x, _)| *x == part).unwrap();
        self.samples[r][p] += n;
    }

    fn total(&self) -> u64 {
        self.samples.iter().flatten().sum()
    }

    fn role(&self, role: Role) -> u64 {
        let r = ROLES.iter().position(|(x, _)| *x == role).unwrap();
        self.samples[r].iter().sum()
    }
}

/// Reads `perf report` of `data`: each line's sample count, thread id and command,
/// object and symbol, charged to its role and part.
fn tally(data: &PathBuf, server_threads: &HashSet<u32>) -> Result<Tally, String> {
    let out = Command::new("perf")
        .args(["report", "-i"])
        .arg(data)
        .args([
            "--sort",
            "pid,dso,sym",
            "-n",
            "-q",
            "--stdio",
            "-g",
            "none",
            "-t",
            ";",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!("perf report failed ({})", out.status));
    }
    let mut t = Tally::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "  3.30%  ; 259   ;  15448:loadgen   ;[kernel.kallsyms] ;[k] tcp_ack"
        let f: Vec<&str> = line.split(';').map(str::trim).collect();
        if f.len() < 5 {
            continue;
        }
        let Ok(n) = f[1].parse::<u64>() else { continue };
        let (pid, comm) = f[2].split_once(':').unwrap_or((f[2], ""));
        let pid: u32 = pid.trim().parse().unwrap_or(u32::MAX);
        let (kind, symbol) = f[4].split_once(' ').unwrap_or(("", f[4]));
        let role = if pid == 0 {
            Role::Idle
        } else if server_threads.contains(&pid) {
            Role::Server
        } else if comm == "loadgen" {
            Role::Loadgen
        } else {
            Role::Other
        };
        t.add(role, part_of(kind == "[k]", symbol.trim()), n);
    }
    if t.total() == 0 {
        return Err("perf recorded no samples".into());
    }
    Ok(t)
}

/// The thread ids of process `pid` now.
fn threads_of(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One profiled run of `server`: requests/s and the tally.
fn profile_once(server: &echo::Server, load: Load, data: &PathBuf) -> Result<(f64, Tally), String> {
    let port = echo::free_port();
    let running = echo::start(server, port)?;
    let pid = running.child.id();
    let (result, measured) = echo::loadgen(port, load, pass_ms(), || {
        let threads = threads_of(pid);
        let perf = Command::new("perf")
            .args(["record", "-q", "-a", "-F", &SAMPLE_HZ.to_string(), "-o"])
            .arg(data)
            .args(["--", "sleep", &sample_seconds().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        (threads, perf)
    })?;
    drop(running);
    let (threads, perf) = measured.ok_or("the load generator never reached its window")?;
    let status = perf
        .map_err(|e| format!("cannot start perf record: {e}"))?
        .wait()
        .map_err(|e| format!("perf record: {e}"))?;
    if !status.success() {
        return Err(format!("perf record failed ({status})"));
    }
    Ok((result.rps, tally(data, &threads)?))
}

/// Prints one run's table: CPU ns per request by role and part, and the ceiling.
fn print_run(name: &str, rps: f64, t: &Tally, cpus: f64) {
    // A share of all samples is that share of `cpus` CPU-seconds per second.
    let ns = |samples: u64| samples as f64 / t.total() as f64 * cpus * 1e9 / rps;
    println!("  {name}: {rps:.0} req/s; CPU ns per request:");
    print!("    {:<8}", "");
    for (_, label) in PARTS {
        print!("{label:>15}");
    }
    println!("{:>10}", "total");
    for (r, (role, label)) in ROLES.iter().enumerate() {
        if t.role(*role) == 0 {
            continue;
        }
        print!("    {label:<8}");
        for p in 0..PARTS.len() {
            print!("{:>15.0}", ns(t.samples[r][p]));
        }
        println!("{:>10.0}", ns(t.role(*role)));
    }
    let loadgen_ns = ns(t.role(Role::Loadgen));
    let loadgen_cpu = t.role(Role::Loadgen) as f64 / t.total() as f64 * cpus;
    let ceiling = 1e9 / loadgen_ns;
    println!(
        "    the load generator was busy {:.2} CPU: one thread, so at most {:.0} req/s \
         ({:.2}× what was measured) with this server",
        loadgen_cpu,
        ceiling,
        ceiling / rps
    );
}

/// `profile [--conns N] [--depth D] [--rounds R] [SERVER ...]`.
pub fn run(args: &[String]) {
    let usage = || -> ! {
        eprintln!("usage: io profile [--conns N] [--depth D] [--rounds R] [SERVER ...]");
        std::process::exit(2);
    };
    let mut load = Load {
        conns: 500,
        depth: 16,
    };
    let mut rounds = 1usize;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = || -> usize {
            match it.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => n,
                _ => usage(),
            }
        };
        match arg.as_str() {
            "--conns" => load.conns = number(),
            "--depth" => load.depth = number(),
            "--rounds" => rounds = number(),
            "--bench" => {}
            s if s.starts_with('-') => usage(),
            s => names.push(s.to_owned()),
        }
    }
    let servers: Vec<&echo::Server> = SERVERS
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .filter(|s| echo::server_command(s).is_some())
        .collect();
    if let Some(unknown) = names.iter().find(|n| !servers.iter().any(|s| s.name == *n)) {
        eprintln!(
            "profile: no built server named {unknown} (servers: {})",
            SERVERS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let data = std::env::temp_dir().join(format!("veloq-echo-profile-{}.data", std::process::id()));
    println!(
        "• {}: where the CPU time goes ({cpus} CPUs, perf record -a at {SAMPLE_HZ} Hz for \
         {} s of each measured window){}",
        echo::describe(load),
        sample_seconds(),
        if quick() {
            " (quick: a smoke test)"
        } else {
            ""
        }
    );
    for round in 0..rounds {
        if rounds > 1 {
            println!("round {}", round + 1);
        }
        for server in &servers {
            match profile_once(server, load, &data) {
                Ok((rps, t)) => print_run(server.name, rps, &t, cpus),
                Err(e) => rounds::failed(server.name, &e),
            }
        }
    }
    let _ = std::fs::remove_file(&data);
}
