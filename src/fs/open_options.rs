//! [`OpenOptions`]: how to open a [`File`](super::File).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::File;
use crate::io::op;
use crate::io::RawOp;

/// Options for opening a file, as `std::fs::OpenOptions`, plus [`direct`](Self::direct)
/// (`O_DIRECT`). The file is opened through the ring (`openat`, `O_CLOEXEC` always).
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    direct: bool,
    submit_now: Option<bool>,
    custom_flags: i32,
    mode: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// Nothing set (opening fails with `EINVAL` until read, write or append is set);
    /// mode 0o666 (less the umask) for created files.
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            direct: false,
            submit_now: None,
            custom_flags: 0,
            mode: 0o666,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.read = read;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.write = write;
        self
    }

    /// Open for appending (`O_APPEND`; implies writing).
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.append = append;
        self
    }

    /// Truncate to 0 bytes on open (`O_TRUNC`; needs write).
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.truncate = truncate;
        self
    }

    /// Create the file if it does not exist (`O_CREAT`; needs write or append).
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.create = create;
        self
    }

    /// Create the file, failing with `EEXIST` if it exists (`O_CREAT | O_EXCL`).
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.create_new = create_new;
        self
    }

    /// Bypass the page cache (`O_DIRECT`): buffers, lengths and offsets must then be
    /// aligned to the device's block size, or the kernel answers `EINVAL`. Some file
    /// systems (tmpfs) refuse `O_DIRECT` at open with `EINVAL`.
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        self.direct = direct;
        self
    }

    /// Whether the file's reads and writes go to the kernel as they are submitted, each
    /// with an `io_uring_enter` of its own, or with the worker's batch (see [`File`]). By
    /// default they go at once for a file opened `O_DIRECT` ([`direct`](Self::direct) or
    /// [`custom_flags`](Self::custom_flags)) and with the batch otherwise. `false` keeps
    /// direct I/O in the batch (fewer system calls, which a fast local device may prefer);
    /// `true` sends buffered I/O at once too.
    pub fn submit_now(&mut self, now: bool) -> &mut Self {
        self.submit_now = Some(now);
        self
    }

    /// Extra `open(2)` flags, or-ed in (the access mode bits are ignored).
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom_flags = flags & !libc::O_ACCMODE;
        self
    }

    /// Permission bits for a created file (before the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// The `open(2)` flags these options make; `EINVAL` for an impossible mix.
    fn flags(&self) -> io::Result<i32> {
        let access = match (self.read, self.write || self.append) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let writes = self.write || self.append;
        if (self.truncate || self.create || self.create_new) && !writes {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if self.truncate && self.append && !self.write {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut flags = access | self.custom_flags;
        if self.append {
            flags |= libc::O_APPEND;
        }
        if self.truncate {
            flags |= libc::O_TRUNC;
        }
        if self.create_new {
            flags |= libc::O_CREAT | libc::O_EXCL;
        } else if self.create {
            flags |= libc::O_CREAT;
        }
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        Ok(flags)
    }

    /// Opens `path` with these options (`openat` through the ring). Errors: `ENOENT`,
    /// `EACCES`, `EEXIST` (create_new), `EINVAL` (bad mix, or `O_DIRECT` refused),
    /// `InvalidInput` for a path with a NUL byte.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let flags = self.flags()?;
        let path = CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
        let mode = self.mode;
        let (fd, _path) = op::run_fd(path, |p| {
            RawOp::OpenAt {
                dirfd: libc::AT_FDCWD,
                path: p.as_ptr(),
                flags,
                mode,
            }
            .entry()
        })
        .await;
        let submit_now = self.submit_now.unwrap_or(flags & libc::O_DIRECT != 0);
        Ok(File::from_new_fd(fd?, submit_now))
    }
}
