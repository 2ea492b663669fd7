//! The caller's credential: the headers it arrives in ([`API_KEY_HEADER`] or `Authorization`), and
//! how it travels on with the calls a handler makes. The server runtime keeps the
//! credential of the call being handled in a task-local ([`with_caller_credential`]), and the mesh
//! client's [`ForwardCredentialLayer`] puts it on every outgoing call that carries none of its own.
//! So tasks → priority and timetrack → tasks act for the end user, verified again by the service
//! called; a call made outside any handler (a background job) carries no user and reaches only
//! public methods.

use std::future::Future;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tower::{Layer, Service};

/// `X-Api-Key`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// A credential as it arrived: the header and its value (`authorization: Bearer …` or
/// `x-api-key: …`).
#[derive(Clone)]
pub struct CallerCredential {
    name: HeaderName,
    value: HeaderValue,
}

impl std::fmt::Debug for CallerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value: it is a secret.
        f.debug_struct("CallerCredential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CallerCredential {
    /// The credential headers of `headers` (`authorization`, else `x-api-key`), if any.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        [AUTHORIZATION, API_KEY_HEADER]
            .into_iter()
            .find_map(|name| {
                let value = headers.get(&name)?.clone();
                Some(Self { name, value })
            })
    }

    /// Puts the credential on `headers` unless they already carry one.
    pub fn apply_to(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(AUTHORIZATION) && !headers.contains_key(API_KEY_HEADER) {
            headers.insert(self.name.clone(), self.value.clone());
        }
    }
}

tokio::task_local! {
    static CALLER_CREDENTIAL: CallerCredential;
}

/// Runs `future` (a handler's call) with `credential` as the credential its outgoing mesh calls
/// carry.
pub async fn with_caller_credential<F: Future>(
    credential: Option<CallerCredential>,
    future: F,
) -> F::Output {
    match credential {
        Some(credential) => CALLER_CREDENTIAL.scope(credential, future).await,
        None => future.await,
    }
}

/// The credential of the call this task is handling, if it came with one.
pub fn caller_credential() -> Option<CallerCredential> {
    CALLER_CREDENTIAL.try_with(Clone::clone).ok()
}

/// Client layer: outgoing calls carry the handled call's credential (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardCredentialLayer;

impl<S> Layer<S> for ForwardCredentialLayer {
    type Service = ForwardCredential<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardCredential { inner }
    }
}

/// The service of [`ForwardCredentialLayer`].
#[derive(Debug, Clone)]
pub struct ForwardCredential<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ForwardCredential<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(credential) = caller_credential() {
            credential.apply_to(request.headers_mut());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_handled_calls_credential_goes_on_unless_the_call_has_its_own() {
        let mut incoming = HeaderMap::new();
        incoming.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t1"));
        let credential = CallerCredential::from_headers(&incoming);
        assert!(
            !format!("{credential:?}").contains("t1"),
            "no secret in Debug"
        );
        let outgoing = with_caller_credential(credential, async {
            let mut plain = HeaderMap::new();
            caller_credential().unwrap().apply_to(&mut plain);
            let mut own = HeaderMap::new();
            own.insert(API_KEY_HEADER, HeaderValue::from_static("k"));
            caller_credential().unwrap().apply_to(&mut own);
            (plain, own)
        })
        .await;
        assert_eq!(outgoing.0[AUTHORIZATION], "Bearer t1");
        assert!(outgoing.1.get(AUTHORIZATION).is_none());
        assert!(caller_credential().is_none(), "only inside the scope");
        assert!(CallerCredential::from_headers(&HeaderMap::new()).is_none());
    }
}
