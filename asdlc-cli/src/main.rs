//! `asdlc`: the operator's command-line tool for asdlc event streams.

fn main() {}
