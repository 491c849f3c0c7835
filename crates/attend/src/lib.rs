//! Exact attention kernels for the CPU.
