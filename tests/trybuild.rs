//! Every diagnostic of `#[event_handler]`, proved against the pinned compiler's output, and
//! every supported form, proved to compile.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test --test trybuild`, then
//! read the diff: each message must say what is wrong and point at the token that is.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
