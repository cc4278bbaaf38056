//! NTLMv2 client messages with TLS channel binding, for signing in to Exchange over HTTP.
//!
//! Exchange Server 2019 CU14 and later turn on Extended Protection: an NTLM sign-in over
//! HTTPS must carry the TLS channel binding (`MsvAvChannelBindings`), or the server refuses
//! it even with the right password. This module writes the two client messages of the NTLM
//! handshake (MS-NLMP); the EWS client sends them base64-encoded in `Authorization: NTLM …`
//! on one HTTP/1.1 connection:
//!
//! 1. [`negotiate_message`] (type 1). It is a pure function of the workstation name, so
//!    [`authenticate_message`] can rebuild it for the MIC: pass the same workstation to both.
//! 2. The server answers `401` with its challenge (type 2), hostile input: every offset and
//!    length is checked, and a malformed challenge is an [`NtlmError`], never a panic.
//! 3. [`authenticate_message`] (type 3) answers it with the NTLMv2 response of an
//!    [`NtlmIdentity`] (MS-NLMP §3.3.2): the server's target information is sent back with
//!    `MsvAvFlags` (MIC present), `MsvAvChannelBindings` when a [`ChannelBinding`] is given,
//!    and the message's MIC (HMAC-MD5 with the session key over the three messages).
//!    The timestamp is the server's `MsvAvTimestamp`, else the local clock; the LM response
//!    is zeros, as MS-NLMP asks when a MIC is sent.
//!
//! What is deliberately left out:
//!
//! - **NTLMv1 and LM.** A challenge without target information (a server that accepts only
//!   NTLMv1) is refused with [`NtlmError::NtlmV1Only`] instead of sending a response that
//!   can be cracked offline.
//! - **Signing and sealing.** HTTP authentication needs neither, so no key exchange
//!   (`NEGOTIATE_KEY_EXCH`) is negotiated and the exported session key is the session base
//!   key. TLS protects the connection.
//! - **`MsvAvTargetName`** (the service principal name): the API has no target; with
//!   Extended Protection over TLS, Exchange checks the channel binding.
//!
//! The channel binding is RFC 5929 `tls-server-end-point`: the hash of the server's
//! certificate, with the hash function of the certificate's signature (SHA-256 when that is
//! MD5 or SHA-1, or unknown). NTLM carries the MD5 of the RFC 2744 `gss_channel_bindings`
//! structure whose initiator and acceptor addresses are empty and whose application data is
//! `"tls-server-end-point:" + hash` ([`ChannelBinding::application_data`]).
//!
//! **FIPS.** NTLM rests on MD4, MD5 and HMAC-MD5, none of which FIPS 140 allows. This module
//! uses RustCrypto's implementations, outside the validated module, and does not check the
//! installation's mode itself: the caller must refuse NTLM when `tls.fips` is on (and offer
//! OAuth or Basic over TLS instead).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use md4::Md4;
use md5::{Digest, Md5};
use serversync_model::Secret;

/// The errors of [`authenticate_message`]: what was wrong with the server's challenge, or why
/// it cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum NtlmError {
    /// The challenge does not parse (what was wrong is in the message).
    #[error("malformed NTLM challenge from the server: {0}")]
    Malformed(String),
    /// The challenge carries no target information, which an NTLMv2 response needs: the
    /// server accepts only NTLMv1 or LM.
    #[error(
        "the server's NTLM challenge has no target information: it accepts only NTLMv1/LM, \
         which serversync does not send (the server needs LmCompatibilityLevel 3 or higher)"
    )]
    NtlmV1Only,
    /// The server did not choose Unicode for the message's strings.
    #[error("the server's NTLM challenge does not choose Unicode strings (NEGOTIATE_UNICODE)")]
    NoUnicode,
    /// A field of the authenticate message would be longer than NTLM's 16-bit lengths allow.
    #[error("the {0} is too long for an NTLM message (over 65,535 bytes)")]
    TooLong(&'static str),
    /// The system's random number generator failed (for the client challenge).
    #[error("the system random number generator failed")]
    Random,
}

/// Who signs in: an account in a Windows domain, parsed from the user name an administrator
/// typed ([`NtlmIdentity::parse`]). The password redacts itself in `Debug`.
#[derive(Debug, Clone)]
pub struct NtlmIdentity {
    /// The NetBIOS or DNS domain (`CONTOSO`), or empty for a UPN or a local account.
    pub domain: String,
    /// The account name (`svc-sync`), or the whole UPN (`svc-sync@contoso.com`).
    pub user: String,
    password: Secret,
}

impl NtlmIdentity {
    /// Parses a user name in one of the forms Windows accepts:
    ///
    /// - `DOMAIN\user`: domain `DOMAIN`, user `user` (split at the first backslash);
    /// - `user@domain` (a UPN): the user is the whole UPN and the domain is empty, as Windows
    ///   sends it;
    /// - `user`: no domain.
    pub fn parse(username: &str, password: Secret) -> NtlmIdentity {
        let (domain, user) = match username.split_once('\\') {
            Some((domain, user)) => (domain.to_string(), user.to_string()),
            None => (String::new(), username.to_string()),
        };
        NtlmIdentity {
            domain,
            user,
            password,
        }
    }
}

/// The TLS channel binding of a server certificate: the application data of RFC 5929
/// `tls-server-end-point`, `"tls-server-end-point:"` followed by the certificate's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding(Vec<u8>);

impl ChannelBinding {
    /// The binding of the server's (leaf) certificate, DER-encoded. The hash function is the
    /// one of the certificate's signature algorithm: SHA-256 for MD5, SHA-1, or a signature
    /// without a hash or not recognised (Ed25519, or bytes that do not parse); SHA-384 and
    /// SHA-512 (also RSASSA-PSS with those) for certificates signed with them.
    pub fn tls_server_end_point(cert_der: &[u8]) -> ChannelBinding {
        let algorithm = match signature_hash(cert_der) {
            Some(CertHash::Sha384) => &aws_lc_rs::digest::SHA384,
            Some(CertHash::Sha512) => &aws_lc_rs::digest::SHA512,
            Some(CertHash::Sha224) => &aws_lc_rs::digest::SHA224,
            Some(CertHash::Sha256) | None => &aws_lc_rs::digest::SHA256,
        };
        let hash = aws_lc_rs::digest::digest(algorithm, cert_der);
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(hash.as_ref());
        ChannelBinding(data)
    }

    /// The application data of the binding (`tls-server-end-point:` + hash).
    pub fn application_data(&self) -> &[u8] {
        &self.0
    }

    /// The value of `MsvAvChannelBindings`: MD5 of the `gss_channel_bindings` structure
    /// (RFC 2744 §3.11 as serialised by SSPI and RFC 4121 §4.1.1.2): initiator address type
    /// and address, acceptor address type and address (all zero, empty), then the
    /// application data with its length, integers little-endian.
    fn av_value(&self) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update([0u8; 16]);
        md5.update((self.0.len() as u32).to_le_bytes());
        md5.update(&self.0);
        md5.finalize().into()
    }
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = b"tls-server-end-point:";
        match self.0.strip_prefix(prefix) {
            Some(hash) => write!(f, "ChannelBinding(tls-server-end-point:{})", hex(hash)),
            None => write!(f, "ChannelBinding({})", hex(&self.0)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- Negotiate flags (MS-NLMP §2.2.2.5) -------------------------------------------------

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const NEGOTIATE_OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_OEM_WORKSTATION_SUPPLIED: u32 = 0x0000_2000;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;

/// What the client asks for: Unicode (OEM as the required alternative), the target
/// information, NTLM with extended session security, and the version field. No signing,
/// sealing or key exchange (HTTP authentication needs none).
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_VERSION;

/// The flags of the authenticate message: those of the challenge that the client supports
/// (never OEM: the strings are Unicode).
const AUTHENTICATE_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION;

/// VERSION (MS-NLMP §2.2.2.10): Windows 10.0, NTLMSSP revision 15. Informational only.
const VERSION: [u8; 8] = [10, 0, 0, 0, 0, 0, 0, 0x0f];

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

// --- AV_PAIR ids (MS-NLMP §2.2.2.1) -------------------------------------------------------

const MSV_AV_EOL: u16 = 0x0000;
const MSV_AV_TIMESTAMP: u16 = 0x0007;
const MSV_AV_FLAGS: u16 = 0x0006;
const MSV_AV_TARGET_NAME: u16 = 0x0009;
const MSV_AV_CHANNEL_BINDINGS: u16 = 0x000a;
/// `MsvAvFlags` bit: the authenticate message carries a MIC.
const AV_FLAG_MIC: u32 = 0x0000_0002;

/// The NEGOTIATE message (type 1, MS-NLMP §2.2.1.1) to send first, as bytes (the caller
/// base64-encodes it). The workstation name goes in as OEM text (ASCII; other characters
/// become `?`), or is left out when empty. Deterministic: [`authenticate_message`] rebuilds
/// it from the same `workstation` for the MIC.
pub fn negotiate_message(workstation: &str) -> Vec<u8> {
    let workstation: Vec<u8> = workstation
        .chars()
        .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
        .take(u16::MAX as usize)
        .collect();
    let mut flags = CLIENT_FLAGS;
    if !workstation.is_empty() {
        flags |= NEGOTIATE_OEM_WORKSTATION_SUPPLIED;
    }
    // Header (32 bytes) and version (8): the payload starts at 40.
    let mut msg = Vec::with_capacity(40 + workstation.len());
    msg.extend_from_slice(SIGNATURE);
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    // DomainNameFields: none.
    push_field(&mut msg, 0, 40);
    // WorkstationFields.
    push_field(&mut msg, workstation.len() as u16, 40);
    msg.extend_from_slice(&VERSION);
    msg.extend_from_slice(&workstation);
    msg
}

/// The AUTHENTICATE message (type 3, MS-NLMP §2.2.1.3) answering the server's `challenge`
/// (type 2, the base64-decoded bytes), as bytes: the NTLMv2 response of `id` with the MIC,
/// and `MsvAvChannelBindings` when `binding` is given (required by Exchange's Extended
/// Protection; without it the pair is left out, so a server that requires it refuses).
/// `workstation` must be the one given to [`negotiate_message`].
pub fn authenticate_message(
    id: &NtlmIdentity,
    challenge: &[u8],
    binding: Option<&ChannelBinding>,
    workstation: &str,
) -> Result<Vec<u8>, NtlmError> {
    let parsed = Challenge::parse(challenge)?;
    let mut client_challenge = [0u8; 8];
    aws_lc_rs::rand::fill(&mut client_challenge).map_err(|_| NtlmError::Random)?;
    let time = parsed.timestamp.unwrap_or_else(filetime_now);
    build_authenticate(
        id,
        challenge,
        &parsed,
        binding,
        workstation,
        client_challenge,
        time,
    )
}

/// The parts of a CHALLENGE message (MS-NLMP §2.2.1.2) the response needs.
#[derive(Debug)]
struct Challenge {
    flags: u32,
    server_challenge: [u8; 8],
    /// The server's AV pairs, in order, without `MsvAvEOL`.
    av_pairs: Vec<(u16, Vec<u8>)>,
    /// `MsvAvTimestamp`, when the server sent one.
    timestamp: Option<u64>,
}

impl Challenge {
    fn parse(msg: &[u8]) -> Result<Challenge, NtlmError> {
        let malformed = |what: &str| NtlmError::Malformed(what.to_string());
        if msg.len() < 32 {
            return Err(NtlmError::Malformed(format!(
                "{} bytes, shorter than the 32-byte header",
                msg.len()
            )));
        }
        if &msg[..8] != SIGNATURE {
            return Err(malformed("it does not start with the NTLMSSP signature"));
        }
        let message_type = le_u32(msg, 8).ok_or_else(|| malformed("no message type"))?;
        if message_type != 2 {
            return Err(NtlmError::Malformed(format!(
                "message type {message_type}, not 2 (CHALLENGE)"
            )));
        }
        let flags = le_u32(msg, 20).ok_or_else(|| malformed("no flags"))?;
        let mut server_challenge = [0u8; 8];
        server_challenge.copy_from_slice(&msg[24..32]);
        // Servers that speak only NTLMv1 send the short 32-byte form, or no target info.
        if msg.len() < 48 || flags & NEGOTIATE_TARGET_INFO == 0 {
            return Err(NtlmError::NtlmV1Only);
        }
        let target_info = field(msg, 40)
            .map_err(|what| NtlmError::Malformed(format!("the target information field {what}")))?;
        if target_info.is_empty() {
            return Err(NtlmError::NtlmV1Only);
        }
        if flags & NEGOTIATE_UNICODE == 0 {
            return Err(NtlmError::NoUnicode);
        }
        let av_pairs = parse_av_pairs(target_info)?;
        let timestamp = match av_pairs.iter().find(|(id, _)| *id == MSV_AV_TIMESTAMP) {
            Some((_, value)) => {
                let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| {
                    NtlmError::Malformed(format!("MsvAvTimestamp has {} bytes, not 8", value.len()))
                })?;
                Some(u64::from_le_bytes(bytes))
            }
            None => None,
        };
        if let Some((_, value)) = av_pairs.iter().find(|(id, _)| *id == MSV_AV_FLAGS)
            && value.len() != 4
        {
            return Err(NtlmError::Malformed(format!(
                "MsvAvFlags has {} bytes, not 4",
                value.len()
            )));
        }
        Ok(Challenge {
            flags,
            server_challenge,
            av_pairs,
            timestamp,
        })
    }
}

/// The AV pairs of a target information field, up to `MsvAvEOL` (which must be there).
fn parse_av_pairs(mut data: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, NtlmError> {
    let mut pairs = Vec::new();
    loop {
        if data.len() < 4 {
            return Err(NtlmError::Malformed(format!(
                "the target information ends after {} AV pairs without MsvAvEOL",
                pairs.len()
            )));
        }
        let id = u16::from_le_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_le_bytes([data[2], data[3]]));
        let rest = &data[4..];
        if id == MSV_AV_EOL {
            return Ok(pairs);
        }
        let Some(value) = rest.get(..len) else {
            return Err(NtlmError::Malformed(format!(
                "AV pair {id:#06x} claims {len} bytes but {} remain",
                rest.len()
            )));
        };
        pairs.push((id, value.to_vec()));
        data = &rest[len..];
    }
}

/// The NTLMv2 part that does not depend on randomness or the clock, so the MS-NLMP test
/// vectors can drive it.
fn build_authenticate(
    id: &NtlmIdentity,
    challenge_bytes: &[u8],
    challenge: &Challenge,
    binding: Option<&ChannelBinding>,
    workstation: &str,
    client_challenge: [u8; 8],
    time: u64,
) -> Result<Vec<u8>, NtlmError> {
    // The AV pairs sent back: the server's, then MsvAvFlags with the MIC bit (the server's
    // own flags kept), the channel binding, and MsvAvEOL. Pairs the client owns are not
    // copied from the server.
    let mut av_flags = AV_FLAG_MIC;
    let mut target_info = Vec::new();
    for (av_id, value) in &challenge.av_pairs {
        match *av_id {
            MSV_AV_FLAGS => {
                av_flags |= le_u32(value, 0).unwrap_or(0);
            }
            MSV_AV_CHANNEL_BINDINGS | MSV_AV_TARGET_NAME => {}
            _ => push_av(&mut target_info, *av_id, value)?,
        }
    }
    push_av(&mut target_info, MSV_AV_FLAGS, &av_flags.to_le_bytes())?;
    if let Some(binding) = binding {
        push_av(
            &mut target_info,
            MSV_AV_CHANNEL_BINDINGS,
            &binding.av_value(),
        )?;
    }
    push_av(&mut target_info, MSV_AV_EOL, &[])?;

    let key = ntowfv2(&id.password, &id.user, &id.domain);
    let (nt_response, session_key) = ntlmv2_response(
        &key,
        &challenge.server_challenge,
        &client_challenge,
        time,
        &target_info,
    );
    // With a MIC, MS-NLMP §3.1.5.1.2 has the client send Z(24) as the LM response.
    let lm_response = [0u8; 24];

    let domain = utf16le(&id.domain);
    let user = utf16le(&id.user);
    let workstation_utf16 = utf16le(workstation);
    let fields: [(&[u8], &'static str); 5] = [
        (&lm_response, "LM response"),
        (
            &nt_response,
            "NTLMv2 response (with the server's target information)",
        ),
        (&domain, "domain name"),
        (&user, "user name"),
        (&workstation_utf16, "workstation name"),
    ];
    for (data, what) in &fields {
        if data.len() > usize::from(u16::MAX) {
            return Err(NtlmError::TooLong(what));
        }
    }

    // Header (64 bytes), version (8), MIC (16): the payload starts at 88.
    const PAYLOAD: usize = 88;
    let mut header = Vec::with_capacity(PAYLOAD);
    let mut payload = Vec::new();
    header.extend_from_slice(SIGNATURE);
    header.extend_from_slice(&3u32.to_le_bytes());
    for (data, what) in &fields {
        let offset =
            u32::try_from(PAYLOAD + payload.len()).map_err(|_| NtlmError::TooLong(what))?;
        push_field(&mut header, data.len() as u16, offset);
        payload.extend_from_slice(data);
    }
    // EncryptedRandomSessionKeyFields: none (no key exchange).
    let end = u32::try_from(PAYLOAD + payload.len()).map_err(|_| NtlmError::TooLong("message"))?;
    push_field(&mut header, 0, end);
    let flags = challenge.flags & AUTHENTICATE_FLAGS;
    header.extend_from_slice(&flags.to_le_bytes());
    if flags & NEGOTIATE_VERSION != 0 {
        header.extend_from_slice(&VERSION);
    } else {
        header.extend_from_slice(&[0; 8]);
    }
    header.extend_from_slice(&[0; 16]); // MIC, filled in below.
    debug_assert_eq!(header.len(), PAYLOAD);
    let mut msg = header;
    msg.extend_from_slice(&payload);

    // MIC = HMAC_MD5(ExportedSessionKey, NEGOTIATE || CHALLENGE || AUTHENTICATE with a zero
    // MIC) (MS-NLMP §3.1.5.1.2). Without key exchange the exported session key is the
    // session base key.
    let mut mac = hmac_md5_init(&session_key);
    mac.update(&negotiate_message(workstation));
    mac.update(challenge_bytes);
    mac.update(&msg);
    let mic: [u8; 16] = mac.finalize().into_bytes().into();
    msg[72..88].copy_from_slice(&mic);
    Ok(msg)
}

/// NTOWFv2 (MS-NLMP §3.3.2): HMAC_MD5(MD4(UNICODE(password)), UNICODE(Uppercase(user) +
/// domain)). The domain keeps its case.
fn ntowfv2(password: &Secret, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16le(password.expose())).into();
    let mut mac = hmac_md5_init(&nt_hash);
    mac.update(&utf16le(&uppercase(user)));
    mac.update(&utf16le(domain));
    mac.finalize().into_bytes().into()
}

/// The NTLMv2 response (NTProofStr followed by the client's blob) and the session base key
/// (MS-NLMP §3.3.2). `target_info` is the AV pair list sent, ending in `MsvAvEOL`.
fn ntlmv2_response(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
) -> (Vec<u8>, [u8; 16]) {
    // temp = Responserversion, HiResponserversion, Z(6), Time, ClientChallenge, Z(4),
    // ServerName, Z(4)
    let mut temp = Vec::with_capacity(28 + target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&time.to_le_bytes());
    temp.extend_from_slice(client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0; 4]);
    let mut mac = hmac_md5_init(key);
    mac.update(server_challenge);
    mac.update(&temp);
    let nt_proof: [u8; 16] = mac.finalize().into_bytes().into();
    let mut mac = hmac_md5_init(key);
    mac.update(&nt_proof);
    let session_base_key: [u8; 16] = mac.finalize().into_bytes().into();
    let mut response = nt_proof.to_vec();
    response.extend_from_slice(&temp);
    (response, session_base_key)
}

fn hmac_md5_init(key: &[u8]) -> Hmac<Md5> {
    // HMAC takes keys of any length; this cannot fail.
    <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// Upper case as Windows does it for NTOWFv2: character by character, a character whose
/// upper case is more than one character (`ß`) staying as it is.
fn uppercase(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// A security buffer descriptor: length, maximum length (the same), offset.
fn push_field(out: &mut Vec<u8>, len: u16, offset: u32) {
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
}

fn push_av(out: &mut Vec<u8>, id: u16, value: &[u8]) -> Result<(), NtlmError> {
    let len = u16::try_from(value.len()).map_err(|_| NtlmError::TooLong("AV pair"))?;
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The bytes a security buffer descriptor at `at` points to, or what is wrong with it.
fn field(msg: &[u8], at: usize) -> Result<&[u8], String> {
    let desc = msg.get(at..at + 8).ok_or("is cut off")?;
    let len = usize::from(u16::from_le_bytes([desc[0], desc[1]]));
    let offset = u32::from_le_bytes([desc[4], desc[5], desc[6], desc[7]]) as usize;
    if len == 0 {
        return Ok(&[]);
    }
    offset
        .checked_add(len)
        .and_then(|end| msg.get(offset..end))
        .ok_or_else(|| {
            format!(
                "({len} bytes at offset {offset}) runs past the end of the {}-byte message",
                msg.len()
            )
        })
}

/// Now as a Windows FILETIME: 100-nanosecond intervals since 1601-01-01 UTC.
fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME
        + since_unix.as_secs() * 10_000_000
        + u64::from(since_unix.subsec_nanos() / 100)
}

// --- The hash of a certificate's signature (RFC 5929 §4.1) --------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash function RFC 5929 prescribes for `cert_der`, read from its outer
/// `signatureAlgorithm`: `None` when the certificate does not parse or the algorithm is not
/// recognised. MD5 and SHA-1 give SHA-256.
fn signature_hash(cert_der: &[u8]) -> Option<CertHash> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … }
    let (tag, cert, _) = der(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der(cert)?; // tbsCertificate
    let (tag, algorithm, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY }
    let (tag, oid, params) = der(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
    const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
    if let Some(&[n]) = oid.strip_prefix(RSA) {
        return match n {
            2..=5 => Some(CertHash::Sha256), // MD2, MD4, MD5, SHA-1 with RSA
            11 => Some(CertHash::Sha256),
            12 => Some(CertHash::Sha384),
            13 => Some(CertHash::Sha512),
            14 => Some(CertHash::Sha224),
            10 => pss_hash(params),
            _ => None,
        };
    }
    if let Some(&[n]) = oid.strip_prefix(ECDSA_SHA2) {
        return match n {
            1 => Some(CertHash::Sha224),
            2 => Some(CertHash::Sha256),
            3 => Some(CertHash::Sha384),
            4 => Some(CertHash::Sha512),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Some(CertHash::Sha256);
    }
    if let Some(&[n]) = oid.strip_prefix(NIST_SIG) {
        // dsa-with-sha224/256/384/512 (1–4), ecdsa-with-sha3/rsa-with-sha3 are not mapped.
        return match n {
            1 => Some(CertHash::Sha224),
            2 => Some(CertHash::Sha256),
            3 => Some(CertHash::Sha384),
            4 => Some(CertHash::Sha512),
            _ => None,
        };
    }
    None
}

/// The hash of RSASSA-PSS parameters (RFC 4055): `SEQUENCE { [0] hashAlgorithm
/// DEFAULT sha1, … }`; SHA-1 gives SHA-256.
fn pss_hash(params: &[u8]) -> Option<CertHash> {
    let (tag, fields, _) = der(params)?;
    if tag != 0x30 {
        return None;
    }
    let Some((0xa0, hash_algorithm, _)) = der(fields) else {
        return Some(CertHash::Sha256); // default SHA-1
    };
    let (tag, algorithm, _) = der(hash_algorithm)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a]; // 1.3.14.3.2.26
    const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02]; // 2.16.840.1.101.3.4.2
    if oid == SHA1 {
        return Some(CertHash::Sha256);
    }
    match oid.strip_prefix(NIST_HASH) {
        Some(&[1]) => Some(CertHash::Sha256),
        Some(&[2]) => Some(CertHash::Sha384),
        Some(&[3]) => Some(CertHash::Sha512),
        Some(&[4]) => Some(CertHash::Sha224),
        _ => None,
    }
}

/// One DER element at the start of `data`: (tag, contents, what follows). Single-byte tags
/// and definite lengths of up to four bytes; `None` for anything else or when cut off.
fn der(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = data.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let contents = data.get(header..end)?;
    Some((tag, contents, &data[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn cert(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/ntlm/{name}.der", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    // MS-NLMP §4.2.4: User "User", UserDom "Domain", Passwd "Password", ServerChallenge
    // 0123456789abcdef, ClientChallenge aa×8, Time 0, the server's AV pairs
    // MsvAvNbDomainName "Domain" and MsvAvNbComputerName "Server".

    #[test]
    fn ntowfv2_matches_ms_nlmp_4_2_4_1_1() {
        let key = ntowfv2(&Secret::new("Password"), "User", "Domain");
        assert_eq!(
            key.to_vec(),
            unhex("0c 86 8a 40 3b fd 7a 93 a3 00 1e f2 2e f0 2e 3f")
        );
    }

    #[test]
    fn ntlmv2_response_and_session_key_match_ms_nlmp_4_2_4() {
        let key = ntowfv2(&Secret::new("Password"), "User", "Domain");
        let av_pairs = unhex(
            "02 00 0c 00 44 00 6f 00 6d 00 61 00 69 00 6e 00
             01 00 0c 00 53 00 65 00 72 00 76 00 65 00 72 00 00 00 00 00",
        );
        let (response, session_key) = ntlmv2_response(
            &key,
            &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            &[0xaa; 8],
            0,
            &av_pairs,
        );
        // §4.2.4.2.2: NTProofStr.
        assert_eq!(
            response[..16].to_vec(),
            unhex("68 cd 0a b8 51 e5 1c 96 aa bc 92 7b eb ef 6a 1c")
        );
        // §4.2.4.2.2: temp, which follows it.
        assert_eq!(
            response[16..].to_vec(),
            unhex(
                "01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 aa aa aa aa aa aa aa aa
                 00 00 00 00 02 00 0c 00 44 00 6f 00 6d 00 61 00 69 00 6e 00 01 00 0c 00
                 53 00 65 00 72 00 76 00 65 00 72 00 00 00 00 00 00 00 00 00"
            )
        );
        // §4.2.4.1.2: session base key.
        assert_eq!(
            session_key.to_vec(),
            unhex("8d e4 0c ca db c1 4a 82 f1 5c b0 ad 0d e9 5c a3")
        );
    }

    /// The CHALLENGE message of MS-NLMP §4.2.4.3 (flags, server challenge, target name
    /// "Server", AV pairs "Domain"/"Server").
    fn spec_challenge() -> Vec<u8> {
        unhex(
            "4e 54 4c 4d 53 53 50 00 02 00 00 00 0c 00 0c 00 38 00 00 00 33 82 8a e2
             01 23 45 67 89 ab cd ef 00 00 00 00 00 00 00 00 24 00 24 00 44 00 00 00
             06 00 70 17 00 00 00 0f 53 00 65 00 72 00 76 00 65 00 72 00 02 00 0c 00
             44 00 6f 00 6d 00 61 00 69 00 6e 00 01 00 0c 00 53 00 65 00 72 00 76 00
             65 00 72 00 00 00 00 00",
        )
    }

    #[test]
    fn authenticate_message_from_the_spec_challenge() {
        let challenge = spec_challenge();
        let parsed = Challenge::parse(&challenge).unwrap();
        assert_eq!(
            parsed.server_challenge,
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        assert_eq!(parsed.av_pairs.len(), 2);
        assert_eq!(parsed.timestamp, None);
        let id = NtlmIdentity::parse("Domain\\User", Secret::new("Password"));
        let binding = ChannelBinding::tls_server_end_point(&cert("rsa-sha256"));
        let msg = build_authenticate(
            &id,
            &challenge,
            &parsed,
            Some(&binding),
            "COMPUTER",
            [0xaa; 8],
            0,
        )
        .unwrap();
        assert_eq!(&msg[..12], b"NTLMSSP\0\x03\0\0\0");
        let field = |at: usize| field(&msg, at).unwrap();
        assert_eq!(field(12), &[0u8; 24]);
        assert_eq!(field(28), utf16le("Domain"));
        assert_eq!(field(36), utf16le("User"));
        assert_eq!(field(44), utf16le("COMPUTER"));
        assert_eq!(field(52), b"");
        // The AV pairs sent: the server's, MsvAvFlags = MIC, the channel binding, EOL.
        let nt = field(20);
        let mut expected = unhex(
            "02 00 0c 00 44 00 6f 00 6d 00 61 00 69 00 6e 00
             01 00 0c 00 53 00 65 00 72 00 76 00 65 00 72 00
             06 00 04 00 02 00 00 00 0a 00 10 00",
        );
        expected.extend_from_slice(&binding.av_value());
        expected.extend_from_slice(&[0; 8]); // MsvAvEOL, Z(4)
        assert_eq!(&nt[44..], expected.as_slice());
        // NTProofStr over those pairs, and the MIC with the session base key.
        let key = ntowfv2(&Secret::new("Password"), "User", "Domain");
        let (response, session_key) = ntlmv2_response(
            &key,
            &parsed.server_challenge,
            &[0xaa; 8],
            0,
            &nt[44..nt.len() - 4],
        );
        assert_eq!(nt, response.as_slice());
        let mut zeroed = msg.clone();
        zeroed[72..88].fill(0);
        let mut mac = hmac_md5_init(&session_key);
        mac.update(&negotiate_message("COMPUTER"));
        mac.update(&challenge);
        mac.update(&zeroed);
        let mic: [u8; 16] = mac.finalize().into_bytes().into();
        assert_eq!(&msg[72..88], &mic);
        // Flags: the challenge's (e2 8a 82 33) less those not asked for: KEY_EXCH, 56, 128,
        // SIGN, SEAL, OEM, TARGET_TYPE_SERVER.
        let flags = le_u32(&msg, 60).unwrap();
        assert_eq!(flags, 0xe28a_8233 & AUTHENTICATE_FLAGS);
        assert_eq!(flags & 0xc000_0030, 0);
    }

    #[test]
    fn without_binding_the_av_pair_is_left_out_and_the_server_timestamp_is_used() {
        // The spec challenge with an MsvAvTimestamp before EOL.
        let mut challenge = spec_challenge();
        challenge.truncate(challenge.len() - 4);
        challenge.extend_from_slice(&unhex("07 00 08 00 01 02 03 04 05 06 07 08 00 00 00 00"));
        challenge[40] += 12; // target info length
        challenge[42] += 12;
        let parsed = Challenge::parse(&challenge).unwrap();
        assert_eq!(parsed.timestamp, Some(0x0807_0605_0403_0201));
        let id = NtlmIdentity::parse("svc", Secret::new("pw"));
        let msg = build_authenticate(&id, &challenge, &parsed, None, "", [1; 8], 5).unwrap();
        let nt = field(&msg, 20).unwrap();
        assert!(!nt.windows(4).any(|w| w == [0x0a, 0, 0x10, 0]));
        assert!(nt.ends_with(&unhex("06 00 04 00 02 00 00 00 00 00 00 00 00 00 00 00")));
        assert_eq!(field(&msg, 28).unwrap(), b"");
        assert_eq!(field(&msg, 44).unwrap(), b"");
        // The public entry point takes the server's timestamp, not the clock.
        let msg = authenticate_message(&id, &challenge, None, "").unwrap();
        let nt = field(&msg, 20).unwrap();
        assert_eq!(&nt[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn server_msv_av_flags_are_kept_with_the_mic_bit() {
        let mut challenge = spec_challenge();
        challenge.truncate(challenge.len() - 4);
        challenge.extend_from_slice(&unhex("06 00 04 00 01 00 00 00 00 00 00 00"));
        challenge[40] += 8;
        challenge[42] += 8;
        let parsed = Challenge::parse(&challenge).unwrap();
        let id = NtlmIdentity::parse("svc", Secret::new("pw"));
        let msg = build_authenticate(&id, &challenge, &parsed, None, "WS", [1; 8], 5).unwrap();
        let nt = field(&msg, 20).unwrap();
        assert!(nt.ends_with(&unhex("06 00 04 00 03 00 00 00 00 00 00 00 00 00 00 00")));
        assert_eq!(nt.windows(2).filter(|w| *w == [0x06, 0x00]).count(), 1);
    }

    #[test]
    fn negotiate_message_layout() {
        let msg = negotiate_message("SYNC01");
        assert_eq!(&msg[..12], b"NTLMSSP\0\x01\0\0\0");
        let flags = le_u32(&msg, 12).unwrap();
        assert_eq!(flags, CLIENT_FLAGS | NEGOTIATE_OEM_WORKSTATION_SUPPLIED);
        assert_eq!(field(&msg, 16).unwrap(), b"");
        assert_eq!(field(&msg, 24).unwrap(), b"SYNC01");
        assert_eq!(&msg[32..40], &VERSION);
        assert_eq!(negotiate_message("").len(), 40);
        assert_eq!(le_u32(&negotiate_message(""), 12), Some(CLIENT_FLAGS));
        assert_eq!(field(&negotiate_message("Zürich"), 24).unwrap(), b"Z?rich");
    }

    #[test]
    fn identities() {
        let id = NtlmIdentity::parse("CONTOSO\\svc-sync", Secret::new("pw"));
        assert_eq!(
            (id.domain.as_str(), id.user.as_str()),
            ("CONTOSO", "svc-sync")
        );
        let id = NtlmIdentity::parse("svc-sync@contoso.com", Secret::new("pw"));
        assert_eq!(
            (id.domain.as_str(), id.user.as_str()),
            ("", "svc-sync@contoso.com")
        );
        let id = NtlmIdentity::parse("svc-sync", Secret::new("pw"));
        assert_eq!((id.domain.as_str(), id.user.as_str()), ("", "svc-sync"));
        let id = NtlmIdentity::parse("contoso.com\\svc@x", Secret::new("hunter2"));
        assert_eq!(
            (id.domain.as_str(), id.user.as_str()),
            ("contoso.com", "svc@x")
        );
        assert!(!format!("{id:?}").contains("hunter2"));
        assert_eq!(uppercase("straße"), "STRAßE");
    }

    #[test]
    fn channel_binding_of_known_certificates() {
        // Expected hashes from `openssl dgst -sha256|-sha384|-sha512` of the DER files.
        let cases = [
            (
                "rsa-sha256",
                "b28aaa0cae12003b635eeeb5b5039f80a8648d31a07a77d311cb1bfb1e413778",
            ),
            // SHA-1 signature: SHA-256.
            (
                "rsa-sha1",
                "71c4394564f9f68a1058c24c86e1af84ec9bf51cf2cb0ba8aa1471b1e84d6f16",
            ),
            (
                "ecdsa-sha384",
                "cccea84a531d4eb3164153b9fcf209c607fb986c72e56ef0ad1fd920de360b94\
                 aa1a929efa3589f7b043207eec3fa723",
            ),
            (
                "rsa-pss-sha512",
                "7d197f333d5cfaa9080c966e783eb29aaaee4039ca0430138078a463f250fd3c\
                 0da38dcee820e75e5846e1b2dba0e7fab3db34798aab8dc23920b0a4e042a1a6",
            ),
        ];
        for (name, hash) in cases {
            let binding = ChannelBinding::tls_server_end_point(&cert(name));
            let mut expected = b"tls-server-end-point:".to_vec();
            expected.extend_from_slice(&unhex(hash));
            assert_eq!(binding.application_data(), expected.as_slice(), "{name}");
        }
        // Not a certificate: SHA-256 of the bytes.
        let binding = ChannelBinding::tls_server_end_point(b"garbage");
        assert_eq!(binding.application_data().len(), 21 + 32);
    }

    #[test]
    fn channel_binding_av_value_is_md5_of_gss_channel_bindings() {
        let binding = ChannelBinding(b"tls-server-end-point:abc".to_vec());
        let mut gss = vec![0u8; 16];
        gss.extend_from_slice(&24u32.to_le_bytes());
        gss.extend_from_slice(b"tls-server-end-point:abc");
        let expected: [u8; 16] = Md5::digest(&gss).into();
        assert_eq!(binding.av_value(), expected);
    }

    #[test]
    fn hostile_challenges_are_errors_not_panics() {
        let id = NtlmIdentity::parse("CONTOSO\\svc-sync", Secret::new("pw"));
        let good = spec_challenge();
        assert!(authenticate_message(&id, &good, None, "WS").is_ok());
        // Every truncation.
        for len in 0..good.len() {
            let r = authenticate_message(&id, &good[..len], None, "WS");
            assert!(r.is_err(), "truncated to {len} accepted");
        }
        // Every single-byte corruption, with a few values.
        for at in 0..good.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = authenticate_message(&id, &bad, None, "WS");
            }
        }
        // Offsets and lengths pointing anywhere.
        for (len, offset) in [
            (0xffff, 0x44),
            (0x24, 0xffff_ffff),
            (0x24, 0xffff_fff0),
            (4, 0x60),
        ] {
            let mut bad = good.clone();
            bad[40..42].copy_from_slice(&u16::to_le_bytes(len));
            bad[44..48].copy_from_slice(&u32::to_le_bytes(offset));
            assert!(matches!(
                authenticate_message(&id, &bad, None, "WS"),
                Err(NtlmError::Malformed(_))
            ));
        }
        // Pseudo-random garbage behind a valid header.
        let mut state = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut bad = good[..48].to_vec();
            for _ in 0..(state % 64) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                bad.push(state as u8);
            }
            bad[40..42].copy_from_slice(&u16::to_le_bytes((state % 80) as u16));
            bad[44..48].copy_from_slice(&u32::to_le_bytes(state % 120));
            let _ = authenticate_message(&id, &bad, None, "WS");
        }
        assert!(matches!(
            authenticate_message(&id, b"NTLMSSP\0\x01\0\0\0", None, "WS"),
            Err(NtlmError::Malformed(_))
        ));
    }

    #[test]
    fn ntlmv1_only_and_oem_only_challenges_are_refused() {
        let id = NtlmIdentity::parse("CONTOSO\\svc-sync", Secret::new("pw"));
        let good = spec_challenge();
        // The 32-byte form without target information.
        assert!(matches!(
            authenticate_message(&id, &good[..32], None, "WS"),
            Err(NtlmError::NtlmV1Only)
        ));
        // NEGOTIATE_TARGET_INFO cleared.
        let mut v1 = good.clone();
        v1[22] &= !0x80;
        assert!(matches!(
            authenticate_message(&id, &v1, None, "WS"),
            Err(NtlmError::NtlmV1Only)
        ));
        let mut oem = good.clone();
        oem[20] &= !0x01;
        assert!(matches!(
            authenticate_message(&id, &oem, None, "WS"),
            Err(NtlmError::NoUnicode)
        ));
    }
}
