//! Client bytes → the LMTP server's command handling (`connectors::lmtp`, which the engine's
//! LMTP sessions use): the bounded line reader, then each line as the session reads it (verb,
//! MAIL FROM and RCPT TO arguments), checking the replies and the addresses accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::lmtp::fuzzing::read_lines;
use serversync_connectors::lmtp::{parse_mail_from, parse_rcpt_to, split_command};

/// A reply line: a code, a space, text without control characters (a CR or LF in it would
/// let a client inject replies).
fn assert_reply(r: &str) {
    let b = r.as_bytes();
    assert!(
        b.len() > 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ',
        "malformed reply {r:?}"
    );
    assert!(
        !r.chars().any(char::is_control),
        "control character in {r:?}"
    );
}

fn assert_address(a: &str) {
    assert!(a.len() <= 320, "address of {} bytes", a.len());
    assert!(
        !a.chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>'),
        "address {a:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let (max, capacity, input) = match data {
        [a, b, rest @ ..] => (16 + usize::from(*a) * 4, 1 + usize::from(*b % 32), rest),
        _ => return,
    };
    let lines = read_lines(input, max, capacity);
    assert_eq!(
        lines.len(),
        input.iter().filter(|&&b| b == b'\n').count(),
        "every LF ends one line"
    );
    let mut joined = Vec::new();
    for (line, truncated) in &lines {
        assert!(
            line.len() <= max,
            "a line of {} bytes, limit {max}",
            line.len()
        );
        if *truncated {
            assert_eq!(line.len(), max);
        } else {
            assert_eq!(line.iter().position(|&b| b == b'\n'), Some(line.len() - 1));
        }
        joined.extend_from_slice(line);
    }
    if lines.iter().all(|(_, t)| !t) {
        let end = input.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        assert_eq!(joined, &input[..end], "the lines are not the input");
    }

    // Each whole line as a command, as `Session::commands` hands it on.
    for (line, truncated) in &lines {
        if *truncated {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = split_command(line);
        assert!(!verb.contains(' '));
        assert_eq!(arg, arg.trim());
        match verb.to_ascii_uppercase().as_str() {
            "MAIL" => match parse_mail_from(arg, 1 << 20) {
                Ok(a) => assert_address(&a),
                Err(r) => assert_reply(&r),
            },
            "RCPT" => match parse_rcpt_to(arg) {
                Ok(a) => {
                    assert_address(&a);
                    assert!(a.contains('@'));
                    assert_reply(&format!("250 2.1.5 <{a}> OK"));
                }
                Err(r) => assert_reply(&r),
            },
            _ => {}
        }
    }
});
