//! What the client shows a node: nothing, an API key, or scoped tokens (JWTs) that the app's
//! backend mints, fetched through a [`TokenProvider`] and refreshed before they expire (or
//! when a node refuses one as expired or revoked, once per request).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// How a fresh token is had; `Err` says why none could be (the request fails with it).
pub trait TokenProvider: Send + Sync + 'static {
    fn token(&self) -> BoxFuture<'static, std::result::Result<String, String>>;
}

impl<F> TokenProvider for F
where
    F: Fn() -> BoxFuture<'static, std::result::Result<String, String>> + Send + Sync + 'static,
{
    fn token(&self) -> BoxFuture<'static, std::result::Result<String, String>> {
        self()
    }
}

/// A token is fetched again this long before its `exp`, so that no request carries one that
/// expires on the way.
const MARGIN: Duration = Duration::from_secs(30);

pub(crate) enum Credentials {
    None,
    Key(String),
    Tokens {
        provider: Arc<dyn TokenProvider>,
        /// The token in use and its `exp` (seconds since the epoch), if it says one.
        current: Mutex<Option<(String, Option<u64>)>>,
        /// One fetch at a time.
        fetching: tokio::sync::Mutex<()>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secret itself
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Key(_) => "Key(..)",
            Credentials::Tokens { .. } => "Tokens(..)",
        })
    }
}

impl Credentials {
    pub(crate) fn tokens(provider: Arc<dyn TokenProvider>) -> Self {
        Credentials::Tokens {
            provider,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// What to send as `Authorization: Bearer`, fetching a token if the one in use is about
    /// to expire.
    pub(crate) async fn bearer(&self) -> Result<Option<String>> {
        let (provider, current, fetching) = match self {
            Credentials::None => return Ok(None),
            Credentials::Key(k) => return Ok(Some(k.clone())),
            Credentials::Tokens {
                provider,
                current,
                fetching,
            } => (provider, current, fetching),
        };
        let fresh = |c: &Option<(String, Option<u64>)>| {
            c.as_ref()
                .filter(|(_, exp)| exp.is_none_or(|e| now() + MARGIN.as_secs() < e))
                .map(|(t, _)| t.clone())
        };
        if let Some(t) = fresh(&current.lock()) {
            return Ok(Some(t));
        }
        let _one = fetching.lock().await;
        if let Some(t) = fresh(&current.lock()) {
            return Ok(Some(t));
        }
        let t = provider
            .token()
            .await
            .map_err(|e| Error::Invalid(format!("the token provider failed: {e}")))?;
        *current.lock() = Some((t.clone(), expiry_of(&t)));
        Ok(Some(t))
    }

    /// A node refused `used` (expired, revoked, invalid): the next [`Self::bearer`] fetches a
    /// new one. `true` if there is a provider to ask.
    pub(crate) fn refused(&self, used: &str) -> bool {
        match self {
            Credentials::Tokens { current, .. } => {
                let mut c = current.lock();
                if c.as_ref().is_some_and(|(t, _)| t == used) {
                    *c = None;
                }
                true
            }
            _ => false,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `exp` a JWT says (read, not verified: the node verifies).
fn expiry_of(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn jwt(exp: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"HS256"}"#),
            b64.encode(format!(r#"{{"sub":"a","exp":{exp}}}"#))
        )
    }

    #[tokio::test]
    async fn a_token_is_fetched_again_before_it_expires_and_after_a_refusal() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (c2, lifetime) = (calls.clone(), Arc::new(Mutex::new(3600u64)));
        let l2 = lifetime.clone();
        let provider = move || -> BoxFuture<'static, std::result::Result<String, String>> {
            c2.fetch_add(1, Ordering::SeqCst);
            let t = jwt(now() + *l2.lock());
            Box::pin(async move { Ok(t) })
        };
        let creds = Credentials::tokens(Arc::new(provider));
        let first = creds.bearer().await.unwrap().unwrap();
        assert_eq!(creds.bearer().await.unwrap().unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh token is reused");
        // refused: fetched again
        assert!(creds.refused(&first));
        creds.bearer().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // a token within the margin of its expiry is fetched again at once
        *lifetime.lock() = 10;
        creds.refused(&creds.bearer().await.unwrap().unwrap());
        creds.bearer().await.unwrap();
        creds.bearer().await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "each use of a token within the margin fetches anew"
        );
        assert_eq!(expiry_of("not a jwt"), None);
    }
}
