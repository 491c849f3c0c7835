//! Exact attention kernels for the CPU.

pub mod kv;
pub mod rope;
