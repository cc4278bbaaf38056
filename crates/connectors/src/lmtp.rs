//! LMTP (RFC 2033) as the server side speaks it: the bounded line reader and the reader of
//! message pieces (framing), and the parsers of command lines and of the `MAIL FROM` / `RCPT
//! TO` arguments, which answer a refusal with the reply to send. Pure or generic over the
//! reader; the listener and the sessions (which mailbox a recipient is, what is stored) are
//! the engine's (`serversync_engine::lmtp`).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest address accepted in MAIL FROM / RCPT TO.
pub const MAX_ADDRESS: usize = 320;

/// What reading one line gave.
pub enum Read {
    /// The client closed the connection (a partial last line is dropped).
    Closed,
    /// A line, with its line ending; `truncated` when it was longer than allowed (the rest
    /// of it was read and thrown away).
    Line { truncated: bool },
}

/// Reads up to and including the next LF into `buf`, keeping at most `max` bytes of it.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Read> {
    buf.clear();
    let mut truncated = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Read::Closed);
        }
        let (n, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if n > room {
            buf.extend_from_slice(&avail[..room]);
            truncated = true;
        } else {
            buf.extend_from_slice(&avail[..n]);
        }
        r.consume(n);
        if done {
            return Ok(Read::Line { truncated });
        }
    }
}

/// Reads up to and including the next LF into `buf`, but at most `max` bytes: `Some(true)`
/// for a whole line (or its end), `Some(false)` when `max` bytes were read and the line goes
/// on (the rest stays unread), `None` when the client closed the connection.
pub async fn read_piece<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(None);
        }
        let window = &avail[..avail.len().min(max - buf.len())];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..=i]);
            r.consume(i + 1);
            return Ok(Some(true));
        }
        let n = window.len();
        buf.extend_from_slice(window);
        r.consume(n);
        if buf.len() >= max {
            return Ok(Some(false));
        }
    }
}

/// Splits a command line into its verb (as sent) and its argument (trimmed).
pub fn split_command(line: &str) -> (&str, &str) {
    match line.split_once(' ') {
        Some((v, a)) => (v, a.trim()),
        None => (line, ""),
    }
}

/// The argument of `MAIL` (`FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME]`) → the sender, or
/// the reply refusing it. Pure; the session checks the state (LHLO first, one transaction).
pub fn parse_mail_from(arg: &str, max_message_bytes: u64) -> Result<String, String> {
    let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
        return Err(
            "501 5.5.4 syntax: MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME]".to_owned(),
        );
    };
    let (address, params) =
        parse_path(rest).map_err(|why| format!("501 5.1.7 bad sender: {why}"))?;
    for param in params.split_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => match value.parse::<u64>() {
                Ok(n) if n > max_message_bytes => {
                    return Err(format!(
                        "552 5.3.4 the message ({n} octets) is larger than the limit of {max_message_bytes} octets"
                    ));
                }
                Ok(_) => {}
                Err(_) => return Err("501 5.5.4 SIZE needs a number of octets".to_owned()),
            },
            "BODY"
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            _ => {
                return Err(format!(
                    "555 5.5.4 unsupported MAIL parameter {}",
                    clip(param)
                ));
            }
        }
    }
    Ok(address)
}

/// The argument of `RCPT` (`TO:<address>`) → the recipient, or the reply refusing it. Pure;
/// the session checks the state and looks the mailbox up.
pub fn parse_rcpt_to(arg: &str) -> Result<String, String> {
    let Some(rest) = strip_prefix_ci(arg, "TO:") else {
        return Err("501 5.5.4 syntax: RCPT TO:<address>".to_owned());
    };
    let (address, params) =
        parse_path(rest).map_err(|why| format!("501 5.1.3 bad recipient: {why}"))?;
    if let Some(p) = params.split_whitespace().next() {
        return Err(format!("555 5.5.4 unsupported RCPT parameter {}", clip(p)));
    }
    if address.is_empty() || !address.contains('@') {
        return Err(
            "501 5.1.3 bad recipient: an address needs a local part and a domain".to_owned(),
        );
    }
    Ok(address)
}

/// Entry points for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `input` line by line as the session does (a line is at most `max` bytes, the
    /// reader's buffer `capacity` bytes): each line with whether it was truncated; a partial
    /// last line is dropped, as when the client closes the connection.
    pub fn read_lines(input: &[u8], max: usize, capacity: usize) -> Vec<(Vec<u8>, bool)> {
        let mut r = tokio::io::BufReader::with_capacity(capacity.max(1), input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match futures::executor::block_on(super::read_line(&mut r, &mut buf, max)) {
                Ok(super::Read::Line { truncated }) => out.push((buf.clone(), truncated)),
                Ok(super::Read::Closed) | Err(_) => return out,
            }
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Shortens client text echoed in a reply; control characters become `?` (a reply line
/// carries none).
fn clip(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Splits `<address> params` (RFC 5321 reverse-path / forward-path), dropping a source route.
fn parse_path(s: &str) -> Result<(String, &str), &'static str> {
    let s = s.trim_start();
    let Some(inner) = s.strip_prefix('<') else {
        return Err("the address must be in angle brackets, as in <name@example.com>");
    };
    let Some(end) = inner.find('>') else {
        return Err("missing '>' after the address");
    };
    let (path, params) = (&inner[..end], &inner[end + 1..]);
    if !params.is_empty() && !params.starts_with(' ') {
        return Err("expected a space after '>'");
    }
    // "@relay1,@relay2:user@domain": only the mailbox counts.
    let address = match path.starts_with('@') {
        true => path.rsplit_once(':').map_or("", |(_, a)| a),
        false => path,
    };
    if address.len() > MAX_ADDRESS {
        return Err("the address is too long");
    }
    if address
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '<')
    {
        return Err("the address contains spaces or control characters");
    }
    Ok((address.to_owned(), params.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("<a@b.test> SIZE=10").unwrap(),
            ("a@b.test".into(), "SIZE=10")
        );
        assert_eq!(parse_path("<>").unwrap(), (String::new(), ""));
        assert_eq!(
            parse_path("<@r1,@r2:x@y.test>").unwrap(),
            ("x@y.test".into(), "")
        );
        assert!(parse_path("a@b.test").is_err());
        assert!(parse_path("<a@b.test").is_err());
        assert!(parse_path("<a b@c>").is_err());
        assert!(parse_path("<a@b>x").is_err());
        assert!(parse_path(&format!("<{}@b>", "x".repeat(400))).is_err());
        assert_eq!(strip_prefix_ci("from:<x>", "FROM:"), Some("<x>"));
        assert_eq!(strip_prefix_ci("fr", "FROM:"), None);
        assert_eq!(strip_prefix_ci("fröm:", "FROM:"), None);
    }

    /// Found by the fuzz target `lmtp_command` (fuzz/corpus/lmtp_command/
    /// control-in-parameter): a parameter with control characters was echoed into the reply.
    #[test]
    fn refusals_echo_no_control_characters() {
        let line = String::from_utf8_lossy(
            b"rcpt to:<x@y.test> N)TIFY=NEVRCPTER\x10\x83mail Fro:<x@y.\x02\x00M",
        );
        let (verb, arg) = split_command(&line);
        assert_eq!(verb, "rcpt");
        let reply = parse_rcpt_to(arg).unwrap_err();
        assert!(reply.starts_with("555 5.5.4 unsupported RCPT parameter N)TIFY=NEVRCPTER?"));
        assert!(!reply.chars().any(char::is_control), "{reply:?}");
        let reply = parse_mail_from("FROM:<a@b.test> X\u{1}\u{7f}", 100).unwrap_err();
        assert_eq!(reply, "555 5.5.4 unsupported MAIL parameter X??");
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let input: &[u8] = b"short\r\nway too long a line\r\nrest";
        let mut r = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Read::Line { truncated: false }
        ));
        assert_eq!(buf, b"short\r\n");
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Read::Line { truncated: true }
        ));
        assert_eq!(buf, b"way too lo");
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Read::Closed
        ));
    }
}
