//! Which server binary to run: [`server_binary`] and the environment variable [`SERVER_ENV`]
//! that overrides the lookup.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::TestServerError;

/// The environment variable naming the server binary to use.
pub const SERVER_ENV: &str = "ASDLC_REDIS_SERVER";

/// Finds a server binary, in the order given in the [crate docs](crate).
pub fn server_binary() -> Result<PathBuf, TestServerError> {
    if let Some(path) = std::env::var_os(SERVER_ENV).filter(|p| !p.is_empty()) {
        return check_binary(
            Path::new(&path),
            &format!("{SERVER_ENV}={}", path.display()),
        );
    }
    let mut tried = Vec::new();
    for name in ["valkey-server", "redis-server"] {
        if let Some(found) = find_on_path(name) {
            return Ok(found);
        }
        tried.push(format!("`{name}` on PATH"));
    }
    for candidate in unpacked_server_candidates()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
    {
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(TestServerError::NoBinary {
        reason: format!(
            "{SERVER_ENV} is not set and none found at {}",
            tried.join(", ")
        ),
    })
}

pub(crate) fn check_binary(path: &Path, origin: &str) -> Result<PathBuf, TestServerError> {
    if !path.exists() {
        Err(TestServerError::NoBinary {
            reason: format!("{origin} does not exist"),
        })
    } else if !is_executable(path) {
        Err(TestServerError::NoBinary {
            reason: format!("{origin} is not an executable file"),
        })
    } else {
        Ok(path.to_owned())
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn unpacked_server_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        candidates.push(workspace.join("target/asdlc-server/valkey-server"));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let candidate = PathBuf::from(target).join("asdlc-server/valkey-server");
        if !candidates.contains(&candidate) {
            candidates.push(candidate);
        }
    }
    candidates
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}
