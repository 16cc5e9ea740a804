//! Fuzzes the stream-entry decoder: any field map either fails with an error naming a field,
//! or decodes to an event that is valid and survives encode -> decode unchanged.
//!
//! The input is split into (field, value) pairs: each is a length byte and that many bytes,
//! field first; a known field name is likelier than random bytes, so the first byte of each
//! field picks one of them when it is below 0x80.

#![no_main]

use asdlc_runtime::encoding::{FIELDS, decode, encode};
use libfuzzer_sys::fuzz_target;

fn chunk<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&len, rest) = data.split_first()?;
    let len = usize::from(len).min(rest.len());
    let (head, tail) = rest.split_at(len);
    *data = tail;
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    while let Some(&tag) = data.first() {
        let name = if tag < 0x80 {
            data = &data[1..];
            // One more choice than there are fields: a name the decoder does not know.
            let i = usize::from(tag) % (FIELDS.len() + 1);
            FIELDS.get(i).copied().unwrap_or("unknown").as_bytes().to_vec()
        } else {
            match chunk(&mut data) {
                Some(n) => n.to_vec(),
                None => break,
            }
        };
        let Some(value) = chunk(&mut data) else { break };
        fields.push((name, value.to_vec()));
    }
    match decode(&fields) {
        Ok(event) => {
            assert!(
                event.validate().is_ok(),
                "decoded an invalid event: {event:?}"
            );
            let again = decode(encode(&event).fields()).expect("a decoded event re-decodes");
            assert_eq!(again, event);
        }
        Err(e) => assert!(!e.field.is_empty(), "an error names its field"),
    }
});
