//! Who is calling: relay clients, known by the SHA-256 of their token or, on a Unix socket,
//! by the uid of the connecting process; and how fast each may call (a token bucket).
//!
//! Tokens are 256 random bits, so one SHA-256 is the right hash (nothing to brute-force; a
//! slow password hash would only slow every request). The hash of what the client sent is
//! compared with every client's in constant time, so the time of a refusal says nothing
//! about how much of a hash matched. SDKs put "the API key" where their vendor expects it,
//! so the token is read from `Authorization: Bearer`, `x-api-key`, `api-key` or
//! `x-goog-api-key`, whichever is present.

use crate::config::ClientConfig;
use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Index of a client in [`Clients`].
pub(crate) type ClientId = usize;

/// The configured clients.
pub(crate) struct Clients {
    clients: Vec<Client>,
}

struct Client {
    name: String,
    token_sha256: Option<[u8; 32]>,
    peer_uids: Vec<u32>,
    limit: Option<TokenBucket>,
}

/// Why a request is refused before it reaches a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No token, or one no client has.
    Unauthenticated,
    /// Over its rate: wait this long for the next request.
    RateLimited(Duration),
}

impl Clients {
    pub(crate) fn new(configs: &[ClientConfig]) -> Clients {
        let clients = configs
            .iter()
            .map(|config| Client {
                name: config.name.get_ref().clone(),
                token_sha256: config.token_sha256.as_ref().map(|hash| {
                    let mut bytes = [0u8; 32];
                    hex::decode_to_slice(hash.get_ref(), &mut bytes).expect("validated");
                    bytes
                }),
                peer_uids: config.peer_uids.iter().map(|uid| *uid.get_ref()).collect(),
                limit: config
                    .requests_per_second
                    .as_ref()
                    .map(|rate| TokenBucket::new(*rate.get_ref())),
            })
            .collect();
        Clients { clients }
    }

    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    /// The client's index by name.
    pub(crate) fn id(&self, name: &str) -> Option<ClientId> {
        self.clients.iter().position(|c| c.name == name)
    }

    /// Who sent these headers (or `query_key`, the `key=` parameter of a Gemini route's
    /// URL, where Google's REST examples put the API key; or connected as `peer_uid`),
    /// within its rate limit.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        query_key: Option<&str>,
        peer_uid: Option<u32>,
        now: Instant,
    ) -> Result<ClientId, Refusal> {
        let token = presented_token(headers).or(query_key.map(str::as_bytes));
        let id = token
            .and_then(|token| self.by_token(token))
            .or_else(|| {
                let uid = peer_uid?;
                self.clients.iter().position(|c| c.peer_uids.contains(&uid))
            })
            .ok_or(Refusal::Unauthenticated)?;
        if let Some(limit) = &self.clients[id].limit {
            limit.take(now).map_err(Refusal::RateLimited)?;
        }
        Ok(id)
    }

    fn by_token(&self, token: &[u8]) -> Option<ClientId> {
        let hash: [u8; 32] = Sha256::digest(token).into();
        // Every client is compared, matched or not: the time does not tell which one matched.
        let mut found = None;
        for (index, client) in self.clients.iter().enumerate() {
            if let Some(expected) = &client.token_sha256 {
                if bool::from(expected.ct_eq(&hash)) {
                    found = Some(index);
                }
            }
        }
        found
    }
}

/// The token a client presents, from whichever header its SDK puts the API key in.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.as_bytes();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(trim(&value[7..]));
        }
    }
    ["x-api-key", "api-key", "x-goog-api-key"]
        .into_iter()
        .find_map(|name| headers.get(name))
        .map(|value| trim(value.as_bytes()))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// A new relay token (256 random bits, URL-safe base64, prefixed so it is recognisable and
/// caught by key-shaped masking) and its SHA-256 in hex.
pub fn new_token() -> (secrecy::SecretString, String) {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = format!(
        "krr-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    zeroize::Zeroize::zeroize(&mut bytes);
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (secrecy::SecretString::from(token), hash)
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth (at least
/// one), so a client may burst to its rate and no further. The lock is held for a few
/// arithmetic operations, never across an await.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Option<Instant>)>,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, None)),
        }
    }

    /// Takes a token, or answers how long until one is there.
    pub(crate) fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        if let Some(last) = *last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        }
        *last = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use secrecy::ExposeSecret;

    fn clients(hash: &str) -> Clients {
        let text = format!(
            "[[client]]\nname = \"app\"\ntoken_sha256 = \"{hash}\"\nrequests_per_second = 2.0\n\n[[client]]\nname = \"local\"\npeer_uids = [1000]\n"
        );
        #[derive(serde::Deserialize)]
        struct File {
            client: Vec<ClientConfig>,
        }
        let file: File = toml::from_str(&text).unwrap();
        Clients::new(&file.client)
    }

    #[test]
    fn a_token_is_accepted_from_any_vendor_header_and_refused_otherwise() {
        let (token, hash) = new_token();
        assert!(token.expose_secret().starts_with("krr-"));
        assert_eq!(token.expose_secret().len(), 4 + 43);
        let clients = clients(&hash);
        let now = Instant::now();
        for (name, value) in [
            ("authorization", format!("Bearer {}", token.expose_secret())),
            ("x-api-key", token.expose_secret().to_string()),
            ("api-key", token.expose_secret().to_string()),
            ("x-goog-api-key", token.expose_secret().to_string()),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
            let fresh = self::clients(&hash);
            assert_eq!(
                fresh.authenticate(&headers, None, None, now),
                Ok(0),
                "{name}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer krr-nope"));
        assert_eq!(
            clients.authenticate(&headers, None, None, now),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            clients.authenticate(&HeaderMap::new(), None, None, now),
            Err(Refusal::Unauthenticated)
        );
        // A Gemini route's `key=` parameter, when no header carries a token.
        assert_eq!(
            clients.authenticate(&HeaderMap::new(), Some(token.expose_secret()), None, now),
            Ok(0)
        );
        // A peer uid names a client only when it is listed.
        assert_eq!(
            clients.authenticate(&HeaderMap::new(), None, Some(1000), now),
            Ok(1)
        );
        assert_eq!(
            clients.authenticate(&HeaderMap::new(), None, Some(1001), now),
            Err(Refusal::Unauthenticated)
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills_at_the_rate() {
        let bucket = TokenBucket::new(2.0);
        let start = Instant::now();
        assert!(bucket.take(start).is_ok());
        assert!(bucket.take(start).is_ok());
        let wait = bucket.take(start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(start + Duration::from_millis(499)).is_err());
        assert!(bucket.take(start + Duration::from_millis(1_100)).is_ok());
    }
}
