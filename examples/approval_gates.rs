//! Approval gates that expire: two gates guard two deployments. A human approves the first in
//! time; nobody answers the second, and its deadline expires it. An approval of the expired
//! gate, arriving late, is refused: it appends nothing and says what it lost to. The handlers
//! downstream see exactly one outcome per gate. Prints each gate's outcome and exits.
//!
//! Run it with `scripts/run-example.sh approval_gates`. Its stream base is
//! `examples:approval_gates`, started clean.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{Gate, GateDecision, GateOutcome};

/// The outcome events the deployment handler saw: (gate, event type).
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<(String, EventType)>>,
}

#[event_handler(
    types = [GateApproved, GateRejected, GateExpired],
    group = "deployment-handlers"
)]
async fn on_outcome(event: &AsdlcEvent, seen: State<Seen>) {
    let gate = event
        .metadata
        .get("gate_id")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned();
    println!("[deployment]  {gate}: {}", event.event_type);
    seen.events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((gate, event.event_type));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs("warn");
    let config = common::config("approval_gates")?;
    println!("asdlc approval gates against {}", config.redis_url);
    common::start_clean(&config).await?;

    let seen = std::sync::Arc::new(Seen::default());
    let runtime = Runtime::builder()
        .config(config.clone())
        .groups(["deployment-handlers"])
        .consumer_name("approval-gates")
        .state_arc(seen.clone())
        .build()
        .await?;
    let handle = runtime.handle();
    let run = tokio::spawn(runtime.run());
    handle.ready().await?;

    let publisher = Publisher::connect(config.clone()).await?;
    let session = format!("session-{}", std::process::id());
    let first = Gate::new(&publisher, "deploy-1a2b3c4d");
    let second = Gate::new(&publisher, "deploy-5e6f7a8b");
    first
        .request(&session, Duration::from_secs(30), "validation")
        .await?;
    second
        .request(&session, Duration::from_millis(800), "validation")
        .await?;
    println!(
        "[validation]  requested {} (30 s) and {} (0.8 s)",
        first.id(),
        second.id()
    );

    let answer = first.approve("alice").await?;
    println!("[hitl]        alice approves {}: {answer:?}", first.id());

    // Nobody answers the second gate in time; its deadline expires it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = second.approve("bob").await?;
    match &late {
        GateDecision::Late { outcome, by, at } => println!(
            "[hitl]        bob approves {} too late: refused, it was {outcome} by {by} at {at}",
            second.id()
        ),
        other => println!("[hitl]        bob approves {}: {other:?}", second.id()),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop();
    run.await??;

    println!();
    let mut ok = matches!(
        late,
        GateDecision::Late {
            outcome: GateOutcome::Expired,
            ..
        }
    );
    for (gate, expected) in [
        (&first, GateOutcome::Approved),
        (&second, GateOutcome::Expired),
    ] {
        let state = gate.state().await?.ok_or("gate not found")?;
        let events: Vec<EventType> = seen
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(g, _)| g == gate.id())
            .map(|(_, t)| *t)
            .collect();
        println!(
            "gate {}: {} by {} ({} outcome event handled: {events:?})",
            gate.id(),
            state.outcome,
            state.decided_by.as_deref().unwrap_or("-"),
            events.len()
        );
        ok &= state.outcome == expected && events.len() == 1;
    }
    println!();
    common::outcome(
        ok,
        "OK — one outcome per gate: one approved in time, one expired, the late approval refused",
    );
    Ok(())
}
