//! An NTLMv2 acceptor per [MS-NLMP]: NEGOTIATE → CHALLENGE → AUTHENTICATE, verified with
//! NTOWFv2 / NTProofStr, the MIC, and the channel binding hash (MsvAvChannelBindings, the MD5
//! of a `gss_channel_bindings` struct carrying `tls-server-end-point:` + SHA-256 of the server
//! certificate, [RFC 5929] / [MS-NLMP] 3.1.5.2.2). Also a matching client (for the double's own
//! tests; an independent client, pyspnego, checks the acceptor from Python).
//!
//! Every length and offset of a hostile message is bounds-checked: a malformed message is an
//! error, never a panic.

use hmac::{Hmac, KeyInit, Mac};
use md4::Md4;
use md5::{Digest, Md5};

type HmacMd5 = Hmac<Md5>;

/// `NTLMSSP\0`.
pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NTLMSSP_NEGOTIATE_UNICODE.
pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
/// NTLMSSP_REQUEST_TARGET.
pub const REQUEST_TARGET: u32 = 0x0000_0004;
/// NTLMSSP_NEGOTIATE_SIGN.
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
/// NTLMSSP_NEGOTIATE_SEAL.
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
/// NTLMSSP_NEGOTIATE_NTLM.
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
/// NTLMSSP_NEGOTIATE_ALWAYS_SIGN.
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
/// NTLMSSP_TARGET_TYPE_DOMAIN.
pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
/// NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY.
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
/// NTLMSSP_NEGOTIATE_TARGET_INFO.
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
/// NTLMSSP_NEGOTIATE_VERSION.
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
/// NTLMSSP_NEGOTIATE_128.
pub const NEGOTIATE_128: u32 = 0x2000_0000;
/// NTLMSSP_NEGOTIATE_KEY_EXCH.
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
/// NTLMSSP_NEGOTIATE_56.
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// AV pair ids ([MS-NLMP] 2.2.2.1).
pub mod av {
    /// MsvAvEOL.
    pub const EOL: u16 = 0;
    /// MsvAvNbComputerName.
    pub const NB_COMPUTER_NAME: u16 = 1;
    /// MsvAvNbDomainName.
    pub const NB_DOMAIN_NAME: u16 = 2;
    /// MsvAvDnsComputerName.
    pub const DNS_COMPUTER_NAME: u16 = 3;
    /// MsvAvDnsDomainName.
    pub const DNS_DOMAIN_NAME: u16 = 4;
    /// MsvAvFlags.
    pub const FLAGS: u16 = 6;
    /// MsvAvTimestamp.
    pub const TIMESTAMP: u16 = 7;
    /// MsvAvTargetName.
    pub const TARGET_NAME: u16 = 9;
    /// MsvAvChannelBindings.
    pub const CHANNEL_BINDINGS: u16 = 0x000A;
}

/// Why an AUTHENTICATE (or an earlier leg) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtlmError {
    /// Not an NTLM message of the expected type, or a field out of bounds.
    Malformed(&'static str),
    /// No account of that name.
    UnknownUser(String),
    /// NTProofStr did not match (wrong password).
    BadResponse,
    /// The MIC did not match.
    BadMic,
    /// The channel binding hash was absent (when required) or wrong.
    BadChannelBinding,
}

impl std::fmt::Display for NtlmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NtlmError::Malformed(what) => write!(f, "malformed NTLM message: {what}"),
            NtlmError::UnknownUser(u) => write!(f, "unknown user {u}"),
            NtlmError::BadResponse => f.write_str("NTLMv2 response does not verify"),
            NtlmError::BadMic => f.write_str("MIC does not verify"),
            NtlmError::BadChannelBinding => f.write_str("channel binding missing or wrong"),
        }
    }
}

impl std::error::Error for NtlmError {}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The payload a security buffer (len u16, maxlen u16, offset u32) at `at` points to.
fn field(b: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16_at(b, at)?);
    let off = usize::try_from(u32_at(b, at + 4)?).ok()?;
    b.get(off..off.checked_add(len)?)
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length; the fallback arm is unreachable.
    let Ok(mut mac) = <HmacMd5 as KeyInit>::new_from_slice(key) else {
        return [0; 16];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: HMAC_MD5(MD4(UNICODE(password)), UNICODE(UPPER(user) + domain)).
pub fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16(password)).into();
    hmac_md5(&nt_hash, &[&utf16(&user.to_uppercase()), &utf16(domain)])
}

/// RC4, for the exchanged session key (KEY_EXCH).
fn rc4(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s: [u8; 256] = std::array::from_fn(|i| i as u8);
    let mut j = 0u8;
    for i in 0..256 {
        j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len().max(1)]);
        s.swap(i, usize::from(j));
    }
    let (mut i, mut j) = (0u8, 0u8);
    data.iter()
        .map(|b| {
            i = i.wrapping_add(1);
            j = j.wrapping_add(s[usize::from(i)]);
            s.swap(usize::from(i), usize::from(j));
            b ^ s[usize::from(s[usize::from(i)].wrapping_add(s[usize::from(j)]))]
        })
        .collect()
}

/// The MsvAvChannelBindings value for a TLS server certificate: MD5 of the
/// `gss_channel_bindings` struct (initiator and acceptor address type and length all zero,
/// then the length and bytes of `"tls-server-end-point:" + SHA-256(certificate DER)`).
pub fn channel_bindings_hash(server_cert_der: &[u8]) -> [u8; 16] {
    let mut app = b"tls-server-end-point:".to_vec();
    app.extend_from_slice(&sha2::Sha256::digest(server_cert_der));
    let mut st = vec![0u8; 16];
    st.extend_from_slice(&(app.len() as u32).to_le_bytes());
    st.extend_from_slice(&app);
    Md5::digest(&st).into()
}

/// Windows FILETIME now (100 ns since 1601-01-01).
pub fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() / 100)
        .unwrap_or(0);
    u64::try_from(unix).unwrap_or(0) + 116_444_736_000_000_000
}

/// Parses AV pairs up to MsvAvEOL.
pub fn av_pairs(mut b: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    loop {
        let id = u16_at(b, 0)?;
        let len = usize::from(u16_at(b, 2)?);
        if id == av::EOL {
            return Some(out);
        }
        out.push((id, b.get(4..4 + len)?.to_vec()));
        b = b.get(4 + len..)?;
    }
}

fn write_av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// How a server names itself in the CHALLENGE.
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// NetBIOS domain, e.g. `CONTOSO`.
    pub nb_domain: String,
    /// NetBIOS computer name, e.g. `EXCH01`.
    pub nb_computer: String,
    /// DNS domain, e.g. `example.test`.
    pub dns_domain: String,
    /// DNS computer name, e.g. `exch01.example.test`.
    pub dns_computer: String,
}

/// Reads the NegotiateFlags of a NEGOTIATE message.
pub fn parse_negotiate(msg: &[u8]) -> Result<u32, NtlmError> {
    if msg.get(..8) != Some(SIGNATURE) || u32_at(msg, 8) != Some(1) {
        return Err(NtlmError::Malformed("not a NEGOTIATE message"));
    }
    u32_at(msg, 12).ok_or(NtlmError::Malformed("short NEGOTIATE"))
}

/// Builds a CHALLENGE answering NEGOTIATE flags `client_flags` with `server_challenge`.
pub fn challenge(client_flags: u32, server_challenge: [u8; 8], names: &ServerNames) -> Vec<u8> {
    let flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION
        | (client_flags
            & (NEGOTIATE_SIGN
                | NEGOTIATE_SEAL
                | NEGOTIATE_128
                | NEGOTIATE_56
                | NEGOTIATE_KEY_EXCH));
    let target_name = utf16(&names.nb_domain);
    let mut info = Vec::new();
    write_av(&mut info, av::NB_DOMAIN_NAME, &utf16(&names.nb_domain));
    write_av(&mut info, av::NB_COMPUTER_NAME, &utf16(&names.nb_computer));
    write_av(&mut info, av::DNS_DOMAIN_NAME, &utf16(&names.dns_domain));
    write_av(
        &mut info,
        av::DNS_COMPUTER_NAME,
        &utf16(&names.dns_computer),
    );
    write_av(&mut info, av::TIMESTAMP, &filetime_now().to_le_bytes());
    write_av(&mut info, av::EOL, &[]);
    const HEADER: usize = 56;
    let mut m = Vec::with_capacity(HEADER + target_name.len() + info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(HEADER as u32).to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&((HEADER + target_name.len()) as u32).to_le_bytes());
    // Version: Windows 10.0 build 17763 (Server 2019), NTLMSSP_REVISION_W2K3.
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&info);
    m
}

/// Who an AUTHENTICATE message claims to be (read before the password is looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// DomainName as sent (may be empty, e.g. for a UPN).
    pub domain: String,
    /// UserName as sent.
    pub user: String,
    /// Workstation as sent.
    pub workstation: String,
}

/// Reads the names in an AUTHENTICATE message.
pub fn claimed(msg: &[u8]) -> Result<Claimed, NtlmError> {
    if msg.get(..8) != Some(SIGNATURE) || u32_at(msg, 8) != Some(3) {
        return Err(NtlmError::Malformed("not an AUTHENTICATE message"));
    }
    let flags = u32_at(msg, 60).ok_or(NtlmError::Malformed("short AUTHENTICATE"))?;
    let text = |at| -> Result<String, NtlmError> {
        let b = field(msg, at).ok_or(NtlmError::Malformed("field out of bounds"))?;
        Ok(if flags & NEGOTIATE_UNICODE != 0 {
            from_utf16(b)
        } else {
            String::from_utf8_lossy(b).into_owned()
        })
    };
    Ok(Claimed {
        domain: text(28)?,
        user: text(36)?,
        workstation: text(44)?,
    })
}

/// What the acceptor demands of the channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// MsvAvChannelBindings must be present and equal to this hash.
    Required([u8; 16]),
    /// If present and not all zero, it must equal this hash.
    Optional([u8; 16]),
    /// Not looked at.
    Ignored,
}

/// Verifies an AUTHENTICATE against the password of the claimed user: the NTLMv2 response
/// (NTProofStr), the MIC when the client says it sent one (MsvAvFlags bit 0x2), and the channel
/// binding. `negotiate` and `challenge` are the earlier legs on the same connection.
pub fn verify(
    negotiate: &[u8],
    challenge_msg: &[u8],
    authenticate: &[u8],
    password: &str,
    binding: Binding,
) -> Result<Claimed, NtlmError> {
    let who = claimed(authenticate)?;
    let server_challenge: [u8; 8] = challenge_msg
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(NtlmError::Malformed("challenge"))?;
    let nt = field(authenticate, 20).ok_or(NtlmError::Malformed("NtChallengeResponse"))?;
    if nt.len() < 16 + 28 {
        // 24-byte NTLMv1 responses (and anything else short) are not NTLMv2: refused, as a
        // server with LmCompatibilityLevel 5 does.
        return Err(NtlmError::BadResponse);
    }
    let (proof, blob) = nt.split_at(16);
    if blob.first() != Some(&1) || blob.get(1) != Some(&1) {
        return Err(NtlmError::Malformed("NTLMv2 client challenge version"));
    }
    let key = ntowf_v2(password, &who.user, &who.domain);
    let expected = hmac_md5(&key, &[&server_challenge, blob]);
    if expected != proof {
        return Err(NtlmError::BadResponse);
    }
    let pairs = blob
        .get(28..)
        .and_then(av_pairs)
        .ok_or(NtlmError::Malformed("AV pairs in the NTLMv2 response"))?;
    let av_value = |id| {
        pairs
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_slice())
    };
    let mic_present = av_value(av::FLAGS)
        .and_then(|v| u32_at(v, 0))
        .is_some_and(|f| f & 0x2 != 0);
    if mic_present {
        let flags = u32_at(authenticate, 60).unwrap_or(0);
        let session_base = hmac_md5(&key, &[proof]);
        let exported = if flags & NEGOTIATE_KEY_EXCH != 0 {
            let enc = field(authenticate, 52).ok_or(NtlmError::Malformed("session key"))?;
            rc4(&session_base, enc)
        } else {
            session_base.to_vec()
        };
        let mic = authenticate
            .get(72..88)
            .ok_or(NtlmError::Malformed("MIC"))?
            .to_vec();
        let mut zeroed = authenticate.to_vec();
        zeroed[72..88].fill(0);
        if hmac_md5(&exported, &[negotiate, challenge_msg, &zeroed]).as_slice() != mic {
            return Err(NtlmError::BadMic);
        }
    }
    let sent = av_value(av::CHANNEL_BINDINGS);
    match binding {
        Binding::Ignored => {}
        Binding::Required(want) => {
            if sent != Some(want.as_slice()) {
                return Err(NtlmError::BadChannelBinding);
            }
        }
        Binding::Optional(want) => {
            if let Some(v) = sent
                && v.iter().any(|b| *b != 0)
                && v != want.as_slice()
            {
                return Err(NtlmError::BadChannelBinding);
            }
        }
    }
    Ok(who)
}

/// A NEGOTIATE message as a modern client sends it.
pub fn client_negotiate() -> Vec<u8> {
    let flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_VERSION
        | NEGOTIATE_128
        | NEGOTIATE_56;
    let mut m = SIGNATURE.to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&[0; 16]);
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    m
}

/// An NTLMv2 AUTHENTICATE answering `challenge_msg` (no MIC, no key exchange), with the
/// channel binding hash `cbt` if given. For tests of the acceptor.
pub fn client_authenticate(
    challenge_msg: &[u8],
    domain: &str,
    user: &str,
    password: &str,
    cbt: Option<[u8; 16]>,
) -> Result<Vec<u8>, NtlmError> {
    build_authenticate(None, challenge_msg, domain, user, password, cbt)
}

/// Like [`client_authenticate`], but as modern clients do: with a random session key exchanged
/// under RC4 (NEGOTIATE_KEY_EXCH) and a MIC over all three messages (MsvAvFlags 0x2).
pub fn client_authenticate_with_mic(
    negotiate: &[u8],
    challenge_msg: &[u8],
    domain: &str,
    user: &str,
    password: &str,
    cbt: Option<[u8; 16]>,
) -> Result<Vec<u8>, NtlmError> {
    build_authenticate(Some(negotiate), challenge_msg, domain, user, password, cbt)
}

fn build_authenticate(
    mic_over: Option<&[u8]>,
    challenge_msg: &[u8],
    domain: &str,
    user: &str,
    password: &str,
    cbt: Option<[u8; 16]>,
) -> Result<Vec<u8>, NtlmError> {
    if challenge_msg.get(..8) != Some(SIGNATURE) || u32_at(challenge_msg, 8) != Some(2) {
        return Err(NtlmError::Malformed("not a CHALLENGE message"));
    }
    let server_challenge = challenge_msg
        .get(24..32)
        .ok_or(NtlmError::Malformed("challenge"))?;
    let info = field(challenge_msg, 40).ok_or(NtlmError::Malformed("target info"))?;
    let mut pairs = av_pairs(info).ok_or(NtlmError::Malformed("target info"))?;
    let timestamp = pairs
        .iter()
        .find(|(i, _)| *i == av::TIMESTAMP)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| filetime_now().to_le_bytes().to_vec());
    if let Some(cbt) = cbt {
        pairs.push((av::CHANNEL_BINDINGS, cbt.to_vec()));
    }
    if mic_over.is_some() {
        pairs.push((av::FLAGS, 2u32.to_le_bytes().to_vec()));
    }
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&timestamp);
    blob.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    blob.extend_from_slice(&[0; 4]);
    for (id, v) in &pairs {
        write_av(&mut blob, *id, v);
    }
    write_av(&mut blob, av::EOL, &[]);
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2(password, user, domain);
    let proof = hmac_md5(&key, &[server_challenge, &blob]);
    let mut nt = proof.to_vec();
    nt.extend_from_slice(&blob);
    let lm = vec![0u8; 24];
    let (d, u, w) = (utf16(domain), utf16(user), utf16("WORKSTATION"));
    let session_key: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
    let encrypted_key = match mic_over {
        Some(_) => rc4(&hmac_md5(&key, &[&proof]), &session_key),
        None => Vec::new(),
    };
    let header = 88usize;
    let mut payload = Vec::new();
    let mut fields = Vec::new();
    for part in [&lm, &nt, &d, &u, &w, &encrypted_key] {
        fields.push((part.len(), header + payload.len()));
        payload.extend_from_slice(part);
    }
    let mut m = SIGNATURE.to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    for (len, off) in fields {
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(off as u32).to_le_bytes());
    }
    let mut flags = NEGOTIATE_UNICODE | NEGOTIATE_NTLM | NEGOTIATE_EXTENDED_SESSIONSECURITY;
    if mic_over.is_some() {
        flags |= NEGOTIATE_KEY_EXCH | NEGOTIATE_128;
    }
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    m.extend_from_slice(&[0; 16]);
    m.extend_from_slice(&payload);
    if let Some(negotiate) = mic_over {
        let mic = hmac_md5(&session_key, &[negotiate, challenge_msg, &m]);
        m[72..88].copy_from_slice(&mic);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [MS-NLMP] 4.2.4.1.1: NTOWFv2("Password", "User", "Domain").
    #[test]
    fn ntowfv2_matches_the_specification() {
        let want = [
            0x0c, 0x86, 0x8a, 0x40, 0x3b, 0xfd, 0x7a, 0x93, 0xa3, 0x00, 0x1e, 0xf2, 0x2e, 0xf0,
            0x2e, 0x3f,
        ];
        assert_eq!(ntowf_v2("Password", "User", "Domain"), want);
    }

    #[test]
    fn rc4_known_answer() {
        // RFC 6229 key 0x0102030405, first bytes of keystream.
        let ks = rc4(&[1, 2, 3, 4, 5], &[0; 4]);
        assert_eq!(ks, [0xb2, 0x39, 0x63, 0x05]);
    }

    #[test]
    fn round_trip_and_failures() {
        let names = ServerNames {
            nb_domain: "CONTOSO".into(),
            nb_computer: "EXCH01".into(),
            dns_domain: "example.test".into(),
            dns_computer: "exch01.example.test".into(),
        };
        let neg = client_negotiate();
        let ch = challenge(parse_negotiate(&neg).unwrap(), [7; 8], &names);
        let cbt = channel_bindings_hash(b"cert");
        let auth = client_authenticate(&ch, "CONTOSO", "svc", "pw", Some(cbt)).unwrap();
        let who = verify(&neg, &ch, &auth, "pw", Binding::Required(cbt)).unwrap();
        assert_eq!((who.domain.as_str(), who.user.as_str()), ("CONTOSO", "svc"));
        assert_eq!(
            verify(&neg, &ch, &auth, "nope", Binding::Required(cbt)),
            Err(NtlmError::BadResponse)
        );
        assert_eq!(
            verify(&neg, &ch, &auth, "pw", Binding::Required([1; 16])),
            Err(NtlmError::BadChannelBinding)
        );
        let plain = client_authenticate(&ch, "CONTOSO", "svc", "pw", None).unwrap();
        assert_eq!(
            verify(&neg, &ch, &plain, "pw", Binding::Required(cbt)),
            Err(NtlmError::BadChannelBinding)
        );
        assert!(verify(&neg, &ch, &plain, "pw", Binding::Optional(cbt)).is_ok());
        // With a MIC and an exchanged session key; a flipped MIC byte is caught.
        let mut with_mic =
            client_authenticate_with_mic(&neg, &ch, "CONTOSO", "svc", "pw", Some(cbt)).unwrap();
        assert!(verify(&neg, &ch, &with_mic, "pw", Binding::Required(cbt)).is_ok());
        with_mic[80] ^= 1;
        assert_eq!(
            verify(&neg, &ch, &with_mic, "pw", Binding::Required(cbt)),
            Err(NtlmError::BadMic)
        );
        // Truncations never panic.
        for n in 0..auth.len() {
            let _ = verify(&neg, &ch, &auth[..n], "pw", Binding::Ignored);
        }
    }
}
