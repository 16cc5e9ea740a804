//! The event type names `types = [...]` accepts, and the "did you mean" for the rest.
//!
//! The list mirrors `asdlc_runtime::EventType`; a name missing here would be rejected before
//! rustc could say anything, and a name only here fails to resolve in the generated code, so
//! the trybuild pass test naming all of them keeps the two in step.

/// Every `EventType` variant, in declaration order.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "SessionStarted",
    "SessionCompleted",
    "TaskCreated",
    "TaskDispatched",
    "TaskCompleted",
    "TaskFailed",
    "GateRequested",
    "GateApproved",
    "GateRejected",
    "GateExpired",
    "AgentStarted",
    "AgentCompleted",
    "AgentError",
    "PatchCreated",
    "PatchApplied",
    "PatchRejected",
];

/// Whether `name` is an `EventType` variant.
pub(crate) fn is_event_type(name: &str) -> bool {
    EVENT_TYPES.contains(&name)
}

/// The candidate closest to `name`, if one is close enough to be a likely typo.
///
/// Names are compared lowercased and without underscores first, so the wire spelling
/// (`task_created`) and a wrong case (`taskcreated`) find their variant too.
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

    #[test]
    fn typos_find_their_event_type() {
        assert_eq!(suggest("TaskCreate", EVENT_TYPES), Some("TaskCreated"));
        assert_eq!(suggest("task_created", EVENT_TYPES), Some("TaskCreated"));
        assert_eq!(suggest("GateAproved", EVENT_TYPES), Some("GateApproved"));
        assert_eq!(suggest("agenterror", EVENT_TYPES), Some("AgentError"));
    }

    #[test]
    fn unrelated_names_get_no_suggestion() {
        assert_eq!(suggest("Foo", EVENT_TYPES), None);
        assert_eq!(suggest("Deployment", EVENT_TYPES), None);
    }

    #[test]
    fn the_list_has_every_variant_once() {
        assert_eq!(EVENT_TYPES.len(), 16);
        for (i, name) in EVENT_TYPES.iter().enumerate() {
            assert!(!EVENT_TYPES[i + 1..].contains(name), "{name} listed twice");
        }
    }
}
