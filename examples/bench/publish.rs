//! Publishing: raw XADD (awaited one by one, and pipelined) against the [`Publisher`].

use asdlc::Publisher;
use asdlc::prelude::*;

use crate::meter::{Meter, Sample};
use crate::workload::{encoded, sample_event, xadd};
use crate::{BATCH, Bench};

pub(crate) async fn raw_single(b: &Bench) -> Sample {
    let n = b.args.events;
    let fields = encoded(&(0..n).map(sample_event).collect::<Vec<_>>());
    let stream = b.fresh_stream("raw-single");
    let mut c = b.conn.clone();
    let t = Meter::start(b).await;
    for f in &fields {
        let _: String = xadd(&stream, f).query_async(&mut c).await.expect("XADD");
    }
    t.stop(b, n).await
}

pub(crate) async fn raw_pipelined(b: &Bench) -> Sample {
    let n = b.args.events;
    let fields = encoded(&(0..n).map(sample_event).collect::<Vec<_>>());
    let stream = b.fresh_stream("raw-pipe");
    let mut c = b.conn.clone();
    let t = Meter::start(b).await;
    for chunk in fields.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for f in chunk {
            pipe.add_command(xadd(&stream, f));
        }
        let ids: Vec<String> = pipe.query_async(&mut c).await.expect("XADD pipeline");
        assert_eq!(ids.len(), chunk.len());
    }
    t.stop(b, n).await
}

pub(crate) async fn asdlc_single(b: &Bench) -> Sample {
    let n = b.args.events;
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let p = Publisher::new(b.conn.clone(), b.config(&b.fresh_stream("asdlc-single")));
    let t = Meter::start(b).await;
    for e in &events {
        p.publish(e).await.expect("publish");
    }
    t.stop(b, n).await
}

pub(crate) async fn asdlc_batch(b: &Bench) -> Sample {
    let n = b.args.events;
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let p = Publisher::new(b.conn.clone(), b.config(&b.fresh_stream("asdlc-batch")));
    let t = Meter::start(b).await;
    for chunk in events.chunks(BATCH) {
        let published = p.publish_batch(chunk).await.expect("publish_batch");
        assert_eq!(published.len(), chunk.len());
    }
    t.stop(b, n).await
}
