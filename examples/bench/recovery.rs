//! Recovery: a restarted consumer taking over the pending entries of its dead predecessor.

use crate::consume::consumer;
use crate::meter::{Meter, Sample};
use crate::workload::{prefill, read_new};
use crate::{Bench, GROUP};

/// Reads `n` entries as consumer `name` and never acknowledges them: a consumer that dies.
pub(crate) async fn read_and_die(b: &Bench, stream: &str, name: &str, n: usize) {
    let mut c = b.conn.clone();
    asdlc::create_consumer_group(&mut c, stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .expect("group");
    let mut read = 0;
    while read < n {
        let got = read_new(&mut c, stream, GROUP, name, 1000).await.len();
        assert!(got > 0, "stream ran out at {read} of {n}");
        read += got;
    }
}

/// Time for a restarted consumer to recover `n` pending entries of its dead predecessor.
pub(crate) async fn recovery(b: &Bench, n: usize) -> Sample {
    let stream = prefill(b, "recovery", n).await;
    read_and_die(b, &stream, "crashed", n).await;
    let c = consumer(b, &stream, "crashed").await;
    let t = Meter::start(b).await;
    let result = c.process_pending().await.expect("process_pending");
    let sample = t.stop(b, n).await;
    assert_eq!(result.processed, n as u64, "{result:?}");
    sample
}
