//! The promises of `veloq::fs`, on real files in a temporary directory through real
//! io_uring rings: what is written at an offset is read back there, `O_DIRECT` works
//! with aligned buffers, sync, statx and fallocate report what the kernel did, and
//! errors come back as the kernel's errno.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use veloq::fs::{File, OpenOptions};
use veloq::io::AlignedBuf;
use veloq::Runtime;

/// A directory removed on drop, under `base`.
struct TempDir(PathBuf);

impl TempDir {
    fn new_in(base: &Path, tag: &str) -> TempDir {
        let dir = base.join(format!(
            "veloq-fs-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run<F: std::future::Future + Send + 'static>(f: F) -> F::Output
where
    F::Output: Send + 'static,
{
    let rt = Runtime::builder().workers(2).build().expect("runtime");
    let h = rt.spawn(f).unwrap();
    let out = rt.block_on(h).unwrap();
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
    out
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_writes_at_random_offsets_read_back_as_the_model_says() {
    let dir = TempDir::new("model");
    let path = dir.path("data");
    let model = run(async move {
        const SIZE: usize = 256 * 1024;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .unwrap();
        let mut model = vec![0u8; SIZE];
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut high = 0;
        for _ in 0..500 {
            let len = 1 + (rng.next() % 8192) as usize;
            let off = (rng.next() as usize) % (SIZE - len);
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            model[off..off + len].copy_from_slice(&data);
            high = high.max(off + len);
            let (r, _) = file.write_all_at(data, off as u64).await;
            r.unwrap();
        }
        model.truncate(high);
        assert_eq!(file.len().await.unwrap(), high as u64);
        // Read back in random pieces, then whole.
        for _ in 0..200 {
            let len = 1 + (rng.next() % 8192) as usize;
            let off = (rng.next() as usize) % (high - len);
            let (r, buf) = file.read_exact_at(vec![0u8; len], off as u64).await;
            r.unwrap();
            assert_eq!(&buf[..], &model[off..off + len], "at {off}+{len}");
        }
        let (r, whole) = file.read_exact_at(vec![0u8; high], 0).await;
        r.unwrap();
        assert_eq!(whole, model);
        // Past the end: 0 bytes; read_exact across the end: UnexpectedEof.
        let (r, _) = file.read_at(vec![0u8; 16], high as u64 + 10).await;
        assert_eq!(r.unwrap(), 0);
        let (r, _) = file.read_exact_at(vec![0u8; 16], high as u64 - 8).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::UnexpectedEof);
        file.close().await.unwrap();
        model
    });
    // The standard library sees the same bytes.
    assert_eq!(std::fs::read(dir.path("data")).unwrap(), model);
}

/// Runs `body` with the path of a new file in a directory whose file system takes
/// `O_DIRECT` (tmpfs refuses it; the places tried are usually on a disk). `body` returns
/// None when the open was refused with EINVAL, and the next place is tried. False when no
/// place took it (the caller's test is skipped, saying so).
fn with_direct_path<F, Fut>(tag: &str, body: F) -> bool
where
    F: Fn(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let candidates = [
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    for base in candidates {
        if !base.is_dir() {
            continue;
        }
        let dir = TempDir::new_in(&base, tag);
        if run(body(dir.path("direct"))).is_some() {
            return true;
        }
        println!("note: {} refuses O_DIRECT (EINVAL)", base.display());
    }
    println!("note: no candidate directory accepts O_DIRECT; test skipped");
    false
}

/// Opens `path` read-write with `O_DIRECT`, created; None when the file system refuses.
async fn open_direct(path: &Path) -> Option<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true)
        .open(path)
        .await
    {
        Ok(f) => Some(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e) => panic!("open O_DIRECT: {e}"),
    }
}

#[test]
fn o_direct_reads_and_writes_aligned_buffers() {
    with_direct_path("direct", |path| async move {
        let file = open_direct(&path).await?;
        let mut out = AlignedBuf::new(16 * 4096, 4096);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (i * 7 + i / 4096) as u8;
        }
        let expect = out.to_vec();
        let (r, _) = file.write_all_at(out, 4096).await;
        r.unwrap();
        file.sync_data().await.unwrap();
        let (r, back) = file
            .read_exact_at(AlignedBuf::new(16 * 4096, 4096), 4096)
            .await;
        r.unwrap();
        assert!(back.to_vec() == expect, "O_DIRECT data differs");
        // An unaligned offset is refused by the kernel.
        let (r, _) = file.read_at(AlignedBuf::new(4096, 4096), 100).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        Some(())
    });
}

/// Polls `fut` once, then asks the worker to hand its queued I/O to the kernel: how many
/// entries were still queued (what `RuntimeContext::flush_io` says), and the future.
async fn queued_after_first_poll<F: std::future::Future + Unpin>(mut fut: F) -> (usize, F) {
    let pending = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx).is_pending())
    })
    .await;
    assert!(pending, "an I/O future is pending after its first poll");
    let queued = veloq::RuntimeContext::with_current(|cx| cx.expect("on a worker").flush_io());
    (queued, fut)
}

/// Runs I/O future `fut`, checking that `queued` entries were left for the worker's batch
/// after its first poll (0: it went to the kernel at once); `what` names it in a failure.
/// Returns its byte count (which must be 4096) and its buffer.
async fn run_expecting_queued<F, B>(fut: F, queued: usize, what: &str) -> B
where
    F: std::future::Future<Output = (std::io::Result<usize>, B)>,
{
    let (left, fut) = queued_after_first_poll(Box::pin(fut)).await;
    assert_eq!(left, queued, "{what}: entries left for the batch");
    let (r, buf) = fut.await;
    assert_eq!(r.expect(what), 4096, "{what}: bytes");
    buf
}

/// A descriptor of `path` opened read-write with `O_DIRECT` by the standard library.
fn std_direct(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// An aligned 4 KiB buffer filled with `byte`.
fn page_of(byte: u8) -> AlignedBuf {
    let mut b = AlignedBuf::new(4096, 4096);
    b.iter_mut().for_each(|x| *x = byte);
    b
}

#[test]
fn direct_file_io_goes_to_the_kernel_at_once_buffered_io_with_the_batch() {
    // Buffered: a read waits in the submission queue for the worker's batch until
    // `flush_io` hands it over (and then nothing is left for a second call).
    let dir = TempDir::new("batch");
    let path = dir.path("buffered");
    std::fs::write(&path, vec![5u8; 4096]).unwrap();
    let (queued, again, data) = run(async move {
        let file = File::open(&path).await.unwrap();
        let read = Box::pin(file.read_at(vec![0u8; 4096], 0));
        let (queued, read) = queued_after_first_poll(read).await;
        let again = veloq::RuntimeContext::with_current(|cx| cx.unwrap().flush_io());
        let (r, buf) = read.await;
        assert_eq!(r.unwrap(), 4096);
        (queued, again, buf)
    });
    assert_eq!((queued, again), (1, 0));
    assert!(data.iter().all(|&b| b == 5));

    // Direct: every read and write is already with the kernel after its first poll,
    // and completes once with its data.
    with_direct_path("now", |path| async move {
        let file = open_direct(&path).await?;
        run_expecting_queued(file.write_at(page_of(9), 8192), 0, "a direct write").await;
        let back = AlignedBuf::new(4096, 4096);
        let back = run_expecting_queued(file.read_at(back, 8192), 0, "a direct read").await;
        assert!(back.iter().all(|&b| b == 9));
        let bufs = vec![AlignedBuf::new(4096, 4096)];
        let bufs =
            run_expecting_queued(file.read_vectored_at(bufs, 8192), 0, "a direct readv").await;
        assert!(bufs[0].iter().all(|&b| b == 9));
        // Descriptors taken over with the flag keep it: from_std, FromRawFd.
        let taken = File::from_std(std_direct(&path));
        let what = "a direct read of a taken-over file";
        run_expecting_queued(taken.read_at(AlignedBuf::new(4096, 4096), 8192), 0, what).await;
        let fd = std::os::fd::IntoRawFd::into_raw_fd(std_direct(&path));
        // SAFETY: a descriptor we own, handed over once.
        let raw = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let bufs = vec![page_of(3)];
        run_expecting_queued(raw.write_vectored_at(bufs, 12288), 0, "a direct writev").await;
        // A fixed-buffer read of a direct file, into a pool buffer.
        let pool_buf = veloq::RuntimeContext::with_current(|cx| cx.unwrap().alloc_buf(4096))
            .expect("a pool buffer");
        let what = "a direct fixed-buffer read";
        let pool_buf = run_expecting_queued(file.read_fixed_at(pool_buf, 12288), 0, what).await;
        assert!(pool_buf.iter().all(|&b| b == 3));
        // OpenOptions::submit_now overrides the default both ways.
        let mut options = OpenOptions::new();
        let batched = options.read(true).direct(true).submit_now(false);
        let batched = batched.open(&path).await.unwrap();
        let what = "a direct read with submit_now(false)";
        run_expecting_queued(batched.read_at(AlignedBuf::new(4096, 4096), 0), 1, what).await;
        let eager = OpenOptions::new()
            .read(true)
            .submit_now(true)
            .open(&path)
            .await;
        let what = "a buffered read with submit_now(true)";
        run_expecting_queued(eager.unwrap().read_at(vec![0u8; 4096], 8192), 0, what).await;
        Some(())
    });
}

#[test]
fn sync_statx_and_fallocate_report_what_the_kernel_did() {
    let dir = TempDir::new("meta");
    let path = dir.path("meta");
    let (len0, len1, len2, is_file, blocks_grew) = run(async move {
        let file = File::create(&path).await.unwrap();
        let m0 = file.metadata().await.unwrap();
        let (r, _) = file.write_all_at(vec![1u8; 1000], 0).await;
        r.unwrap();
        file.sync_all().await.unwrap();
        file.sync_data().await.unwrap();
        let len1 = file.len().await.unwrap();
        file.fallocate(0, 1 << 20).await.unwrap();
        let m2 = file.metadata().await.unwrap();
        (
            m0.len(),
            len1,
            m2.len(),
            m2.is_file() && !m2.is_dir(),
            m2.blocks() * 512 >= 1 << 20,
        )
    });
    assert_eq!((len0, len1, len2), (0, 1000, 1 << 20));
    assert!(is_file);
    assert!(blocks_grew, "fallocate allocated the range");
}

#[test]
fn open_errors_are_the_kernels() {
    let dir = TempDir::new("errors");
    let missing = dir.path("missing");
    let existing = dir.path("existing");
    std::fs::write(&existing, b"x").unwrap();
    let (a, b, c, d) = run(async move {
        let a = File::open(&missing).await.unwrap_err().raw_os_error();
        let b = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&existing)
            .await
            .unwrap_err()
            .raw_os_error();
        let c = OpenOptions::new()
            .open(&existing)
            .await
            .unwrap_err()
            .raw_os_error();
        let d = File::open("bad\0path").await.unwrap_err().kind();
        (a, b, c, d)
    });
    assert_eq!(a, Some(libc::ENOENT));
    assert_eq!(b, Some(libc::EEXIST));
    assert_eq!(c, Some(libc::EINVAL));
    assert_eq!(d, ErrorKind::InvalidInput);
}

#[test]
fn append_and_read_only_files_behave_as_opened() {
    let dir = TempDir::new("append");
    let path = dir.path("log");
    std::fs::write(&path, b"head;").unwrap();
    let (werr, content) = run(async move {
        let log = OpenOptions::new().append(true).open(&path).await.unwrap();
        // O_APPEND: the offset is ignored, writes land at the end.
        log.write_all_at(b"one;".to_vec(), 0).await.0.unwrap();
        log.write_all_at(b"two;".to_vec(), 0).await.0.unwrap();
        drop(log);
        let ro = File::open(&path).await.unwrap();
        let (r, _) = ro.write_at(b"no".to_vec(), 0).await;
        let werr = r.unwrap_err().raw_os_error();
        let (r, buf) = ro.read_at(Vec::with_capacity(64), 0).await;
        r.unwrap();
        (werr, buf)
    });
    assert_eq!(werr, Some(libc::EBADF));
    assert_eq!(content, b"head;one;two;");
}

#[test]
fn fixed_buffer_writes_and_reads_go_through_the_pool_registration() {
    let dir = TempDir::new("fixed");
    let path = dir.path("data");
    let (registered, back) = run(async move {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(&path)
            .await
            .expect("create");
        let (mut out, input) = veloq::RuntimeContext::with_current(|cx| {
            let cx = cx.expect("on a worker");
            (cx.alloc_buf(8192).unwrap(), cx.alloc_buf(8192).unwrap())
        });
        let registered = out.buf_index().is_some();
        for (i, b) in out.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let (n, out) = file.write_fixed_at(out, 4096).await;
        assert_eq!(n.expect("write_fixed_at"), 8192);
        let (n, input) = file.read_fixed_at(input, 4096).await;
        assert_eq!(n.expect("read_fixed_at"), 8192);
        assert_eq!(&input[..8192], &out[..]);
        // Past the end: 0 bytes, the buffer comes back.
        let (n, _input) = file.read_fixed_at(input, 1 << 20).await;
        assert_eq!(n.unwrap(), 0);
        (registered, std::fs::read(&path).unwrap())
    });
    assert_eq!(back.len(), 4096 + 8192);
    assert!(back[..4096].iter().all(|&b| b == 0));
    for (i, b) in back[4096..].iter().enumerate() {
        assert_eq!(*b, (i * 7 % 251) as u8);
    }
    // Root has no memlock limit here, so the pool registers; a refused registration
    // would take the plain path and still pass the checks above.
    println!("pool buffers registered: {registered}");
}

#[test]
fn fixed_buffer_calls_with_another_workers_or_a_plain_buffer_take_the_plain_path() {
    let dir = TempDir::new("fixed-foreign");
    let path = dir.path("data");
    let rt = Runtime::builder().workers(2).build().expect("runtime");
    let alloc = |size| {
        veloq::RuntimeContext::with_current(|cx| cx.expect("on a worker").alloc_buf(size))
            .expect("alloc")
    };
    // Made on worker 1: registered with worker 1's ring, not worker 0's.
    let made = rt
        .spawn_local_to(1, move || async move { (alloc(8192), alloc(8192)) })
        .unwrap();
    let (mut out, input) = rt.block_on(made).unwrap();
    assert_eq!(out.worker(), Some(1));
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i * 13 % 251) as u8;
    }
    let used = rt
        .spawn_local_to(0, move || async move {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .open(&path)
                .await
                .expect("create");
            let (n, out) = file.write_fixed_at(out, 0).await;
            assert_eq!(n.expect("write_fixed_at"), 8192);
            let (n, input) = file.read_fixed_at(input, 0).await;
            assert_eq!(n.expect("read_fixed_at"), 8192);
            assert_eq!(&input[..8192], &out[..]);
            // A plain allocation (above the largest class) belongs to no pool.
            let big = alloc(2 << 20);
            assert_eq!(big.buf_index(), None);
            let (n, big) = file.read_fixed_at(big, 0).await;
            assert_eq!(n.expect("read_fixed_at, plain"), 8192);
            assert_eq!(&big[..8192], &out[..]);
        })
        .unwrap();
    rt.block_on(used).unwrap();
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
}

#[test]
fn vectored_writes_and_reads_fill_buffers_in_order() {
    let dir = TempDir::new("vectored");
    let path = dir.path("v");
    run(async move {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(&path)
            .await
            .unwrap();
        let parts = vec![b"hello ".to_vec(), b"vectored ".to_vec(), b"world".to_vec()];
        let (r, parts) = file.write_vectored_at(parts, 3).await;
        assert_eq!(r.unwrap(), 20);
        assert_eq!(parts[1], b"vectored ");

        // Three buffers of 4, 10 and 100 bytes take the 20 bytes at offset 3 in order.
        let bufs = vec![
            Vec::with_capacity(4),
            Vec::with_capacity(10),
            Vec::with_capacity(100),
        ];
        let (r, bufs) = file.read_vectored_at(bufs, 3).await;
        assert_eq!(r.unwrap(), 20);
        assert_eq!(bufs[0], b"hell");
        assert_eq!(bufs[1], b"o vectored");
        assert_eq!(bufs[2], b" world");

        let (r, _) = file.read_vectored_at(Vec::<Vec<u8>>::new(), 0).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
        let (r, _) = file
            .read_vectored_at(vec![Vec::<u8>::with_capacity(8)], 1000)
            .await;
        assert_eq!(r.unwrap(), 0, "past the end reads nothing");
    });
}

/// What the callback of a raw read saw.
struct ReadSeen {
    done: std::sync::atomic::AtomicBool,
    res: std::sync::atomic::AtomicI64,
}

unsafe extern "C" fn read_seen(
    _cx: *mut veloq::RuntimeContext,
    res: i64,
    _flags: u32,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: `arg` is the `ReadSeen` the test keeps alive until this ran.
    let seen = unsafe { &*(arg as *const ReadSeen) };
    seen.res.store(res, std::sync::atomic::Ordering::SeqCst);
    seen.done.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// An operation queued on a descriptor (not yet handed to the kernel) when the file is
/// closed must act on that file, never on a file opened next under the same number.
#[test]
fn a_read_queued_before_close_reads_the_closed_file_not_its_successor() {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = TempDir::new("flush-close");
    let (old, new) = (dir.path("old"), dir.path("new"));
    std::fs::write(&old, b"OLD-CONTENT").unwrap();
    std::fs::write(&new, b"NEW-CONTENT").unwrap();
    run(async move {
        let mut reused = 0;
        for _ in 0..20 {
            let file = File::open(&old).await.unwrap();
            let fd = file.as_raw_fd();
            let seen = Box::new(ReadSeen {
                done: false.into(),
                res: 0.into(),
            });
            let mut buf = vec![0u8; 11].into_boxed_slice();
            let op = veloq::io::RawOp::Read {
                fd,
                buf: buf.as_mut_ptr(),
                len: 11,
                offset: 0,
            };
            veloq::RuntimeContext::with_current(|cx| {
                let arg = &*seen as *const ReadSeen as *mut std::ffi::c_void;
                // SAFETY: `buf` and `seen` live until the callback ran (awaited below).
                unsafe { cx.expect("on a worker").submit_io(op, read_seen, arg) }
            })
            .expect("queued");
            // Closed while the read waits in the submission queue; the next open takes
            // the lowest free number, normally the same one.
            drop(file);
            let successor = std::fs::File::open(&new).unwrap();
            if successor.as_raw_fd() == fd {
                reused += 1;
            }
            while !seen.done.load(SeqCst) {
                veloq::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(seen.res.load(SeqCst), 11);
            assert_eq!(
                &buf[..],
                b"OLD-CONTENT",
                "the read reached the successor file"
            );
        }
        assert!(
            reused > 0,
            "the descriptor number was never reused: nothing tested"
        );
    });
}
