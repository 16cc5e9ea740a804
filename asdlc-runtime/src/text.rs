//! Text helpers for the lowest modules: shortening untrusted input before an error message
//! quotes it. It imports nothing from the crate, so every module may use it.

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when something was cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
