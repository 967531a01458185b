//! Library version.

/// Major version: changes only when the C API breaks.
pub const VELOQ_VERSION_MAJOR: u32 = 0;
/// Minor version: grows when the C API grows.
pub const VELOQ_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const VELOQ_VERSION_PATCH: u32 = 0;

/// The version of the loaded library, `(major << 16) | (minor << 8) | patch`; compare it
/// with the `VELOQ_VERSION_*` macros the program was built with. Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_version() -> u32 {
    (VELOQ_VERSION_MAJOR << 16) | (VELOQ_VERSION_MINOR << 8) | VELOQ_VERSION_PATCH
}
