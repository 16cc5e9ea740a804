//! Approval gates against a real server (and the cluster): one outcome per gate, decided by
//! the server; a late approval appends nothing and says what it lost to; the deadline expires
//! a gate through the consumers' promoter; an approval racing the deadline, 100 rounds.

use std::time::Duration;

use asdlc::{EventType, Gate, GateDecision, GateOutcome, GateRequest, Publisher, RedisConnection};
use redis::streams::StreamRangeReply;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

/// The outcome events (`gate_approved`, `gate_rejected`, `gate_expired`) of gate `id` in
/// `stream`.
async fn outcomes_of(conn: &mut RedisConnection, stream: &str, id: &str) -> Vec<String> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .filter_map(|e| {
            let t: String = e.get("event_type")?;
            let meta: String = e.get("metadata")?;
            let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
            (meta.get("gate_id")?.as_str()? == id && t != EventType::GateRequested.as_str())
                .then_some(t)
        })
        .collect()
}

async fn approved_in_time(target: Target, stream: &str) {
    let config = target.config(stream);
    let mut conn = target.conn().await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let gate = Gate::new(&p, "deploy-1");
    let requested = gate
        .request("s1", Duration::from_secs(60), "validation")
        .await
        .unwrap();
    assert!(
        matches!(requested, GateRequest::Requested { .. }),
        "{requested:?}"
    );
    // Asked again: nothing new.
    assert_eq!(
        gate.request("s1", Duration::from_secs(60), "validation")
            .await
            .unwrap(),
        GateRequest::Exists {
            outcome: GateOutcome::Pending
        }
    );
    let decided = gate.approve("alice").await.unwrap();
    assert!(
        matches!(decided, GateDecision::Decided { .. }),
        "{decided:?}"
    );
    for late in [
        gate.approve("bob").await.unwrap(),
        gate.reject("carol").await.unwrap(),
    ] {
        match late {
            GateDecision::Late { outcome, by, .. } => {
                assert_eq!(outcome, GateOutcome::Approved);
                assert_eq!(by, "alice");
            }
            other => panic!("{other:?}"),
        }
    }
    let state = gate.state().await.unwrap().unwrap();
    assert_eq!(state.outcome, GateOutcome::Approved);
    assert_eq!(state.decided_by.as_deref(), Some("alice"));
    assert_eq!(state.requested_by, "validation");
    assert_eq!(
        outcomes_of(&mut conn, stream, "deploy-1").await,
        ["gate_approved"]
    );
    let listed = asdlc::gate::list(&mut conn, stream, 10, false)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        asdlc::gate::list(&mut conn, stream, 10, true)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        Gate::new(&p, "never-requested").approve("x").await.unwrap(),
        GateDecision::Unknown
    );
}

#[tokio::test]
async fn a_gate_approved_in_time_has_one_outcome_and_late_answers_lose_on_a_server() {
    approved_in_time(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn a_gate_approved_in_time_has_one_outcome_and_late_answers_lose_on_a_cluster() {
    approved_in_time(Target::cluster(), "cl-gate:events").await;
}

#[tokio::test]
async fn a_gate_expires_at_its_deadline_and_a_late_approval_loses_to_it() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let mut conn = target.conn().await;
    let expired = TestHandler::new("h", &[EventType::GateExpired]);
    let c = consumer_for(&config, "hitl", "c1", &expired).await;
    let run = spawn(&c).await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let gate = Gate::new(&p, "deploy-2");
    gate.request("s2", Duration::from_millis(300), "validation")
        .await
        .unwrap();
    eventually(WAIT, "the gate_expired event handled", || {
        let h = expired.clone();
        async move { h.count() == 1 }
    })
    .await;
    let state = gate.state().await.unwrap().unwrap();
    assert_eq!(state.outcome, GateOutcome::Expired);
    assert_eq!(state.decided_by.as_deref(), Some("deadline"));
    match gate.approve("alice").await.unwrap() {
        GateDecision::Late { outcome, by, .. } => {
            assert_eq!(outcome, GateOutcome::Expired);
            assert_eq!(by, "deadline");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        outcomes_of(&mut conn, &config.stream, "deploy-2").await,
        ["gate_expired"]
    );
    c.stop();
    run.await.unwrap().unwrap();
}

/// An approval sent around the deadline (up to 40 ms before or after it) while a
/// promoter expires gates: every gate ends with exactly one outcome event, the one its state
/// names, and the approval's answer agrees with it.
#[tokio::test]
async fn an_approval_racing_the_deadline_gives_one_outcome_in_100_rounds() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let mut conn = target.conn().await;
    let idle = TestHandler::new("h", &[EventType::GateExpired]);
    let c = consumer_for(&config, "hitl", "c1", &idle).await;
    let run = spawn(&c).await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let (mut approved, mut expired) = (0, 0);
    for round in 0..100u64 {
        let gate = Gate::new(&p, format!("race-{round}"));
        let timeout = Duration::from_millis(80);
        gate.request("race", timeout, "validation").await.unwrap();
        // From 40 ms before the deadline to 40 ms after it, 1 ms apart.
        tokio::time::sleep(
            timeout - Duration::from_millis(40) + Duration::from_millis(round * 4 / 5),
        )
        .await;
        let answer = gate.approve("alice").await.unwrap();
        let state = gate.state().await.unwrap().unwrap();
        match (&answer, state.outcome) {
            (GateDecision::Decided { .. }, GateOutcome::Approved) => approved += 1,
            (GateDecision::Late { outcome, .. }, GateOutcome::Expired) => {
                assert_eq!(*outcome, GateOutcome::Expired);
                expired += 1;
            }
            other => panic!("round {round}: {other:?}"),
        }
        let events = outcomes_of(&mut conn, &config.stream, gate.id()).await;
        let expected = match state.outcome {
            GateOutcome::Approved => "gate_approved",
            _ => "gate_expired",
        };
        assert_eq!(events, [expected], "round {round}");
    }
    println!("100 races: {approved} approved in time, {expired} expired first");
    assert!(
        approved > 0 && expired > 0,
        "both sides won some: {approved} / {expired}"
    );
    c.stop();
    run.await.unwrap().unwrap();
}

/// Answers published with a plain `Publisher`, around `Gate`: the consumers check them against
/// the gate before a handler sees them. The first decides a pending gate; a later one is
/// acknowledged without reaching the handler.
#[tokio::test]
async fn answers_published_around_the_gate_advance_it_once() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let answers = TestHandler::new("h", &[EventType::GateApproved, EventType::GateRejected]);
    let c = consumer_for(&config, "deployment", "c1", &answers).await;
    let run = spawn(&c).await;
    let p = Publisher::connect(config.clone()).await.unwrap();
    let answer = |t: EventType, gate: &str, by: &str| {
        asdlc::AsdlcEvent::builder(t, "s3")
            .meta("gate_id", gate)
            .meta("by", by)
            .build()
            .unwrap()
    };
    // Decided through Gate, then a rejection published around it: late.
    let through = Gate::new(&p, "via-gate");
    through
        .request("s3", Duration::from_secs(60), "validation")
        .await
        .unwrap();
    through.approve("alice").await.unwrap();
    p.publish(&answer(EventType::GateRejected, "via-gate", "mallory"))
        .await
        .unwrap();
    // Pending, answered around Gate twice: the first decides it, the second is late.
    let around = Gate::new(&p, "around-gate");
    around
        .request("s3", Duration::from_secs(60), "validation")
        .await
        .unwrap();
    p.publish(&answer(EventType::GateApproved, "around-gate", "bob"))
        .await
        .unwrap();
    p.publish(&answer(EventType::GateRejected, "around-gate", "carol"))
        .await
        .unwrap();
    eventually(WAIT, "all four answers settled", || {
        let c = c.clone();
        async move { c.stats().processed == 4 }
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
    let handled: Vec<(String, EventType)> = answers
        .calls()
        .into_iter()
        .map(|call| {
            let gate = call.event.metadata["gate_id"].as_str().unwrap().to_owned();
            (gate, call.event.event_type)
        })
        .collect();
    assert_eq!(
        handled.len(),
        2,
        "only each gate's outcome reached the handler: {handled:?}"
    );
    assert!(handled.contains(&("via-gate".to_owned(), EventType::GateApproved)));
    assert!(handled.contains(&("around-gate".to_owned(), EventType::GateApproved)));
    let state = around.state().await.unwrap().unwrap();
    assert_eq!(state.outcome, GateOutcome::Approved);
    assert_eq!(state.decided_by.as_deref(), Some("bob"));
}
