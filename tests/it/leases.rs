//! How the commit step reads its leases, called directly with lease values set by hand: a
//! lease of its own (live or lapsed), another delivery's (live or lapsed), and values that only
//! look like its own. The commit tells its own leases without taking the value apart
//! (leases.lua, `asdlc_lease_held_by`), so these pin what it must still tell apart.

use asdlc::{RedisConnection, StreamKeys};

use crate::common::{command_calls, conn, mark_hash_of, server};

const GROUP: &str = "lease-handlers";
const TOKEN: &str = "token";
/// Bucket width and TTL of the layout the calls give (ms): the bucket is now / 10^9.
const WIDTH: u64 = 1_000_000_000;

/// The server's clock, in ms.
async fn server_ms(conn: &mut RedisConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1000 + us / 1000
}

/// The fingerprint of record `k`, and its mark hash in `bucket`.
fn fp(k: u8) -> [u8; 12] {
    [k; 12]
}

fn mark_hash(prefix: &str, bucket: u64, k: u8) -> String {
    mark_hash_of(prefix, bucket, 16_384, &fp(k))
}

#[tokio::test]
async fn a_commit_tells_its_own_leases_from_anothers_and_rechecks_the_marks_when_its_own_lapsed() {
    let s = server();
    let mut conn = conn(&s).await;
    asdlc::functions::ensure_loaded(&mut conn).await.unwrap();
    let keys = StreamKeys::new("lease:stream");
    let prefix = keys.marks_prefix(GROUP);
    let lease = keys.lease_prefix(GROUP).trim_end_matches(':').to_owned();
    let now = server_ms(&mut conn).await;
    let bucket = now / WIDTH;
    let live = (now + 600_000).to_string();
    let lapsed = (now - 1_000).to_string();
    // (record, lease value, marked before the call, the reply, the lease left after it)
    let cases: [(u8, String, bool, i64, bool); 10] = [
        // Ours and live: committed, the marks not read again, the lease dropped.
        (1, format!("{live}|1|{TOKEN}|1-1"), false, 1, false),
        // Ours but lapsed, and marked meanwhile: read again, found, acknowledged (0).
        (2, format!("{lapsed}|1|{TOKEN}|1-2"), true, 0, false),
        // Another delivery's, live: refused (2), its lease kept.
        (3, format!("{live}|1|other|1-3"), false, 2, true),
        // Another delivery's, lapsed: the marks are read, it is committed, that lease kept.
        (4, format!("{lapsed}|2|other|1-4"), false, 1, true),
        // Holders that only look like ours: another token ending in ours, another entry
        // whose id ends in ours, an id that ours is the start of. Each is another's.
        (5, format!("{live}|1|x{TOKEN}|1-5"), false, 2, true),
        (6, format!("{live}|1|{TOKEN}|11-6"), false, 2, true),
        (7, format!("{live}|1|{TOKEN}|1-77"), false, 2, true),
        // Ours, with a deadline of another length than now's: compared as numbers.
        (8, format!("99999999999999|1|{TOKEN}|1-8"), false, 1, false),
        (9, format!("5|1|{TOKEN}|1-9"), false, 1, false),
        // Ours, due at the very ms read before the call (a released lease's deadline is the
        // ms it was released): lapsed by the time the call runs, so the marks are read.
        (10, format!("{now}|1|{TOKEN}|1-10"), false, 1, false),
    ];
    for (k, value, marked, _, _) in &cases {
        let () = redis::cmd("HSET")
            .arg(&lease)
            .arg(&fp(*k)[..])
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        if *marked {
            let () = redis::cmd("HSET")
                .arg(mark_hash(&prefix, bucket, *k))
                .arg(&fp(*k)[..])
                .arg(1)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(format!("{}_commit", asdlc::functions::library_name()))
        .arg(4 + cases.len())
        .arg(keys.stream())
        .arg(keys.dead_letter())
        .arg(&lease)
        .arg(format!("{prefix}{bucket}:layout"));
    // Each record's mark hash at its place (marks.lua).
    for (k, ..) in &cases {
        cmd.arg(mark_hash(&prefix, bucket, *k));
    }
    cmd.arg(&prefix)
        .arg(WIDTH)
        .arg(bucket)
        .arg(2 * WIDTH)
        .arg("16384:4")
        .arg(GROUP)
        .arg(TOKEN)
        .arg("")
        .arg(0)
        .arg(0);
    for (k, ..) in &cases {
        if *k == 8 {
            // The long form of a success record (no effects), which reads its lease alike.
            cmd.arg("S")
                .arg(format!("1-{k}"))
                .arg(&fp(*k)[..])
                .arg(&fp(*k)[..])
                .arg(0);
        } else {
            cmd.arg("s").arg(format!("1-{k}")).arg(&fp(*k)[..]);
        }
    }
    let hexists = command_calls(&mut conn, "hexists").await;
    let replies: Vec<i64> = cmd.query_async(&mut conn).await.unwrap();
    // The marks were read for the lapsed leases only: records 2, 4, 9 and 10.
    assert_eq!(command_calls(&mut conn, "hexists").await - hexists, 4);
    let wanted: Vec<i64> = cases.iter().map(|c| c.3).collect();
    assert_eq!(replies, wanted);
    for (k, value, _, reply, kept) in &cases {
        let left: Option<String> = redis::cmd("HGET")
            .arg(&lease)
            .arg(&fp(*k)[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left.as_ref(), kept.then_some(value), "record {k}");
        let marked: bool = redis::cmd("HEXISTS")
            .arg(mark_hash(&prefix, bucket, *k))
            .arg(&fp(*k)[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(marked, *reply != 2, "record {k}");
    }
}
