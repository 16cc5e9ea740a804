//! A real Redis/Valkey server for tests, examples and benchmarks (feature `testing`).
