//! The throughput parts: what each runs, its label, and the rounds that run them all.

use crate::meter::{Sample, median};
use crate::{Bench, RUNS, consume, emit, faststream, ordering, publish};
use asdlc::ConsumerOptions;

/// The throughput parts, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    RawSingle,
    AsdlcSingle,
    RawPipelined,
    AsdlcBatch,
    RawConsume,
    RawDedup,
    Asdlc1,
    Asdlc2,
    Asdlc4,
    AsdlcWide,
    FastStream,
    RawEmit,
    AsdlcEmit,
    Unordered,
    OrderedBySession,
}

impl Part {
    pub(crate) const ALL: [Part; 15] = [
        Part::RawSingle,
        Part::AsdlcSingle,
        Part::RawPipelined,
        Part::AsdlcBatch,
        Part::RawConsume,
        Part::RawDedup,
        Part::Asdlc1,
        Part::Asdlc2,
        Part::Asdlc4,
        Part::AsdlcWide,
        Part::FastStream,
        Part::RawEmit,
        Part::AsdlcEmit,
        Part::Unordered,
        Part::OrderedBySession,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Part::RawSingle => "publish: raw single XADD",
            Part::AsdlcSingle => "publish: asdlc publish",
            Part::RawPipelined => "publish: raw pipelined x100",
            Part::AsdlcBatch => "publish: asdlc publish_batch x100",
            Part::RawConsume => "consume: raw",
            Part::RawDedup => "consume: raw + dedup",
            Part::Asdlc1 => "consume: asdlc 1 consumer",
            Part::Asdlc2 => "consume: asdlc 2 consumers",
            Part::Asdlc4 => "consume: asdlc 4 consumers",
            Part::AsdlcWide => "consume: asdlc concurrency 1024, batch 200, 1 consumer",
            Part::FastStream => "consume: faststream batch subscriber (Python)",
            Part::RawEmit => "emit: raw + dedup + XADD",
            Part::AsdlcEmit => "emit: asdlc ctx.emit",
            Part::Unordered => "consume: unordered, 1,000 sessions, 1 consumer",
            Part::OrderedBySession => "consume: ordered by session, 1,000 sessions, 1 consumer",
        }
    }

    async fn run(self, b: &Bench) -> Sample {
        match self {
            Part::RawSingle => publish::raw_single(b).await,
            Part::AsdlcSingle => publish::asdlc_single(b).await,
            Part::RawPipelined => publish::raw_pipelined(b).await,
            Part::AsdlcBatch => publish::asdlc_batch(b).await,
            Part::RawConsume => consume::raw(b, false).await,
            Part::RawDedup => consume::raw(b, true).await,
            Part::Asdlc1 => consume::asdlc(b, 1, |_| {}).await,
            Part::Asdlc2 => consume::asdlc(b, 2, |_| {}).await,
            Part::Asdlc4 => consume::asdlc(b, 4, |_| {}).await,
            Part::AsdlcWide => {
                consume::asdlc(b, 1, |o: &mut ConsumerOptions| {
                    o.concurrency = 1024;
                    o.batch_size = 200;
                })
                .await
            }
            Part::FastStream => faststream::batch(b).await,
            Part::RawEmit => emit::raw(b).await,
            Part::AsdlcEmit => emit::asdlc(b).await,
            Part::Unordered => ordering::consume(b, false).await,
            Part::OrderedBySession => ordering::consume(b, true).await,
        }
    }
}

/// Runs every wanted part [`RUNS`] times on a clean server, in rounds (each round runs each
/// part once), so a change in the machine's load hits the compared parts alike; gives each
/// part's median, and every sample by round.
pub(crate) async fn run_parts(b: &Bench) -> (Vec<Option<Sample>>, Vec<Vec<Sample>>) {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Part::ALL.len()];
    for round in 1..=RUNS {
        eprintln!("round {round} of {RUNS}...");
        for (i, part) in Part::ALL.iter().enumerate() {
            // FastStream only when asked for: it needs PyPI.
            if b.wants(part.label()) && (*part != Part::FastStream || b.args.faststream) {
                b.flush().await;
                samples[i].push(part.run(b).await);
            }
        }
    }
    let medians = Part::ALL
        .iter()
        .zip(&samples)
        .map(|(part, out)| {
            if out.is_empty() {
                return None;
            }
            let shown: Vec<String> = out.iter().map(|s| format!("{:.0}", s.rate)).collect();
            eprintln!("  {}: {} ev/s", part.label(), shown.join(" / "));
            Some(median(out.clone()))
        })
        .collect();
    (medians, samples)
}
