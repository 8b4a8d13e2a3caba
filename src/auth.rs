//! Who gets in: JWT verification at the handshake (jsonwebtoken), token extraction from the request,
//! and per-session topic permissions from the `topics` claim.
//!
//! Tokens are accepted from `Authorization: Bearer <jwt>`, the `token` query parameter, or — for
//! browsers, which cannot set headers on a WebSocket — a `Sec-WebSocket-Protocol` entry `bearer.<jwt>`
//! offered next to a real subprotocol (the gateway answers with that other one, never the token).
//! Tokens are never logged.

use std::path::Path;
use std::sync::Arc;

use hyper::header::{HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use hyper::Request;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthConfig, ConfigError};

/// Prefix of the subprotocol entry that carries a token.
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Why a token was refused (sent as the 401 body; short and free of token contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnsupportedAlgorithm,
    Invalid,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "bad token signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::WrongIssuer => "wrong token issuer",
            AuthError::WrongAudience => "wrong token audience",
            AuthError::UnsupportedAlgorithm => "unsupported token algorithm",
            AuthError::Invalid => "invalid token",
        }
    }
}

/// A topic permission from the `topics` claim: `*` (all), `prefix.*`, or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    Any,
    Prefix(Box<str>),
    Exact(Box<str>),
}

impl TopicPattern {
    pub fn parse(p: &str) -> Self {
        if p == "*" {
            TopicPattern::Any
        } else if let Some(prefix) = p.strip_suffix('*') {
            TopicPattern::Prefix(prefix.into())
        } else {
            TopicPattern::Exact(p.into())
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Any => true,
            TopicPattern::Prefix(p) => topic.starts_with(&**p),
            TopicPattern::Exact(t) => &**t == topic,
        }
    }
}

/// The authenticated identity of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub user: Arc<str>,
    /// `None` = no `topics` claim = every topic allowed.
    pub topics: Option<Arc<[TopicPattern]>>,
}

impl Identity {
    pub fn may_use(&self, topic: &str) -> bool {
        allows(self.topics.as_deref(), topic)
    }
}

/// Whether a `topics` claim (`None`: no claim) allows `topic`.
pub fn allows(patterns: Option<&[TopicPattern]>, topic: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| p.matches(topic)))
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    topics: Option<Vec<String>>,
}

/// Configured verification keys and rules.
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

fn key_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

impl Verifier {
    /// Build from config; `None` when no key is configured.
    pub fn from_config(c: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        let mut keys = Vec::new();
        if let Some(s) = &c.hs256_secret {
            keys.push((Algorithm::HS256, DecodingKey::from_secret(s.as_bytes())));
        }
        if let Some(p) = &c.hs256_secret_file {
            let raw = key_file("auth.hs256_secret_file", p)?;
            let secret = String::from_utf8_lossy(&raw).trim().to_string();
            if secret.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "auth.hs256_secret_file",
                    message: format!("{} is empty", p.display()),
                });
            }
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(p) = &c.rs256_public_key {
            let pem = key_file("auth.rs256_public_key", p)?;
            let k = DecodingKey::from_rsa_pem(&pem).map_err(|e| ConfigError::Invalid {
                key: "auth.rs256_public_key",
                message: format!("{}: {e}", p.display()),
            })?;
            keys.push((Algorithm::RS256, k));
        }
        if let Some(p) = &c.es256_public_key {
            let pem = key_file("auth.es256_public_key", p)?;
            let k = DecodingKey::from_ec_pem(&pem).map_err(|e| ConfigError::Invalid {
                key: "auth.es256_public_key",
                message: format!("{}: {e}", p.display()),
            })?;
            keys.push((Algorithm::ES256, k));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = keys.iter().map(|(a, _)| *a).collect();
        validation.leeway = c.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
        }
        match &c.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Self { keys, validation }))
    }

    /// Verify a token and return the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![*alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::WrongIssuer,
                K::InvalidAudience => AuthError::WrongAudience,
                K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => AuthError::Malformed,
                _ => AuthError::Invalid,
            }
        })?;
        let user = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Invalid)?;
        Ok(Identity {
            user: user.into(),
            topics: data
                .claims
                .topics
                .map(|ts| ts.iter().map(|t| TopicPattern::parse(t)).collect()),
        })
    }
}

/// Where the token came from; for the subprotocol form, the subprotocol the gateway must answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub answer_subprotocol: Option<HeaderValue>,
}

/// Extract a token from the header, the query, or the subprotocol list (in that order).
pub fn find_token<B>(req: &Request<B>) -> Option<FoundToken> {
    if let Some(v) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(FoundToken {
                token: v[7..].trim().to_string(),
                answer_subprotocol: None,
            });
        }
    }
    if let Some(q) = req.uri().query() {
        if let Some((_, t)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token") {
            return Some(FoundToken {
                token: t.into_owned(),
                answer_subprotocol: None,
            });
        }
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))?;
    let answer = offered
        .iter()
        .find(|p| !p.starts_with(SUBPROTOCOL_TOKEN_PREFIX))
        .and_then(|p| HeaderValue::from_str(p).ok());
    Some(FoundToken {
        token: token.to_string(),
        answer_subprotocol: answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(TopicPattern::parse("chat.*").matches("chat.room"));
        assert!(!TopicPattern::parse("chat.*").matches("news"));
        assert!(TopicPattern::parse("*").matches("x"));
        assert!(TopicPattern::parse("a").matches("a"));
        assert!(!TopicPattern::parse("a").matches("ab"));
    }

    #[test]
    fn tokens_from_each_place() {
        let r = Request::get("/ws")
            .header("Authorization", "Bearer abc")
            .body(())
            .unwrap();
        assert_eq!(find_token(&r).unwrap().token, "abc");
        let r = Request::get("/ws?x=1&token=a.b%2Bc").body(()).unwrap();
        assert_eq!(find_token(&r).unwrap().token, "a.b+c");
        let r = Request::get("/ws")
            .header("Sec-WebSocket-Protocol", "wsgate.v1, bearer.a.b.c")
            .body(())
            .unwrap();
        let f = find_token(&r).unwrap();
        assert_eq!(
            (
                f.token.as_str(),
                f.answer_subprotocol.unwrap().to_str().unwrap()
            ),
            ("a.b.c", "wsgate.v1")
        );
        assert_eq!(find_token(&Request::get("/ws").body(()).unwrap()), None);
        // Empty list elements are not subprotocols (found by fuzz/handshake).
        let r = Request::get("/ws")
            .header("Sec-WebSocket-Protocol", "bearer.tok, , wsgate.v1")
            .header("Sec-WebSocket-Protocol", "")
            .body(())
            .unwrap();
        let f = find_token(&r).unwrap();
        assert_eq!(f.answer_subprotocol.unwrap().to_str().unwrap(), "wsgate.v1");
        let r = Request::get("/ws")
            .header("Sec-WebSocket-Protocol", "bearer.tok, ")
            .body(())
            .unwrap();
        assert_eq!(find_token(&r).unwrap().answer_subprotocol, None);
    }
}
