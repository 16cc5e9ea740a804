//! Two macro-declared handlers of one group claiming the same event type: the runtime
//! refuses to start and names both (inventory cannot see duplicates, so the runtime checks).

use asdlc::prelude::*;
use asdlc::{RegistryError, RuntimeError};

mod first {
    use asdlc::prelude::*;

    #[event_handler(types = [PatchApplied], group = "conflicting")]
    pub async fn apply_patch(_: &AsdlcEvent) {}
}

mod second {
    use asdlc::prelude::*;

    #[event_handler(types = [PatchCreated, PatchApplied], group = "conflicting")]
    pub async fn also_apply_patch(_: &AsdlcEvent) {}
}

#[tokio::test]
async fn conflicting_handlers_stop_the_runtime_before_it_connects() {
    // No server is needed: the check runs before any connection is made.
    let config = Config::new("redis://127.0.0.1:1").unwrap();
    let err = Runtime::builder().config(config).build().await.unwrap_err();
    let msg = err.to_string();
    match err {
        RuntimeError::Registry(RegistryError::Conflict {
            group,
            event_type,
            first,
            second,
        }) => {
            assert_eq!(group, "conflicting");
            assert_eq!(event_type, EventType::PatchApplied);
            let both = format!("{first} {second}");
            assert!(
                both.contains("first::apply_patch") && both.contains("second::also_apply_patch"),
                "{msg}"
            );
            assert!(
                both.contains("runtime_conflict.rs:"),
                "locations are given: {msg}"
            );
        }
        other => panic!("expected a conflict, got {other}"),
    }
}
