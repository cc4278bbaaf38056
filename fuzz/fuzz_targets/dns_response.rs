//! Nameserver bytes → the DNS stub client's answer parsing (`connectors::dns::parse_response`):
//! the input as a whole answer, and spliced after a real header and question so the answer
//! section itself is reached. Never a panic or a hang (compression loops), names bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::dns::{Record, TYPE_SRV, encode_query, parse_response};

const ID: u16 = 0x1234;

fn check(query: &[u8], answer: &[u8]) {
    if let Ok(parsed) = parse_response(ID, query, answer) {
        assert!(parsed.rcode < 16);
        for r in parsed.records {
            if let Record::Srv(srv) = r {
                assert!(srv.target.len() <= 255, "{}", srv.target.len());
                assert!(srv.target.bytes().all(|b| b.is_ascii_graphic() || b == b'.'));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let query = encode_query(ID, "_autodiscover._tcp.contoso.com", TYPE_SRV).expect("a valid name");
    check(&query, data);
    if data.len() >= 12 {
        // A header with our id and one question, the question itself, then the input.
        let question_end = query.len() - 11; // the OPT record is 11 bytes
        let mut answer = data[..12].to_vec();
        answer[..2].copy_from_slice(&ID.to_be_bytes());
        answer[2] |= 0x80;
        answer[4..6].copy_from_slice(&1u16.to_be_bytes());
        answer.extend_from_slice(&query[12..question_end]);
        answer.extend_from_slice(&data[12..]);
        check(&query, &answer);
    }
});
