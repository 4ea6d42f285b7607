//! The `pglock` command-line tool (work in progress).
fn main() {}
