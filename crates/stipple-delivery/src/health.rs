//! The destination's health as delivery sees it: paused for credentials, or not.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

/// Shared between the delivery pipeline (which writes it) and `/readyz` and the
/// metrics (which read it).
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    paused: AtomicBool,
    detail: Mutex<String>,
}

/// A snapshot for `/readyz` and `stipple status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    /// False while delivery is paused because Pointillist refuses the API token.
    pub healthy: bool,
    /// What is wrong, or `"delivering"`.
    pub detail: String,
}

impl DeliveryHealth {
    /// Whether delivery is paused for credentials.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        if self.is_paused() {
            HealthStatus {
                healthy: false,
                detail: self.detail.lock().clone(),
            }
        } else {
            HealthStatus {
                healthy: true,
                detail: "delivering".into(),
            }
        }
    }

    /// Pauses delivery; returns true when it was running until now.
    pub(crate) fn pause(&self, status: u16) -> bool {
        *self.detail.lock() = format!(
            "paused: Pointillist answered {status} to the API token; events stay queued, probing until it is accepted"
        );
        !self.paused.swap(true, Ordering::AcqRel)
    }

    /// Resumes delivery; returns true when it was paused until now.
    pub(crate) fn resume(&self) -> bool {
        self.paused.swap(false, Ordering::AcqRel)
    }
}
