//! Text helpers for the lowest modules: shortening untrusted input before an error message
//! quotes it. It imports nothing from the crate, so every module may use it.

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when something was cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", &s[..floor_char_boundary(s, max)])
}

/// The largest character boundary of `s` at or below `max`.
pub(crate) fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}
