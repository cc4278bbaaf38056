//! Building outgoing messages (lettre's message builder): From, Subject, Message-ID,
//! In-Reply-To/References, the To/Cc/Bcc parties, text and HTML bodies and attachments. Pure:
//! the caller brings the attachments' bytes. In two steps, so that the addresses are checked
//! (and a message without recipients refused) before the caller reads any attachment.

use lettre::message::{Attachment, Mailbox as Addr, MessageBuilder, MultiPart, SinglePart, header};
use serversync_model::crm::{ActivityParty, PartyRole};

/// An attachment of an outgoing message.
#[derive(Debug, Clone)]
pub struct OutgoingAttachment {
    pub file_name: String,
    /// Unparseable types are sent as `text/plain`.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The headers of a message, its addresses checked: finish it with [`Headers::finish`].
pub struct Headers {
    builder: MessageBuilder,
    recipients: Vec<String>,
}

fn parse(s: &str) -> Result<Addr, String> {
    s.parse::<Addr>()
        .map_err(|e| format!("the address {s:?} is not valid ({e})"))
}

/// The headers: `message_id` and the references without angle brackets; every To, Cc and Bcc
/// party is an envelope recipient (From parties are not: `from` is the sender).
pub fn headers(
    from: &str,
    subject: String,
    message_id: &str,
    in_reply_to: Option<&str>,
    references: &[String],
    parties: &[ActivityParty],
) -> Result<Headers, String> {
    let mut b = lettre::Message::builder()
        .from(parse(from)?)
        .subject(subject)
        .message_id(Some(format!("<{message_id}>")))
        .date_now();
    if let Some(r) = in_reply_to {
        b = b.in_reply_to(format!("<{r}>"));
    }
    if !references.is_empty() {
        let refs: Vec<String> = references.iter().map(|r| format!("<{r}>")).collect();
        b = b.references(refs.join(" "));
    }
    let mut recipients = Vec::new();
    for p in parties {
        let to = match &p.display_name {
            Some(n) => format!("{n} <{}>", p.address),
            None => p.address.clone(),
        };
        b = match p.role {
            PartyRole::To => b.to(parse(&to)?),
            PartyRole::Cc => b.cc(parse(&to)?),
            PartyRole::Bcc => b.bcc(parse(&to)?),
            PartyRole::From => continue,
        };
        recipients.push(p.address.clone());
    }
    if recipients.is_empty() {
        return Err("the email has no recipients".into());
    }
    Ok(Headers {
        builder: b,
        recipients,
    })
}

impl Headers {
    /// The message (text, with HTML as an alternative when given, and the attachments) and
    /// its envelope recipients.
    pub fn finish(
        self,
        text: String,
        html: Option<String>,
        attachments: Vec<OutgoingAttachment>,
    ) -> Result<(Vec<u8>, Vec<String>), String> {
        let b = self.builder;
        let msg = match (html, attachments.is_empty()) {
            (None, true) => b.body(text),
            (Some(html), true) => b.multipart(MultiPart::alternative_plain_html(text, html)),
            (html, false) => {
                let mut mixed = match html {
                    Some(h) => {
                        MultiPart::mixed().multipart(MultiPart::alternative_plain_html(text, h))
                    }
                    None => MultiPart::mixed().singlepart(SinglePart::plain(text)),
                };
                for at in attachments {
                    let ct = header::ContentType::parse(&at.content_type)
                        .unwrap_or(header::ContentType::TEXT_PLAIN);
                    mixed = mixed.singlepart(Attachment::new(at.file_name).body(at.bytes, ct));
                }
                b.multipart(mixed)
            }
        }
        .map_err(|e| format!("the message could not be built ({e})"))?;
        Ok((msg.formatted(), self.recipients))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(role: PartyRole, address: &str, name: Option<&str>) -> ActivityParty {
        ActivityParty {
            role,
            address: address.into(),
            display_name: name.map(Into::into),
            resolved: None,
        }
    }

    #[test]
    fn headers_bodies_attachments_and_envelope() {
        let parties = [
            party(PartyRole::From, "ignored@example.test", None),
            party(PartyRole::To, "bob@example.test", Some("Bob B")),
            party(PartyRole::Cc, "carol@example.test", None),
            party(PartyRole::Bcc, "dave@example.test", None),
        ];
        let h = headers(
            "alice@example.test",
            "Offer [CRM:0001]".into(),
            "act-1@serversync.example.test",
            Some("orig@example.test"),
            &["first@example.test".into(), "orig@example.test".into()],
            &parties,
        )
        .unwrap();
        let (raw, rcpts) = h
            .finish(
                "Hello".into(),
                Some("<p>Hello</p>".into()),
                vec![OutgoingAttachment {
                    file_name: "offer.pdf".into(),
                    content_type: "application/pdf".into(),
                    bytes: b"%PDF-1.4".to_vec(),
                }],
            )
            .unwrap();
        assert_eq!(
            rcpts,
            [
                "bob@example.test",
                "carol@example.test",
                "dave@example.test"
            ]
        );
        let parsed = crate::mime::parse(&raw).unwrap();
        assert_eq!(
            parsed.message_id.as_deref(),
            Some("act-1@serversync.example.test")
        );
        assert_eq!(parsed.subject.as_deref(), Some("Offer [CRM:0001]"));
        assert_eq!(parsed.from.as_deref(), Some("alice@example.test"));
        assert_eq!(parsed.to, ["bob@example.test"]);
        assert_eq!(parsed.cc, ["carol@example.test"]);
        assert_eq!(parsed.in_reply_to.as_deref(), Some("orig@example.test"));
        assert_eq!(
            parsed.references,
            ["first@example.test", "orig@example.test"]
        );
        assert_eq!(parsed.text_body.as_deref().map(str::trim), Some("Hello"));
        assert!(
            parsed
                .html_body
                .unwrap_or_default()
                .contains("<p>Hello</p>")
        );
        assert_eq!(parsed.attachments.len(), 1);
        assert_eq!(
            parsed.attachments[0].file_name.as_deref(),
            Some("offer.pdf")
        );
        assert_eq!(parsed.attachments[0].data, b"%PDF-1.4");
        // Bcc is an envelope recipient only.
        assert!(!String::from_utf8_lossy(&raw).contains("dave@example.test"));
    }

    #[test]
    fn refusals_name_the_problem() {
        let to = [party(PartyRole::To, "bob@example.test", None)];
        let e = headers("not an address", "s".into(), "m@x", None, &[], &to)
            .err()
            .unwrap();
        assert!(e.contains("\"not an address\" is not valid"), "{e}");
        let only_from = [party(PartyRole::From, "bob@example.test", None)];
        let e = headers(
            "alice@example.test",
            "s".into(),
            "m@x",
            None,
            &[],
            &only_from,
        )
        .err()
        .unwrap();
        assert_eq!(e, "the email has no recipients");
    }
}
