//! The durable store: queue, dedup window, dead letters and rejected input. Not built yet (issue 3).
