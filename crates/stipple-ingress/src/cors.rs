//! CORS for browsers only. tower-http's [`Cors`] answers preflights and adds the CORS
//! headers; but it builds a header map (and a `Vary` value) for every request, and axum
//! clones it, settings included, with its route for every request: about a tenth of
//! the CPU a `/v1/track` request took. Only browsers need it, and a browser sends
//! `Origin` on every cross-origin request and preflight; so a request without one (what
//! every server library sends) goes straight to the route, and its answer carries no
//! CORS headers, which only browsers read.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Request, Response, header};
use futures::future::Either;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt as _};
use tower_http::cors::{Cors, CorsLayer};

/// Applies `CorsLayer` to the requests that carry an `Origin` header.
#[derive(Debug, Clone)]
pub(crate) struct BrowserCorsLayer {
    cors: CorsLayer,
}

impl BrowserCorsLayer {
    pub(crate) fn new(cors: CorsLayer) -> Self {
        Self { cors }
    }
}

impl<S: Clone> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        BrowserCors {
            cors: Arc::new(self.cors.layer(inner.clone())),
            inner,
        }
    }
}

/// The service [`BrowserCorsLayer`] makes: cheap to clone (the CORS part is shared).
#[derive(Debug, Clone)]
pub(crate) struct BrowserCors<S> {
    inner: S,
    cors: Arc<Cors<S>>,
}

impl<S, B, ResBody> Service<Request<B>> for BrowserCors<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Oneshot<Cors<S>, Request<B>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.headers().contains_key(header::ORIGIN) {
            Either::Left(Cors::clone(&self.cors).oneshot(request))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}
