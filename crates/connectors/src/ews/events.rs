//! Streaming notifications (`Subscribe` + `GetStreamingEvents`): new mail announced within a
//! second, on a connection of its own (the answer to `GetStreamingEvents` stays open for up
//! to 30 minutes, a SOAP envelope arriving for each batch of events and for each heartbeat).
//! The subscription carries `X-PreferServerAffinity` and the server's back-end cookie, so the
//! events come from the server that holds the subscription.

use super::ops::{self, FolderRef};
use super::xml::Element;
use super::{EwsClient, check};
use crate::server::EwsTarget;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login, Result};
use bytes::Buf;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a stream is asked to stay open, in minutes (the EWS maximum).
const STREAM_MINUTES: u32 = 30;
/// The most bytes of one unfinished envelope kept (a notification is a few KB).
const MAX_PENDING: usize = 4 << 20;

/// An open stream of notifications.
pub struct EventStream {
    client: EwsClient,
    subscription: String,
    body: Option<hyper::body::Incoming>,
    pending: Vec<u8>,
}

impl EventStream {
    /// Subscribes to `folders` and starts reading events.
    pub async fn start(
        target: &EwsTarget,
        login: &Login,
        opts: &ConnectOptions,
        folders: &[FolderRef],
    ) -> Result<EventStream> {
        let mut client = super::open(target, login, opts).await?;
        let subscription = ops::subscribe_streaming(&mut client, folders).await?;
        let body = ops::get_streaming_events_body(&subscription, STREAM_MINUTES);
        let resp = client.call_streaming("GetStreamingEvents", &body).await?;
        Ok(EventStream {
            client,
            subscription,
            body: Some(resp.into_body()),
            pending: Vec::new(),
        })
    }

    /// Waits up to `max` for events: `Some(true)` when new mail arrived, `Some(false)` when
    /// nothing did, `None` when the stream ended (time up, subscription expired).
    pub async fn next(&mut self, max: Duration) -> Result<Option<bool>> {
        let deadline = Instant::now() + max;
        loop {
            // Whole envelopes first.
            while let Some(end) = envelope_end(&self.pending) {
                let envelope: Vec<u8> = self.pending.drain(..end).collect();
                match read(&envelope)? {
                    Read::NewMail => return Ok(Some(true)),
                    Read::Ended => return Ok(None),
                    Read::Nothing => {}
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Ok(Some(false)),
                Ok(None) => {
                    self.body = None;
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    self.body = None;
                    return Err(crate::https::http_failure("GetStreamingEvents", &e));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    self.pending.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
            if self.pending.len() > MAX_PENDING {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Transient,
                    "a streaming notification is larger than 4 MB: the stream is restarted",
                ));
            }
        }
    }

    /// Ends the subscription when the stream is finished (the connection is free again);
    /// an open stream is just dropped (the subscription expires on its own).
    pub async fn close(mut self) {
        if self.body.is_none() {
            ops::unsubscribe(&mut self.client, &self.subscription).await;
        }
    }
}

enum Read {
    NewMail,
    Nothing,
    Ended,
}

/// What one envelope of the stream says.
fn read(envelope: &[u8]) -> Result<Read> {
    let env = Element::parse(envelope).map_err(|e| {
        ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Transient,
            format!("a streaming notification is not XML ({e})"),
        )
    })?;
    let Some(msg) = env.find("GetStreamingEventsResponseMessage") else {
        return Ok(Read::Nothing);
    };
    if let Err(e) = check(msg, "GetStreamingEvents") {
        let code = msg.text_of("ResponseCode").unwrap_or_default();
        if matches!(
            code,
            "ErrorSubscriptionNotFound"
                | "ErrorExpiredSubscription"
                | "ErrorMissedNotificationEvents"
        ) {
            return Ok(Read::Ended);
        }
        return Err(e);
    }
    let new_mail = msg.find("Notifications").is_some_and(|n| {
        n.children.iter().any(|notification| {
            notification.children.iter().any(|ev| {
                matches!(
                    ev.name.as_str(),
                    "NewMailEvent" | "CreatedEvent" | "MovedEvent" | "CopiedEvent"
                )
            })
        })
    });
    if new_mail {
        return Ok(Read::NewMail);
    }
    if msg.text_of("ConnectionStatus") == Some("Closed") {
        return Ok(Read::Ended);
    }
    Ok(Read::Nothing)
}

/// The end (exclusive) of the first whole SOAP envelope in `buf`: after its closing
/// `</…Envelope>` tag, whatever the prefix.
fn envelope_end(buf: &[u8]) -> Option<usize> {
    let needle = b"Envelope>";
    let mut from = 0;
    while let Some(pos) = buf[from..].windows(needle.len()).position(|w| w == needle) {
        let at = from + pos;
        // Walk back over the prefix to the `</`.
        let mut i = at;
        while i > 0
            && (buf[i - 1].is_ascii_alphanumeric() || buf[i - 1] == b':' || buf[i - 1] == b'_')
        {
            i -= 1;
        }
        if i >= 2 && &buf[i - 2..i] == b"</" {
            return Some(at + needle.len());
        }
        from = at + needle.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_cut_from_the_stream_and_read() {
        let heartbeat = br#"<s:Envelope xmlns:s="s"><s:Body><m:GetStreamingEventsResponse xmlns:m="m"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:ConnectionStatus>OK</m:ConnectionStatus></m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></s:Body></s:Envelope>"#;
        let event = br#"<Envelope><Body><GetStreamingEventsResponse><ResponseMessages><GetStreamingEventsResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode><Notifications><Notification><SubscriptionId>x</SubscriptionId><NewMailEvent><Watermark>w</Watermark></NewMailEvent></Notification></Notifications></GetStreamingEventsResponseMessage></ResponseMessages></GetStreamingEventsResponse></Body></Envelope>"#;
        let mut stream = heartbeat.to_vec();
        stream.extend_from_slice(event);
        let first = envelope_end(&stream).unwrap();
        assert_eq!(first, heartbeat.len());
        assert!(matches!(read(&stream[..first]).unwrap(), Read::Nothing));
        assert_eq!(envelope_end(&stream[first..]), Some(event.len()));
        assert!(matches!(read(&stream[first..]).unwrap(), Read::NewMail));
        assert_eq!(envelope_end(&event[..event.len() - 3]), None);
        let expired = br#"<Envelope><Body><GetStreamingEventsResponseMessage ResponseClass="Error"><ResponseCode>ErrorSubscriptionNotFound</ResponseCode></GetStreamingEventsResponseMessage></Body></Envelope>"#;
        assert!(matches!(read(expired).unwrap(), Read::Ended));
    }
}
