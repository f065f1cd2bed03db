//! Signed policy changes: the cloud signs every change it sends with an ed25519 key, and an
//! edge applies only changes signed by a key in its `[policy] trusted_keys`.
//!
//! A signature covers the node the change is addressed to (`*` for every node), the tunable,
//! its scope, the value exactly as written on the policy stream, the diff and the version,
//! so none of them can be altered, and a change cannot be re-addressed to another node.
//! Keys are written as standard base64 (44 characters for 32 bytes): `isthmus keygen` makes
//! a pair, `NAME.key` (secret, mode 0600) and `NAME.pub`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// The address that means "every node".
pub const ALL_NODES: &str = "*";

/// Problems with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What failed, for example `read key file`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A secret key where a public key belongs, or the reverse.
    #[error("{0}")]
    WrongKind(String),
    /// A key pair name that is not a plain file name.
    #[error(
        "key name `{0}` must be a plain file name (letters, digits, `.`, `_`, `-`; not starting with `.`)"
    )]
    BadName(String),
    /// A key's text is not 32 bytes of base64.
    #[error("{what} is not an ed25519 key (32 bytes of base64, as written by `isthmus keygen`)")]
    Malformed {
        /// What was being read.
        what: String,
    },
    /// A key pair would overwrite existing files.
    #[error("{0} already exists: refusing to overwrite a key")]
    Exists(PathBuf),
}

/// One policy change as it travels on a policy stream, in the text form that is signed.
#[derive(Clone, Copy, Debug)]
pub struct SignedFields<'a> {
    /// The node the change is for, or [`ALL_NODES`].
    pub node: &'a str,
    /// The tunable.
    pub policy: &'a str,
    /// The scope column, if the change is scoped.
    pub scope_key: Option<&'a str>,
    /// The scope value, if the change is scoped.
    pub scope_value: Option<&'a str>,
    /// The value as written in the `value` column.
    pub value: &'a str,
    /// `+1` (set) or `-1` (retract).
    pub diff: i64,
    /// The change's version.
    pub version: u64,
}

impl<'a> SignedFields<'a> {
    /// The fields of `change` addressed to `node`, its value written as `value` (the text
    /// of the stream's `value` column).
    pub fn of_change(
        node: &'a str,
        change: &'a crate::policy::PolicyChange,
        value: &'a str,
    ) -> Self {
        SignedFields {
            node,
            policy: &change.name,
            scope_key: change.scope.as_ref().map(|s| s.key.as_str()),
            scope_value: change.scope.as_ref().map(|s| s.value.as_str()),
            value,
            diff: change.diff,
            version: change.version,
        }
    }

    /// The bytes that are signed: a domain tag, then every field length-prefixed, so that no
    /// two different changes share a message.
    pub fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"isthmus.policy.v1");
        let mut text = |s: Option<&str>| match s {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.push(0),
        };
        text(Some(self.node));
        text(Some(self.policy));
        text(self.scope_key);
        text(self.scope_value);
        text(Some(self.value));
        out.extend_from_slice(&self.diff.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out
    }
}

/// The cloud's secret key, which signs policy changes.
pub struct PolicySigner {
    key: SigningKey,
}

impl std::fmt::Debug for PolicySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicySigner({})", self.public_key())
    }
}

impl PolicySigner {
    /// A new random key.
    pub fn generate() -> Self {
        PolicySigner {
            key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// Reads a secret key file written by `isthmus keygen` (64 bytes of base64: the secret
    /// and its public key, checked against each other).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| KeyError::Io {
            action: "read key file",
            path: path.to_path_buf(),
            cause,
        })?;
        let bytes = BASE64.decode(text.trim()).unwrap_or_default();
        if bytes.len() == 32 {
            return Err(KeyError::WrongKind(format!(
                "{} holds a public key: `signing_key` needs the secret `.key` file made by `isthmus keygen`",
                path.display()
            )));
        }
        let pair: [u8; 64] = bytes.try_into().map_err(|_| KeyError::Malformed {
            what: format!("the secret key in {}", path.display()),
        })?;
        let key = SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::Malformed {
            what: format!("the secret key in {}", path.display()),
        })?;
        Ok(PolicySigner { key })
    }

    /// Whether `text` is a secret key itself (pasted where a path belongs).
    pub fn is_secret_text(text: &str) -> bool {
        BASE64.decode(text.trim()).is_ok_and(|b| b.len() == 64)
    }

    /// The public key, in base64: what edges list in `[policy] trusted_keys`.
    pub fn public_key(&self) -> String {
        BASE64.encode(self.key.verifying_key().as_bytes())
    }

    /// The secret key with its public key (64 bytes), in base64: a key file's content.
    pub fn secret_key(&self) -> String {
        BASE64.encode(self.key.to_keypair_bytes())
    }

    /// The signature of a change, in base64.
    pub fn sign(&self, fields: &SignedFields<'_>) -> String {
        BASE64.encode(self.key.sign(&fields.message()).to_bytes())
    }

    /// Writes `DIR/NAME.key` (secret, readable by the owner only) and `DIR/NAME.pub`; refuses
    /// to overwrite either.
    pub fn write_pair(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.starts_with('.') || !plain {
            return Err(KeyError::BadName(name.to_string()));
        }
        let secret = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        for path in [&secret, &public] {
            if path.exists() {
                return Err(KeyError::Exists(path.clone()));
            }
        }
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |cause| KeyError::Io {
                action,
                path,
                cause,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&secret)
            .map_err(io("write key file", &secret))?;
        std::io::Write::write_all(&mut file, format!("{}\n", self.secret_key()).as_bytes())
            .map_err(io("write key file", &secret))?;
        std::fs::write(&public, format!("{}\n", self.public_key()))
            .map_err(io("write key file", &public))?;
        Ok((secret, public))
    }
}

/// Why a signed change is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    /// The change carries no signature but the node requires one.
    #[error("unsigned: this node accepts only changes signed by a key in [policy] trusted_keys")]
    Unsigned,
    /// Signed by a key the node does not trust.
    #[error("signed by an untrusted key {0}")]
    UntrustedKey(String),
    /// The signature does not match the change (altered or forged).
    #[error("bad signature: the change was altered or forged")]
    BadSignature,
}

/// The public keys a node accepts policy changes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Parses `[policy] trusted_keys` entries: each is a base64 public key or the path (relative
    /// to `base_dir`) of a `.pub` file written by `isthmus keygen`.
    pub fn parse(entry: &str, base_dir: &Path) -> Result<VerifyingKey, KeyError> {
        if PolicySigner::is_secret_text(entry) {
            return Err(KeyError::WrongKind(
                "this entry is a secret key: list the public key (the `.pub` file), and keep the secret on the cloud node only".into(),
            ));
        }
        let bytes = match decode32(entry.trim()) {
            Some(bytes) => bytes,
            None => {
                let path = crate::component::resolve_path(base_dir, entry);
                let text = std::fs::read_to_string(&path).map_err(|cause| {
                    if cause.kind() == std::io::ErrorKind::NotFound {
                        KeyError::WrongKind(format!(
                            "`{entry}` is neither a public key (32 bytes of base64) nor an existing `.pub` file"
                        ))
                    } else {
                        KeyError::Io {
                            action: "read key file",
                            path: path.clone(),
                            cause,
                        }
                    }
                })?;
                if PolicySigner::is_secret_text(&text) {
                    return Err(KeyError::WrongKind(format!(
                        "{} holds a secret key: list the `.pub` file, and keep the secret on the cloud node only",
                        path.display()
                    )));
                }
                decode32(text.trim()).ok_or_else(|| KeyError::Malformed {
                    what: format!("the public key in {}", path.display()),
                })?
            }
        };
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Malformed {
            what: format!("`{entry}`"),
        })
    }

    /// A set of trusted keys.
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Whether no key is trusted (the node then accepts unsigned changes, as in-process
    /// pipelines send them).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `signature` (base64) by `signer` (base64 public key) signs `fields`.
    pub fn verify(
        &self,
        fields: &SignedFields<'_>,
        signer: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), SignatureProblem> {
        let (Some(signer), Some(signature)) = (signer, signature) else {
            return Err(SignatureProblem::Unsigned);
        };
        let key = decode32(signer)
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .filter(|k| self.keys.contains(k))
            .ok_or_else(|| SignatureProblem::UntrustedKey(signer.to_string()))?;
        let signature = BASE64
            .decode(signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(SignatureProblem::BadSignature)?;
        key.verify_strict(&fields.message(), &signature)
            .map_err(|_| SignatureProblem::BadSignature)
    }
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: &str) -> SignedFields<'_> {
        SignedFields {
            node: "edge-1",
            policy: "threshold",
            scope_key: Some("line"),
            scope_value: Some("p1-l2"),
            value,
            diff: 1,
            version: 42,
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_change_and_its_key() {
        let signer = PolicySigner::generate();
        let other = PolicySigner::generate();
        let trusted = TrustedKeys::new(vec![
            TrustedKeys::parse(&signer.public_key(), Path::new(".")).unwrap(),
        ]);
        let sig = signer.sign(&fields("3.0"));
        let me = signer.public_key();
        assert_eq!(
            trusted.verify(&fields("3.0"), Some(&me), Some(&sig)),
            Ok(())
        );
        // Altered value, node, version: refused.
        assert_eq!(
            trusted.verify(&fields("9.0"), Some(&me), Some(&sig)),
            Err(SignatureProblem::BadSignature)
        );
        let mut f = fields("3.0");
        f.node = "edge-2";
        assert_eq!(
            trusted.verify(&f, Some(&me), Some(&sig)),
            Err(SignatureProblem::BadSignature)
        );
        f = fields("3.0");
        f.version = 43;
        assert!(trusted.verify(&f, Some(&me), Some(&sig)).is_err());
        // Scope moved between key and value: a different message.
        f = fields("3.0");
        f.scope_key = Some("linep1-l2");
        f.scope_value = Some("");
        assert!(trusted.verify(&f, Some(&me), Some(&sig)).is_err());
        // Another key, even with a valid signature of its own: untrusted.
        let theirs = other.sign(&fields("3.0"));
        assert!(matches!(
            trusted.verify(&fields("3.0"), Some(&other.public_key()), Some(&theirs)),
            Err(SignatureProblem::UntrustedKey(_))
        ));
        // Claiming the trusted key with the other key's signature: forged.
        assert_eq!(
            trusted.verify(&fields("3.0"), Some(&me), Some(&theirs)),
            Err(SignatureProblem::BadSignature)
        );
        assert_eq!(
            trusted.verify(&fields("3.0"), None, None),
            Err(SignatureProblem::Unsigned)
        );
        assert_eq!(
            trusted.verify(&fields("3.0"), Some(&me), Some("not base64!")),
            Err(SignatureProblem::BadSignature)
        );
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let signer = PolicySigner::generate();
        let (secret, public) = signer.write_pair(dir.path(), "cloud").unwrap();
        let again = PolicySigner::from_file(&secret).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        let key = TrustedKeys::parse("cloud.pub", dir.path()).unwrap();
        assert_eq!(
            key,
            TrustedKeys::parse(&signer.public_key(), dir.path()).unwrap()
        );
        assert!(matches!(
            signer.write_pair(dir.path(), "cloud"),
            Err(KeyError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A secret where a public key belongs, and the reverse, are refused, without echoing
        // a pasted secret.
        let err = TrustedKeys::parse(&signer.secret_key(), dir.path()).unwrap_err();
        assert!(!err.to_string().contains(&signer.secret_key()), "{err}");
        assert!(err.to_string().contains("is a secret key"), "{err}");
        let err = TrustedKeys::parse("cloud.key", dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds a secret key"), "{err}");
        let err = PolicySigner::from_file(&public).unwrap_err();
        assert!(err.to_string().contains("holds a public key"), "{err}");
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(matches!(
                signer.write_pair(dir.path(), bad),
                Err(KeyError::BadName(_))
            ));
        }
        std::fs::write(&public, "short\n").unwrap();
        let err = TrustedKeys::parse("cloud.pub", dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an ed25519 key"), "{err}");
        let err = TrustedKeys::parse("missing.pub", dir.path()).unwrap_err();
        assert!(err.to_string().contains("neither a public key"), "{err}");
    }
}
