//! I/O on io_uring: each worker owns one ring (its [`driver`]).

pub(crate) mod driver;
