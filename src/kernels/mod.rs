//! Compute kernels behind one interface: CPU implementations here, each with
//! a slow reference the tests compare against.

pub mod attention;
