//! The "did you mean" for a mistyped argument name.
//!
//! Event type names are not checked here: the expansion names each as
//! `EventType::<name>` on the user's own token, so rustc reports an unknown one there, with
//! its own suggestion of the variant meant, and the macro keeps no copy of the list.

/// The candidate closest to `name`, if one is close enough to be a likely typo.
///
/// Names are compared lowercased and without underscores first, so a wrong case or a
/// missing underscore (`maxdeliveries`) finds its candidate too.
pub(crate) fn suggest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let wanted = normalize(name);
    let threshold = (wanted.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (levenshtein(&wanted, &normalize(c)), *c))
        .filter(|(d, _)| *d <= threshold)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Edit distance: insertions, deletions and substitutions, one each.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("taskcreate", "taskcreated"), 1);
    }

    const KEYS: &[&str] = &["types", "group", "max_deliveries", "timeout", "concurrency"];

    #[test]
    fn typos_find_their_candidate() {
        assert_eq!(suggest("grup", KEYS), Some("group"));
        assert_eq!(suggest("maxdeliveries", KEYS), Some("max_deliveries"));
        assert_eq!(suggest("Max_Delivery", KEYS), Some("max_deliveries"));
        assert_eq!(suggest("timout", KEYS), Some("timeout"));
    }

    #[test]
    fn unrelated_names_get_no_suggestion() {
        assert_eq!(suggest("retries", KEYS), None);
        assert_eq!(suggest("x", KEYS), None);
    }
}
