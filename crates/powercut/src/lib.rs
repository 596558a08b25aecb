//! The power-cut tests' disk: a FUSE filesystem that keeps every write in
//! memory and, when a test cuts the power, forgets what was never made
//! durable ([`disk`] says exactly what survives), so that the reader, the
//! wallet and the hub can be cut at any operation and checked after.

#![deny(missing_docs)]

pub mod disk;
pub mod mount;

pub use disk::Disk;
pub use mount::{Mounted, Op, OpKind, ReleaseOnDrop, Trigger, When};
