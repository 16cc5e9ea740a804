//! `#[event_handler]` end to end, without Redis: what it registers, and that the generated
//! `EventHandler` calls the function and converts its result.

use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{HandlerOptions, HandlerRegistration, registered_handlers};

const GROUP: &str = "macro-registration";

mod tasks {
    use asdlc::prelude::*;

    #[event_handler(types = [TaskCreated, TaskDispatched], group = "macro-registration")]
    pub async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
        HandlerResult::ok_with_artifacts([format!(
            "{}/{}/{}",
            event.session_id,
            ctx.group(),
            ctx.attempt()
        )])
    }
}

mod patches {
    use asdlc::prelude::*;

    #[event_handler(
        types = [PatchRejected, PatchCreated],
        group = "macro-registration",
        name = "reject-patch",
        max_deliveries = 3,
        timeout = "1500ms",
        concurrency = 2,
    )]
    pub async fn on_rejected(_: &AsdlcEvent) -> Result<(), HandlerError> {
        Err(HandlerError::permanent("cannot apply"))
    }

    pub mod nested {
        use asdlc::prelude::*;

        #[event_handler(types = [PatchApplied], group = "macro-registration", timeout = "2m")]
        pub async fn busy(
            _: &AsdlcEvent,
            _: &HandlerContext,
        ) -> Result<HandlerResult, HandlerError> {
            Err(HandlerError::retryable("busy"))
        }
    }
}

#[event_handler(types = [SessionStarted], group = "macro-registration-other")]
async fn at_the_root(_: &AsdlcEvent) {}

fn registration(name: &str) -> &'static HandlerRegistration {
    registered_handlers()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no handler named {name}"))
}

fn event(event_type: EventType) -> AsdlcEvent {
    AsdlcEvent::builder(event_type, "s1").build().unwrap()
}

/// `file:line` of the `#[event_handler` attribute above `fn <name>` in this file.
fn declared_at(name: &str) -> String {
    let source = include_str!("macro_registration.rs");
    let lines: Vec<&str> = source.lines().collect();
    let fn_line = lines
        .iter()
        .position(|l| l.contains(&format!("async fn {name}(")))
        .unwrap();
    let attribute_line = (0..fn_line)
        .rev()
        .find(|i| lines[*i].trim_start().starts_with("#[event_handler"))
        .unwrap();
    format!("{}:{}", file!(), attribute_line + 1)
}

#[test]
fn handlers_in_every_module_are_registered() {
    let mut names: Vec<&str> = registered_handlers()
        .into_iter()
        .filter(|r| r.group == GROUP)
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "macro_registration::patches::nested::busy",
            "macro_registration::tasks::on_task",
            "reject-patch",
        ]
    );
    let root = registration("macro_registration::at_the_root");
    assert_eq!(root.group, "macro-registration-other");
    assert_eq!(root.types, [EventType::SessionStarted]);
}

#[test]
fn registrations_carry_the_declared_settings() {
    let on_task = registration("macro_registration::tasks::on_task");
    assert_eq!(on_task.group, GROUP);
    assert_eq!(
        on_task.types,
        [EventType::TaskCreated, EventType::TaskDispatched]
    );
    assert_eq!(on_task.options, HandlerOptions::default());
    assert_eq!(on_task.location, declared_at("on_task"));
    assert_eq!(on_task.handler.name(), on_task.name);

    let rejected = registration("reject-patch");
    assert_eq!(
        rejected.types,
        [EventType::PatchRejected, EventType::PatchCreated]
    );
    assert_eq!(
        rejected.options,
        HandlerOptions::new()
            .with_max_deliveries(3)
            .with_timeout(Duration::from_millis(1500))
            .with_concurrency(2)
    );
    assert_eq!(rejected.location, declared_at("on_rejected"));
    assert_eq!(rejected.handler.name(), "reject-patch");

    let busy = registration("macro_registration::patches::nested::busy");
    assert_eq!(busy.options.timeout, Some(Duration::from_secs(120)));
    assert_eq!(busy.options.max_deliveries, None);
}

#[test]
fn can_handle_matches_exactly_the_declared_types() {
    for name in [
        "macro_registration::tasks::on_task",
        "reject-patch",
        "macro_registration::patches::nested::busy",
        "macro_registration::at_the_root",
    ] {
        let registration = registration(name);
        for event_type in EventType::ALL {
            assert_eq!(
                registration.handler.can_handle(*event_type),
                registration.types.contains(event_type),
                "{name} and {event_type:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_generated_handler_calls_the_function() {
    let handler = registration("macro_registration::tasks::on_task").handler;
    let event = event(EventType::TaskCreated);
    let ctx = HandlerContext::detached();
    let through_the_trait = handler.handle(&event, &ctx).await;
    assert!(through_the_trait.is_ok());
    assert_eq!(through_the_trait.artifacts(), ["s1/test/1"]);

    let called_directly = tasks::on_task(&event, &ctx).await;
    assert_eq!(called_directly, through_the_trait);
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let handler = registration("reject-patch").handler;
    let result = handler
        .handle(
            &event(EventType::PatchRejected),
            &HandlerContext::detached(),
        )
        .await;
    assert!(result.is_permanent());
    assert_eq!(result.error_message(), Some("cannot apply"));
}

#[tokio::test]
async fn a_retryable_error_is_retried() {
    let handler = registration("macro_registration::patches::nested::busy").handler;
    let result = handler
        .handle(&event(EventType::PatchApplied), &HandlerContext::detached())
        .await;
    assert!(result.is_retry());
    assert_eq!(result.error_message(), Some("busy"));
}

#[tokio::test]
async fn a_unit_handler_succeeds() {
    let handler = registration("macro_registration::at_the_root").handler;
    let result = handler
        .handle(
            &event(EventType::SessionStarted),
            &HandlerContext::detached(),
        )
        .await;
    assert!(result.is_ok());
    at_the_root(&event(EventType::SessionStarted)).await;
}
