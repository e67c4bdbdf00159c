//! Delivery workers: lease, map, send, retry, dead-letter. Not built yet (issue 3).
