//! Secrets at rest: the master key and AES-256-GCM sealing.
//!
//! The master key is 32 random bytes, given base64-encoded in an environment variable or kept
//! in a key file created with mode 0600 on first start. Each sealed value records the id of the
//! key that sealed it (a fingerprint, never the key) and is bound to its owner by associated
//! data, so a ciphertext copied to another row does not decrypt. This crate does no SQL: the
//! store decides where sealed values live.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use serversync_model::Secret;

pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "master key in {source_name} is not valid: expected {KEY_LEN} random bytes in base64 \
         (create one with `openssl rand -base64 32`)"
    )]
    MalformedKey { source_name: String },
    #[error("cannot read master key file {path}: {err}")]
    ReadKeyFile { path: PathBuf, err: std::io::Error },
    #[error("cannot create master key file {path}: {err}")]
    WriteKeyFile { path: PathBuf, err: std::io::Error },
    #[error(
        "a value sealed under master key {found} cannot be opened with master key {current}: \
         supply the master key this data was encrypted with"
    )]
    WrongKey { current: String, found: String },
    #[error("sealed value failed authentication: it was modified or belongs to another record")]
    Corrupt,
    #[error("the system random number generator failed")]
    Random,
}

/// Where the master key came from (for messages; never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
    Generated(PathBuf),
    /// Handed in directly (tests, key rotation).
    Direct,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(v) => write!(f, "environment variable {v}"),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Generated(p) => write!(f, "new key file {}", p.display()),
            KeySource::Direct => f.write_str("a key handed in directly"),
        }
    }
}

/// The master key. Redacted in `Debug`; the key bytes never leave this type except through
/// [`MasterKey::to_base64`], used to write a key file.
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_LEN],
    key: LessSafeKey,
    source: KeySource,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A value sealed with AES-256-GCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN], source: KeySource) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key"));
        let fp = digest(&SHA256, &bytes);
        let id = fp.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id,
            bytes,
            key,
            source,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| VaultError::Random)?;
        Ok(Self::from_bytes(bytes, KeySource::Direct))
    }

    pub fn from_base64(text: &str, source: KeySource) -> Result<Self, VaultError> {
        let malformed = || VaultError::MalformedKey {
            source_name: source.to_string(),
        };
        let raw = B64.decode(text.trim()).map_err(|_| malformed())?;
        let bytes: [u8; KEY_LEN] = raw.try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(bytes, source))
    }

    /// The key from `env_value` (the content of the environment variable `env_name`) if set,
    /// else from `key_file`, creating that file (mode 0600) with a new random key if it does
    /// not exist.
    pub fn load(
        env_name: &str,
        env_value: Option<&str>,
        key_file: &Path,
    ) -> Result<Self, VaultError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return Self::from_base64(v, KeySource::Env(env_name.to_owned()));
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => Self::from_base64(&text, KeySource::File(key_file.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Self::generate()?;
                key.write_new_file(key_file)?;
                key.source = KeySource::Generated(key_file.to_owned());
                Ok(key)
            }
            Err(err) => Err(VaultError::ReadKeyFile {
                path: key_file.to_owned(),
                err,
            }),
        }
    }

    /// Writes the key to a file that must not exist yet, readable by the owner only.
    pub fn write_new_file(&self, path: &Path) -> Result<(), VaultError> {
        let werr = |err| VaultError::WriteKeyFile {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(werr)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(werr)?;
        f.write_all(self.to_base64().as_bytes()).map_err(werr)?;
        f.write_all(b"\n").map_err(werr)?;
        f.sync_all().map_err(werr)
    }

    /// Key id: a fingerprint that identifies the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.bytes)
    }

    /// Seals `plaintext`, bound to `aad` (the owner's identity).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| VaultError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| VaultError::Corrupt)?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.key_id != self.id {
            return Err(VaultError::WrongKey {
                current: self.id.clone(),
                found: sealed.key_id.clone(),
            });
        }
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Corrupt)?;
        let mut buf = sealed.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| VaultError::Corrupt)?;
        Ok(plain.to_vec())
    }

    pub fn seal_secret(&self, secret: &Secret, aad: &[u8]) -> Result<Sealed, VaultError> {
        self.seal(secret.expose().as_bytes(), aad)
    }

    pub fn open_secret(&self, sealed: &Sealed, aad: &[u8]) -> Result<Secret, VaultError> {
        let bytes = self.open(sealed, aad)?;
        String::from_utf8(bytes)
            .map(Secret::new)
            .map_err(|_| VaultError::Corrupt)
    }
}

/// A new random bearer token: `ss_` followed by 32 random bytes in URL-safe base64.
pub fn new_token() -> Result<String, VaultError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| VaultError::Random)?;
    Ok(format!(
        "ss_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// PBKDF2-HMAC-SHA256 rounds for passwords (OWASP's recommendation).
const PASSWORD_ROUNDS: u32 = 600_000;

/// A password hash to store: `pbkdf2-sha256$ROUNDS$SALT$HASH` (salt and hash in base64),
/// with a random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, VaultError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| VaultError::Random)?;
    Ok(pbkdf2_encode(password, PASSWORD_ROUNDS, &salt))
}

fn pbkdf2_encode(password: &str, rounds: u32, salt: &[u8]) -> String {
    let mut out = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(rounds.max(1)).expect("at least one round"),
        salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = &base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "pbkdf2-sha256${rounds}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Whether `password` matches a hash made by [`hash_password`] (constant-time comparison).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, rounds, salt, hash] = parts[..] else {
        return false;
    };
    let b64 = &base64::engine::general_purpose::STANDARD_NO_PAD;
    let (Ok(rounds), Ok(salt), Ok(hash)) =
        (rounds.parse::<u32>(), b64.decode(salt), b64.decode(hash))
    else {
        return false;
    };
    if scheme != "pbkdf2-sha256" || rounds == 0 {
        return false;
    }
    aws_lc_rs::pbkdf2::verify(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(rounds).expect("checked"),
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Creates `dir` and its missing parents readable by the owner only (mode 0700 on Unix,
/// whatever the umask). An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `file` empty, readable and writable by the owner only (0600), unless it exists.
pub fn create_private_file(file: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(file) {
        Ok(_) => make_private(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes an existing file readable and writable by the owner only (0600).
pub fn make_private(file: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
        if mode != 0o600 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// SHA-256 of `data`, lowercase hex (how tokens are stored: high-entropy tokens need no salt).
pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HMAC-SHA256 of `data` under `key`, lowercase hex (webhook signatures).
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn passwords_verify_and_hashes_differ() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("pbkdf2-sha256$600000$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
        assert!(!verify_password("", &h));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        for bad in [
            "",
            "pbkdf2-sha256$x$y$z",
            "md5$1$AA$AA",
            "pbkdf2-sha256$0$AA$AA",
        ] {
            assert!(!verify_password("x", bad), "{bad}");
        }
    }
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_owner() {
        let k = MasterKey::generate().unwrap();
        let s = k.seal(b"p@ssw0rd", b"owner-1").unwrap();
        assert!(!s.ciphertext.windows(8).any(|w| w == b"p@ssw0rd"));
        assert_eq!(k.open(&s, b"owner-1").unwrap(), b"p@ssw0rd");
        assert!(matches!(k.open(&s, b"owner-2"), Err(VaultError::Corrupt)));
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            other.open(&s, b"owner-1"),
            Err(VaultError::WrongKey { .. })
        ));
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn key_file_is_created_once_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let a = MasterKey::load("K", None, &path).unwrap();
        assert!(matches!(a.source(), KeySource::Generated(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = MasterKey::load("K", None, &path).unwrap();
        assert_eq!(a.id(), b.id());
        let c = MasterKey::load("K", Some(&a.to_base64()), Path::new("/nonexistent")).unwrap();
        assert_eq!(c.id(), a.id());
        let err = MasterKey::load("K", Some("not base64!"), &path).unwrap_err();
        assert!(err.to_string().contains("environment variable K"), "{err}");
    }
}
