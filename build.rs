//! Build script: gives the C shared library its SONAME, `libveloq.so.<major>`, so programs
//! linked against it keep working across compatible upgrades and `make install`'s
//! `libveloq.so.MAJOR -> libveloq.so.MAJOR.MINOR.PATCH` link is the one they load.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libveloq.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
