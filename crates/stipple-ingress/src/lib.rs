//! The Segment HTTP Tracking API ingress. Not built yet (issue 3).
