//! A program with no `#[event_handler]` linked, as a service binary is when its handlers live
//! in a library crate it never names: the runtime refuses to start, against a real server,
//! with the hint that fixes it, and leaves the server untouched. This file declares no
//! handler on purpose (each integration test is its own program), so the registry is empty.

#[path = "it/common/mod.rs"]
mod common;

use asdlc::{RegistryError, Runtime, RuntimeError, registered_handlers};
use common::*;

/// What a failed start must not have left behind: no key, no function library loaded.
async fn assert_untouched(s: &TestServer) {
    let mut c = s.connection().await;
    let keys = all_keys(&mut c).await;
    assert_eq!(keys, Vec::<String>::new(), "a refused start wrote keys");
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(libraries.is_empty(), "a refused start loaded functions");
}

#[tokio::test]
async fn a_runtime_with_no_handlers_fails_at_startup_with_the_library_hint() {
    let s = server();
    assert!(
        registered_handlers().is_empty(),
        "this test program must link no handler"
    );
    let err = Runtime::builder()
        .config(config(&s))
        .build()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::Registry(RegistryError::NoHandlers)),
        "{msg}"
    );
    assert!(
        msg.contains("library crate") && msg.contains("`use that_crate as _;`"),
        "the message says how to link a library's handlers: {msg}"
    );
    assert_untouched(&s).await;
}

#[tokio::test]
async fn a_requested_group_without_a_handler_fails_at_startup_with_the_library_hint() {
    let s = server();
    // One hand-added handler, so the set is not empty; the group asked for has none, as when
    // that group's handlers sit in a library the binary never names.
    let err = Runtime::builder()
        .config(config(&s))
        .handler(
            "present-handlers",
            TestHandler::new("present", &[asdlc::EventType::TaskCreated]),
        )
        .groups(["present-handlers", "library-handlers"])
        .build()
        .await
        .unwrap_err();
    let msg = err.to_string();
    match err {
        RuntimeError::Registry(RegistryError::UnknownGroup { group, known }) => {
            assert_eq!(group, "library-handlers");
            assert_eq!(known, "present-handlers");
        }
        other => panic!("expected UnknownGroup, got {other}"),
    }
    assert!(msg.contains("`use that_crate as _;`"), "{msg}");
    assert_untouched(&s).await;
}
