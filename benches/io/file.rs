//! 4 KiB random reads at queue depth 32 from a 1 GiB file: buffered (the file warm in the
//! page cache) and with O_DIRECT. Peers: fio with `--ioengine=io_uring` (Debian's fio, its
//! defaults otherwise) and a raw loop on the io-uring crate written here; veloq's row comes
//! from [`veloq_randread`] once `veloq::fs::File` exists.

use std::alloc::{alloc, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::harness::{quick, results_dir, Goal, Row, Scenario, VELOQ};
use crate::rounds::{self, Contender};

/// Size of one read.
pub const BLOCK: usize = 4096;
/// Reads in flight.
pub const QUEUE_DEPTH: usize = 32;

/// The file's size: 1 GiB (16 MiB in quick mode, in a file of its own).
fn file_size() -> u64 {
    if quick() {
        16 << 20
    } else {
        1 << 30
    }
}

/// How long each run reads.
fn run_time() -> Duration {
    if quick() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    }
}

/// The `veloq-poll` column's `RuntimeBuilder::io_poll`: longer than the device's usual gap
/// between completions at this depth, so the worker rarely parks while reads are in flight.
const IO_POLL: Duration = Duration::from_millis(2);

/// The data file in target/bench, made once and kept across runs.
fn data_file() -> PathBuf {
    let name = if quick() {
        "io-randread-quick.dat"
    } else {
        "io-randread.dat"
    };
    let path = results_dir().join(name);
    let want = file_size();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == want) {
        return path;
    }
    eprintln!("file: writing {} ({} MiB)", path.display(), want >> 20);
    std::fs::create_dir_all(results_dir()).expect("create target/bench");
    let mut f = File::create(&path).expect("create the data file");
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..want / chunk.len() as u64 {
        for b in chunk.chunks_exact_mut(8) {
            x = xorshift(x);
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).expect("write the data file");
    }
    f.sync_all().expect("sync the data file");
    path
}

/// Reads the whole file once so that buffered reads find it in the page cache.
fn warm(path: &Path) {
    let mut f = File::open(path).expect("open the data file");
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).expect("read the data file") > 0 {}
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// fio's IOPS for the same job: `--ioengine=io_uring --rw=randread --bs=4k --iodepth=32`,
/// time-based; `--invalidate=0` keeps the page cache fio would otherwise drop before a
/// buffered run; `--norandommap` reads uniformly random blocks as the raw loop does.
fn fio(path: &Path, direct: bool) -> Result<f64, String> {
    let out = Command::new("fio")
        .args([
            "--name=randread",
            "--ioengine=io_uring",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=1",
            "--time_based",
            "--invalidate=0",
            "--norandommap",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", path.display()))
        .arg(format!("--size={}", file_size()))
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--runtime={}ms", run_time().as_millis()))
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before the JSON document.
    let json = &text[text.find('{').ok_or("fio printed no JSON")?..];
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("fio's JSON: {e}"))?;
    v["jobs"][0]["read"]["iops"]
        .as_f64()
        .ok_or_else(|| "fio's JSON has no jobs[0].read.iops".into())
}

/// Page-aligned buffers for the reads in flight (O_DIRECT needs the alignment).
struct Buffers {
    ptr: *mut u8,
    layout: Layout,
}

impl Buffers {
    fn new() -> Buffers {
        let layout = Layout::from_size_align(BLOCK * QUEUE_DEPTH, BLOCK).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Buffers { ptr, layout }
    }

    fn slot(&self, i: usize) -> *mut u8 {
        assert!(i < QUEUE_DEPTH);
        // SAFETY: i < QUEUE_DEPTH keeps the offset inside the allocation.
        unsafe { self.ptr.add(i * BLOCK) }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// The raw io-uring crate loop: QUEUE_DEPTH reads of BLOCK bytes at random block offsets in
/// flight; each `submit_and_wait(1)` submits the replacements of what completed and reaps
/// every completion there is. Returns reads per second.
fn raw_randread(path: &Path, direct: bool) -> Result<f64, String> {
    let mut options = OpenOptions::new();
    options.read(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(path).map_err(|e| format!("open: {e}"))?;
    let fd = types::Fd(file.as_raw_fd());
    let blocks = file_size() / BLOCK as u64;
    let buffers = Buffers::new();
    let mut ring = IoUring::new(2 * QUEUE_DEPTH as u32).map_err(|e| format!("io_uring: {e}"))?;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut read_at = |ring: &mut IoUring, slot: usize| {
        rng = xorshift(rng);
        let offset = (rng % blocks) * BLOCK as u64;
        let sqe = opcode::Read::new(fd, buffers.slot(slot), BLOCK as u32)
            .offset(offset)
            .build()
            .user_data(slot as u64);
        // SAFETY: the buffer slot belongs to this read alone until its completion is
        // reaped, and `buffers` and `file` outlive the ring's last operation (every read is
        // reaped before this function returns); the queue has room for QUEUE_DEPTH entries.
        unsafe { ring.submission().push(&sqe) }.expect("submission queue full");
    };
    for slot in 0..QUEUE_DEPTH {
        read_at(&mut ring, slot);
    }
    let deadline = Instant::now() + run_time();
    let start = Instant::now();
    let mut done = 0u64;
    let mut in_flight = QUEUE_DEPTH;
    let mut reaped = Vec::with_capacity(QUEUE_DEPTH);
    let mut error = None;
    while in_flight > 0 {
        ring.submit_and_wait(1)
            .map_err(|e| format!("submit: {e}"))?;
        reaped.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        let more = error.is_none() && Instant::now() < deadline;
        for (slot, res) in reaped.drain(..) {
            in_flight -= 1;
            if res != BLOCK as i32 && error.is_none() {
                error = Some(format!("read returned {res}"));
            }
            done += 1;
            if more {
                read_at(&mut ring, slot);
                in_flight += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    match error {
        Some(e) => Err(e),
        None => Ok(done as f64 / elapsed),
    }
}

/// A reader's buffer: its own aligned allocation (`File::read_at`), or a buffer of the
/// worker's registered pool (`File::read_fixed_at`: `IORING_OP_READ_FIXED`).
enum ReadBuf {
    Aligned(veloq::io::AlignedBuf),
    Pool(veloq::PoolBuf),
}

impl ReadBuf {
    fn new(fixed: bool) -> Result<ReadBuf, String> {
        if !fixed {
            return Ok(ReadBuf::Aligned(veloq::io::AlignedBuf::new(BLOCK, BLOCK)));
        }
        veloq::RuntimeContext::with_current(|cx| cx.map(|cx| cx.alloc_buf(BLOCK)))
            .ok_or("not on a worker")?
            .map(ReadBuf::Pool)
            .map_err(|e| format!("pool buffer: {e}"))
    }

    /// One read of [`BLOCK`] bytes at `offset`.
    async fn read(self, file: &veloq::fs::File, offset: u64) -> (std::io::Result<usize>, ReadBuf) {
        match self {
            ReadBuf::Aligned(b) => {
                let (r, b) = file.read_at(b, offset).await;
                (r, ReadBuf::Aligned(b))
            }
            ReadBuf::Pool(b) => {
                let (r, b) = file.read_fixed_at(b, offset).await;
                (r, ReadBuf::Pool(b))
            }
        }
    }
}

/// veloq's 4 KiB random reads at queue depth [`QUEUE_DEPTH`] on `path` (O_DIRECT when
/// `direct`) for `duration`, in reads per second: one worker (like the raw loop's one
/// thread), QUEUE_DEPTH local tasks each looping `veloq::fs::File::read_at` of [`BLOCK`]
/// bytes into its own 4 KiB-aligned buffer at random block offsets (`fixed`: each
/// reading into a registered pool buffer with `File::read_fixed_at`). `io_poll`: the
/// runtime's `RuntimeBuilder::io_poll` (zero: the default, off).
fn veloq_randread(
    path: &Path,
    direct: bool,
    fixed: bool,
    io_poll: Duration,
    duration: Duration,
) -> Option<f64> {
    use std::cell::Cell;
    use std::rc::Rc;
    let rt = match veloq::Runtime::builder()
        .workers(1)
        .io_poll(io_poll)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("    veloq: runtime: {e}");
            return None;
        }
    };
    let path = path.to_path_buf();
    let blocks = file_size() / BLOCK as u64;
    let main = rt
        .spawn_local_to(0, move || async move {
            let file = veloq::fs::OpenOptions::new()
                .read(true)
                .direct(direct)
                .open(&path)
                .await
                .map_err(|e| format!("open: {e}"))?;
            let file = Rc::new(file);
            let done = Rc::new(Cell::new(0u64));
            let error: Rc<Cell<Option<i64>>> = Rc::new(Cell::new(None));
            let deadline = Instant::now() + duration;
            let start = Instant::now();
            let mut readers = Vec::with_capacity(QUEUE_DEPTH);
            for i in 0..QUEUE_DEPTH {
                let (file, done, error) = (file.clone(), done.clone(), error.clone());
                readers.push(
                    veloq::spawn_local(async move {
                        let mut rng = 0x2545_f491_4f6c_dd1du64 ^ ((i as u64 + 1) << 32);
                        let mut buf = match ReadBuf::new(fixed) {
                            Ok(b) => b,
                            Err(e) => {
                                eprintln!("    veloq: {e}");
                                error.set(Some(-1));
                                return;
                            }
                        };
                        while Instant::now() < deadline {
                            rng = xorshift(rng);
                            let offset = (rng % blocks) * BLOCK as u64;
                            let (res, b) = buf.read(&file, offset).await;
                            buf = b;
                            match res {
                                Ok(n) if n == BLOCK => done.set(done.get() + 1),
                                Ok(n) => error.set(Some(n as i64)),
                                Err(e) => error.set(Some(-(e.raw_os_error().unwrap_or(0) as i64))),
                            }
                            if error.get().is_some() {
                                break;
                            }
                        }
                    })
                    .map_err(|_| "spawn refused".to_string())?,
                );
            }
            for r in readers {
                r.await.map_err(|e| format!("reader: {e:?}"))?;
            }
            if let Some(res) = error.get() {
                return Err(format!("read returned {res}"));
            }
            Ok(done.get() as f64 / start.elapsed().as_secs_f64())
        })
        .ok()?;
    match rt.block_on(main) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            eprintln!("    veloq: {e}");
            None
        }
        Err(e) => {
            eprintln!("    veloq: {e:?}");
            None
        }
    }
}

/// veloq's host-side submission (what C's `veloq_submit` does), 4 KiB random reads at
/// queue depth [`QUEUE_DEPTH`] on `path` for `duration`, in reads per second: the bench's
/// own thread, not a worker, routes each read to the one worker's ring with
/// `Handle::submit_io` and takes the completions from a `CompletionQueue`, replacing
/// each completed read at once. `fixed`: into buffers of the worker's registered pool
/// (`RawOp::ReadPool`, submitted as `IORING_OP_READ_FIXED`), else plain reads into the
/// host's own aligned buffers.
fn veloq_host_randread(path: &Path, direct: bool, fixed: bool) -> Result<f64, String> {
    use veloq::io::RawOp;
    use veloq::runtime::completion::{CompletionQueue, Cqe};
    let rt = veloq::Runtime::builder()
        .workers(1)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut options = OpenOptions::new();
    options.read(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(path).map_err(|e| format!("open: {e}"))?;
    let fd = file.as_raw_fd();
    let blocks = file_size() / BLOCK as u64;
    let host_bufs = Buffers::new();
    // Pool buffers are allocated on the worker, then used from here.
    let pool: Vec<veloq::PoolBuf> = if fixed {
        let alloc = rt
            .spawn_local_to(0, || async {
                veloq::RuntimeContext::with_current(|cx| {
                    let cx = cx.ok_or("not on a worker")?;
                    (0..QUEUE_DEPTH)
                        .map(|_| cx.alloc_buf(BLOCK).map_err(|e| format!("pool buffer: {e}")))
                        .collect::<Result<Vec<_>, String>>()
                })
            })
            .map_err(|_| "spawn refused".to_string())?;
        let bufs = rt.block_on(alloc).map_err(|e| format!("{e:?}"))??;
        if bufs.iter().any(|b| b.buf_index().is_none()) {
            return Err("pool buffers not registered".into());
        }
        bufs
    } else {
        Vec::new()
    };
    let cq = CompletionQueue::new(2 * QUEUE_DEPTH as u32).map_err(|e| format!("cq: {e}"))?;
    let handle = rt.handle();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut read_at = |slot: usize| -> Result<(), String> {
        rng = xorshift(rng);
        let offset = (rng % blocks) * BLOCK as u64;
        let op = if fixed {
            let buf = &pool[slot];
            RawOp::ReadPool {
                fd,
                pool: buf,
                data: buf.as_ptr().cast_mut(),
                len: BLOCK as u32,
                offset,
            }
        } else {
            RawOp::Read {
                fd,
                buf: host_bufs.slot(slot),
                len: BLOCK as u32,
                offset,
            }
        };
        // A direct read goes to the kernel as soon as the worker takes it, as the header
        // tells C callers to ask for O_DIRECT (`VELOQ_SQE_SUBMIT_NOW`).
        let mut options = veloq::io::SubmitOptions::default();
        options.submit_now = direct;
        // SAFETY: the slot's buffer belongs to this read alone until its completion is
        // taken, and the buffers, the file and the queue outlive every read (all are
        // reaped below before they are dropped).
        unsafe { handle.submit_io_with(veloq::Placement::Worker(0), op, options, &cq, slot as u64) }
            .map_err(|e| format!("submit: {e}"))
    };
    let mut run = || -> Result<f64, String> {
        for slot in 0..QUEUE_DEPTH {
            read_at(slot)?;
        }
        let deadline = Instant::now() + run_time();
        let start = Instant::now();
        let (mut done, mut in_flight) = (0u64, QUEUE_DEPTH);
        let mut error = None;
        let mut out = [Cqe::default(); QUEUE_DEPTH];
        while in_flight > 0 {
            let n = cq
                .wait(&mut out, 1, Some(Duration::from_secs(10)))
                .map_err(|e| format!("wait: {e}"))?;
            let more = error.is_none() && Instant::now() < deadline;
            for c in &out[..n] {
                in_flight -= 1;
                if c.res != BLOCK as i64 && error.is_none() {
                    error = Some(format!("read returned {}", c.res));
                }
                done += 1;
                if more {
                    read_at(c.user_data as usize)?;
                    in_flight += 1;
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        match error {
            Some(e) => Err(e),
            None => Ok(done as f64 / elapsed),
        }
    };
    let result = run();
    // Every read has completed once shutdown returns (an error above may leave some in
    // flight): only then may the buffers, the file and the queue go.
    let _ = rt.shutdown(None);
    result
}

pub fn all(rows: &mut Vec<Row>) {
    let path = data_file();
    let fio_works = Command::new("fio").arg("--version").output().is_ok();
    if !fio_works {
        eprintln!("file: fio not installed (make bench-io-tools): fio column skipped");
    }
    for direct in [false, true] {
        let name = format!(
            "4 KiB random reads, QD{QUEUE_DEPTH}, {} MiB file, {}",
            file_size() >> 20,
            if direct { "O_DIRECT" } else { "page cache" }
        );
        eprintln!("• {name}");
        warm(&path);
        let report = |who: &str, r: Result<f64, String>| match r {
            Ok(v) => Some(v),
            Err(e) => {
                rounds::failed(who, &e);
                None
            }
        };
        let path = &path;
        let mut contenders: Vec<Contender<'_, Option<f64>>> = vec![
            Contender::new(VELOQ, move || {
                veloq_randread(path, direct, false, Duration::ZERO, run_time())
            }),
            Contender::new("veloq-fixed", move || {
                veloq_randread(path, direct, true, Duration::ZERO, run_time())
            }),
            Contender::new("veloq-poll", move || {
                veloq_randread(path, direct, false, IO_POLL, run_time())
            }),
            Contender::new("veloq-host", move || {
                report("veloq-host", veloq_host_randread(path, direct, false))
            }),
            Contender::new("veloq-host-fixed", move || {
                report("veloq-host-fixed", veloq_host_randread(path, direct, true))
            }),
            Contender::new("io-uring", move || {
                report("io-uring", raw_randread(path, direct))
            }),
        ];
        if fio_works {
            contenders.push(Contender::new("fio", move || {
                report("fio", fio(path, direct))
            }));
        }
        let samples = rounds::alternate(&mut contenders, 1);
        let values: Vec<(String, Option<f64>)> = contenders
            .iter()
            .zip(&samples)
            .map(|(c, s)| (c.name.clone(), rounds::median_of(s, |v| *v)))
            .collect();
        for (n, v) in &values {
            let v = v.map_or("— (not measured)".into(), crate::harness::fmt_value);
            eprintln!("    {n:<9} {v} reads/s");
        }
        let scenario = Scenario::higher_is_better(name, "reads/s").goal(Goal::at_least("fio", 0.9));
        rows.push(rounds::row(scenario, values));
    }
}
