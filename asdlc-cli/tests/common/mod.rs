//! What the tests of the `asdlc` binary share: the binary, started with none of this process's
//! configuration.

use std::process::Command;

/// The `asdlc` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_asdlc");

/// The environment variables `asdlc` takes its configuration from.
const CONFIG_VARS: [&str; 6] = [
    "REDIS_URL",
    "ASDLC_STREAM",
    "ASDLC_TENANCY",
    "ASDLC_TENANTS",
    "ASDLC_MAXLEN",
    "ASDLC_DASHBOARD_TOKEN",
];

/// The `asdlc` command, with none of [`CONFIG_VARS`] taken from this process's environment:
/// what a test passes is all it is configured with.
pub fn unconfigured() -> Command {
    let mut c = Command::new(BIN);
    for var in CONFIG_VARS {
        c.env_remove(var);
    }
    c
}
