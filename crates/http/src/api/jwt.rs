//! API tokens: JSON Web Tokens signed with HMAC-SHA512 by the server's secret key.
//!
//! Only `HS512` is accepted, whatever the token's header claims (so `alg: none` and algorithm
//! confusion fail). A token names its user and carries a fingerprint of the user's password
//! hash: changing the password or deleting the user invalidates every token issued before.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// Fingerprint of the password hash at issue time.
    pub ver: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, wrong algorithm, or a bad signature.
    Invalid,
    Expired,
}

/// A short fingerprint of a password hash (never the hash itself).
pub fn fingerprint(password_hash: &str) -> String {
    let digest = Sha256::digest(password_hash.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

const HEADER: &str = r#"{"alg":"HS512","typ":"JWT"}"#;

fn mac(key: &[u8], signing_input: &str) -> Option<Hmac<Sha512>> {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).ok()?;
    mac.update(signing_input.as_bytes());
    Some(mac)
}

pub fn sign(key: &[u8], claims: &Claims) -> Option<String> {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).ok()?);
    let input = format!("{header}.{payload}");
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &input)?.finalize().into_bytes());
    Some(format!("{input}.{sig}"))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Checks a token's algorithm, signature and expiry at `now` (unix seconds).
pub fn verify(key: &[u8], token: &str, now: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Invalid)?;
    if header.alg != "HS512" {
        return Err(TokenError::Invalid);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Invalid)?;
    mac(key, &format!("{header_b64}.{payload}"))
        .ok_or(TokenError::Invalid)?
        .verify_slice(&sig)
        .map_err(|_| TokenError::Invalid)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Invalid)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &[u8] = b"a key of at least thirty-two bytes!!";

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ada".into(),
            ver: fingerprint("$argon2id$..."),
            iat: 1000,
            exp,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let t = sign(KEY, &claims(2000)).unwrap();
        assert_eq!(verify(KEY, &t, 1500).unwrap(), claims(2000));
        assert_eq!(verify(KEY, &t, 2000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_fail() {
        let t = sign(KEY, &claims(2000)).unwrap();
        // Another key.
        assert_eq!(
            verify(b"another key of thirty-two bytes!!!!", &t, 1500),
            Err(TokenError::Invalid)
        );
        // alg: none, unsigned.
        let parts: Vec<&str> = t.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            verify(KEY, &format!("{none}.{}.", parts[1]), 1500),
            Err(TokenError::Invalid)
        );
        // A changed payload with the old signature.
        let mut c = claims(9999);
        c.sub = "root".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            verify(KEY, &format!("{}.{payload}.{}", parts[0], parts[2]), 1500),
            Err(TokenError::Invalid)
        );
        assert_eq!(verify(KEY, "garbage", 1500), Err(TokenError::Invalid));
        assert_eq!(verify(KEY, "a.b.c.d", 1500), Err(TokenError::Invalid));
    }
}
