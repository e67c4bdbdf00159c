//! The service each connection runs: the Tracking API's requests straight to their
//! handler, everything else through the [`router`](crate::router).
//!
//! Going through axum's router and its layers cost a `/v1/track` request about 5,000
//! instructions of its 70,000 (7%, docs/performance.md): the path lookup, the matched
//! path and URL parameters it records in the request's extensions, the boxed and cloned
//! route service, the futures each layer wraps around the next, and the CORS layer's
//! check. A `POST` to one of the Tracking API's paths without an `Origin` header (what
//! every server library sends) needs none of it: its route is known from the path alone,
//! and CORS applies only to requests with an `Origin` (see `cors.rs`). So such requests
//! run [`capture::answer`], the function their route runs in the router, and everything
//! else (other methods, other paths, browsers' requests, the operations endpoints) goes
//! through the router, whose answers are the reference. A path is compared as the router
//! matches it, exactly; any other spelling of it goes to the router.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{Method, Request, header};
use axum::response::Response;
use bytes::Bytes;
use futures::future::Either;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};

use crate::capture;
use crate::state::IngressState;

/// A Tracking API request's answer, on its way.
type Direct = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A connection's service (see the module's documentation). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Front {
    router: TowerToHyperService<Router>,
    state: IngressState,
}

impl Front {
    /// Serves the Tracking API of `state` directly, and everything else with `router`,
    /// which is to serve that same API from the same state.
    pub(crate) fn new(router: Router, state: IngressState) -> Self {
        Self {
            router: TowerToHyperService::new(router),
            state,
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for Front
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Direct, TowerToHyperServiceFuture<Router, Request<B>>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        if request.method() == Method::POST && !request.headers().contains_key(header::ORIGIN) {
            if let Some(endpoint) = capture::endpoint(request.uri().path()) {
                let state = self.state.clone();
                let request = request.map(Body::new);
                return Either::Left(Box::pin(async move {
                    Ok(capture::answer(state, endpoint, request).await)
                }));
            }
        }
        Either::Right(self.router.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use axum::routing::any;
    use hyper::service::Service as _;
    use stipple_store::testing::TestStore;

    use super::*;
    use crate::{IngressConfig, ManualClock, Source};

    fn state() -> IngressState {
        let config = IngressConfig {
            sources: vec![Source::new("web", "wk_web")],
            ..IngressConfig::default()
        };
        IngressState::new(config, Arc::new(TestStore::default()))
            .expect("a valid config")
            .with_clock(Arc::new(ManualClock::new(
                "2026-11-28T12:00:00Z".parse().expect("a time"),
            )))
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Body::from(body.to_owned()))
            .expect("a valid request")
    }

    /// An answer's status, headers and body; without `Content-Length`, which axum's
    /// router sets and hyper sets on the wire for the others (checked right here, and
    /// over TCP in tests/server.rs).
    async fn read(response: Response) -> (StatusCode, Vec<(String, String)>, Bytes) {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("a body");
        let mut headers: Vec<_> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .filter(|(k, v)| k != "content-length" || *v != body.len().to_string())
            .collect();
        headers.sort();
        (parts.status, headers, body)
    }

    const KEY: (&str, &str) = ("authorization", "Basic d2tfd2ViOg==");
    const JSON: (&str, &str) = ("content-type", "application/json");
    const TRACK: &str = r#"{"type":"track","event":"Signed Up","userId":"u1","messageId":"m1"}"#;

    /// Which requests go straight to the Tracking API: a router that answers 418 to
    /// everything shows which did not.
    #[tokio::test]
    async fn only_tracking_api_posts_without_an_origin_skip_the_router() {
        let teapot = Router::new().fallback(any(|| async { StatusCode::IM_A_TEAPOT }));
        let front = Front::new(teapot, state());
        let direct = [
            ("POST", "/v1/track", &[KEY, JSON][..]),
            ("POST", "/v1/t/", &[KEY, JSON]),
            ("POST", "/v1/track", &[JSON]),
        ];
        let routed = [
            (
                "POST",
                "/v1/track",
                &[KEY, JSON, ("origin", "https://shop.example")][..],
            ),
            ("GET", "/v1/track", &[KEY]),
            (
                "OPTIONS",
                "/v1/track",
                &[("origin", "https://shop.example")],
            ),
            ("POST", "/v1/track//", &[KEY, JSON]),
            ("POST", "/v1/Track", &[KEY, JSON]),
            ("POST", "/v1/%74rack", &[KEY, JSON]),
            ("POST", "/v1/", &[KEY, JSON]),
            ("POST", "/v2/track", &[KEY, JSON]),
            ("POST", "/healthz", &[]),
            ("GET", "/metrics", &[]),
        ];
        for (cases, through_router) in [(&direct[..], false), (&routed[..], true)] {
            for (method, path, headers) in cases {
                let answer = front.call(request(method, path, headers, TRACK)).await;
                let status = answer.expect("infallible").status();
                assert_eq!(
                    status == StatusCode::IM_A_TEAPOT,
                    through_router,
                    "{method} {path} {headers:?}"
                );
            }
        }
    }

    /// Served straight or through the router, the same request gets the same answer:
    /// status, every header and the body.
    #[tokio::test]
    async fn answers_as_the_router_does() {
        let front_state = state();
        let front = Front::new(crate::router(front_state.clone()), front_state);
        let router = crate::router(state());
        let batch = r#"{"batch":[{"type":"track","event":"A","userId":"u"},{"type":"track"},
            {"type":"nope"}],"sentAt":"2026-11-28T12:00:00Z"}"#;
        let cases = [
            (&[KEY, JSON][..], "/v1/track", TRACK),
            (&[KEY, JSON], "/v1/track", TRACK),
            (&[KEY, JSON], "/v1/batch", batch),
            (&[KEY, JSON], "/v1/b/", batch),
            (
                &[KEY, JSON],
                "/v1/identify",
                r#"{"userId":"u1","traits":{"a":1}}"#,
            ),
            (&[KEY, JSON], "/v1/track", r#"{"event":"No one"}"#),
            (&[KEY, JSON], "/v1/track", "{not json"),
            (&[KEY, JSON], "/v1/track", r#"{"batch":[]}"#),
            (&[JSON], "/v1/page", r#"{"writeKey":"wk_web","userId":"u"}"#),
            (&[JSON], "/v1/page", r#"{"userId":"u"}"#),
            (
                &[("authorization", "Basic bm9wZTo="), JSON],
                "/v1/screen",
                TRACK,
            ),
            (&[KEY, ("content-type", "text/xml")], "/v1/track", TRACK),
            (&[KEY, ("content-encoding", "br")], "/v1/track", TRACK),
            (&[KEY, ("content-length", "99999999")], "/v1/alias", TRACK),
        ];
        let mut statuses = Vec::new();
        for (headers, path, body) in cases {
            let straight = read(
                front
                    .call(request("POST", path, headers, body))
                    .await
                    .expect("infallible"),
            )
            .await;
            let routed = read(
                tower::ServiceExt::oneshot(router.clone(), request("POST", path, headers, body))
                    .await
                    .expect("infallible"),
            )
            .await;
            assert_eq!(straight, routed, "POST {path} {headers:?} {body}");
            statuses.push(straight.0.as_u16());
        }
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(
            statuses,
            [200, 400, 401, 415],
            "the cases cover these answers"
        );
    }
}
