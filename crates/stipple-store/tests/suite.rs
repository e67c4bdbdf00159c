//! One suite of `Store` contract tests, run against both `MemoryStore` and `SqliteStore`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{DAY, HOUR, Harness, event, events, numbered, rejection};
use stipple_store::{Append, DeadLetterReason, EventId, Stats, Store};

/// Generates one `#[tokio::test]` per case and per store kind.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&crate::common::memory()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&crate::common::sqlite()).await;
                }
            )*
        }
    };
}

suite!(
    append_lease_ack,
    dedup_within_window,
    dedup_is_per_source,
    dedup_after_window_expiry,
    duplicates_within_one_append,
    duplicates_across_concurrent_appends,
    zero_window_turns_dedup_off,
    lease_is_exclusive_between_concurrent_leasers,
    lease_takes_oldest_first_up_to_max,
    concurrent_appends_leases_and_acks_lose_nothing,
    lease_expiry_gives_the_event_again,
    retry_waits_for_not_before_and_counts_attempts,
    release_makes_events_due_at_once_without_an_attempt,
    failed_events_waiting_do_not_hold_back_new_ones,
    due_retries_come_before_new_events,
    dead_letter_list_and_requeue,
    requeue_all_moves_more_than_one_chunk,
    rejected_inputs_are_kept_and_listed,
    purges_delete_only_what_is_older,
    purges_delete_more_than_one_chunk,
    a_purge_stops_at_the_first_younger_row,
    stats_count_every_table,
    expire_dedup_forgets_only_old_keys,
    expire_dedup_removes_more_than_one_chunk,
    expire_dedup_counts_no_key_claimed_again,
    operations_on_unknown_ids_do_nothing,
    ack_counts_each_event_once,
    ack_of_runs_and_gaps_deletes_exactly_those,
    check_writable_answers,
    the_queued_signal_changes_only_when_events_are_queued,
);

async fn append_ok(store: &dyn Store, append: Append, window: Duration) -> Vec<bool> {
    store
        .append(append, window)
        .await
        .expect("append")
        .duplicate
}

async fn lease_ids(store: &dyn Store, max: usize) -> Vec<String> {
    store
        .lease(max, HOUR)
        .await
        .expect("lease")
        .into_iter()
        .map(|e| e.message_id)
        .collect()
}

async fn stats(store: &dyn Store) -> Stats {
    store.stats().await.expect("stats")
}

mod cases {
    use super::*;

    pub(crate) async fn the_queued_signal_changes_only_when_events_are_queued(h: &Harness) {
        let store = &*h.store;
        let mut signal = store.queued_signal().expect("both stores signal");
        let mut changed = move || {
            let changed = signal.has_changed().expect("the store is open");
            signal.borrow_and_update();
            changed
        };
        assert!(!changed(), "nothing queued yet");
        append_ok(store, events("web", &["a", "b"]), DAY).await;
        assert!(changed(), "appended");
        append_ok(store, events("web", &["a"]), DAY).await;
        assert!(!changed(), "a duplicate queues nothing");
        let leased = store.lease(10, HOUR).await.expect("lease");
        store.ack(&[leased[0].id]).await.expect("ack");
        store
            .retry(leased[1].id, h.clock_now())
            .await
            .expect("retry");
        store
            .dead_letter(
                leased[1].id,
                DeadLetterReason {
                    status: Some(400),
                    detail: "invalid event".into(),
                },
            )
            .await
            .expect("dead letter");
        store
            .append(
                Append {
                    events: vec![],
                    rejected: vec![rejection(Some(0), "invalid_json")],
                },
                DAY,
            )
            .await
            .expect("append a rejection");
        assert!(!changed(), "nothing was queued");
        assert_eq!(store.requeue_dead_letters(None).await.expect("requeue"), 1);
        assert!(changed(), "a dead letter requeued");
    }

    pub(crate) async fn append_lease_ack(h: &Harness) {
        let store = &*h.store;
        let appended = store
            .append(events("web", &["a", "b", "c"]), DAY)
            .await
            .expect("append");
        assert_eq!(appended.duplicate, vec![false, false, false]);
        assert_eq!(stats(store).await.queued, 3);

        let leased = store.lease(10, HOUR).await.expect("lease");
        assert_eq!(leased.len(), 3);
        for (got, id) in leased.iter().zip(["a", "b", "c"]) {
            let want = event("web", id);
            assert_eq!(got.source, want.source);
            assert_eq!(got.message_id, want.message_id);
            assert_eq!(got.payload, want.payload);
            assert_eq!(got.attempts, 0);
            assert_eq!(got.enqueued_at, common::start());
        }
        assert!(store.lease(10, HOUR).await.expect("lease").is_empty());

        store.ack(&[leased[0].id, leased[2].id]).await.expect("ack");
        assert_eq!(stats(store).await.queued, 1);
        // Acknowledging twice changes nothing.
        store.ack(&[leased[0].id]).await.expect("ack again");
        assert_eq!(stats(store).await.queued, 1);

        h.clock.advance(HOUR);
        assert_eq!(lease_ids(store, 10).await, vec!["b"]);
    }

    pub(crate) async fn dedup_within_window(h: &Harness) {
        let store = &*h.store;
        assert_eq!(
            append_ok(store, events("web", &["m1"]), DAY).await,
            vec![false]
        );
        h.clock.advance(DAY - Duration::from_secs(1));
        assert_eq!(
            append_ok(store, events("web", &["m1", "m2"]), DAY).await,
            vec![true, false]
        );
        assert_eq!(stats(store).await.queued, 2);
        // Once delivered, a duplicate is still refused: the key outlives the event.
        let leased = store.lease(10, HOUR).await.expect("lease");
        let ids: Vec<EventId> = leased.iter().map(|e| e.id).collect();
        store.ack(&ids).await.expect("ack");
        assert_eq!(
            append_ok(store, events("web", &["m1", "m2"]), DAY).await,
            vec![true, true]
        );
        assert_eq!(stats(store).await.queued, 0);
    }

    pub(crate) async fn dedup_is_per_source(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["m1"]), DAY).await;
        assert_eq!(
            append_ok(store, events("ios", &["m1"]), DAY).await,
            vec![false]
        );
        assert_eq!(stats(store).await.queued, 2);
    }

    pub(crate) async fn dedup_after_window_expiry(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["m1"]), HOUR).await;
        h.clock.advance(HOUR - Duration::from_millis(1));
        assert_eq!(
            append_ok(store, events("web", &["m1"]), HOUR).await,
            vec![true]
        );
        // A key as old as the window counts as absent, before any expire_dedup ...
        h.clock.advance(Duration::from_millis(1));
        assert_eq!(
            append_ok(store, events("web", &["m1"]), HOUR).await,
            vec![false]
        );
        // ... and is refreshed: the window starts again from now.
        h.clock.advance(HOUR - Duration::from_millis(1));
        assert_eq!(
            append_ok(store, events("web", &["m1"]), HOUR).await,
            vec![true]
        );
        assert_eq!(stats(store).await.queued, 2);
    }

    pub(crate) async fn duplicates_within_one_append(h: &Harness) {
        let store = &*h.store;
        assert_eq!(
            append_ok(store, events("web", &["a", "b", "a", "c", "b"]), DAY).await,
            vec![false, false, true, false, true]
        );
        assert_eq!(lease_ids(store, 10).await, vec!["a", "b", "c"]);
    }

    pub(crate) async fn duplicates_across_concurrent_appends(h: &Harness) {
        // Concurrent appends may share one transaction (SQLite group commit): the same
        // messageId sent by many at once is still queued once.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let store = Arc::clone(&h.store);
            tasks.spawn(async move {
                store
                    .append(events("web", &["same", &format!("own-{i}")]), DAY)
                    .await
                    .expect("append")
                    .duplicate
            });
        }
        let mut fresh_same = 0;
        while let Some(duplicate) = tasks.join_next().await {
            let duplicate = duplicate.expect("task");
            assert!(!duplicate[1], "a unique id was taken for a duplicate");
            if !duplicate[0] {
                fresh_same += 1;
            }
        }
        assert_eq!(fresh_same, 1);
        assert_eq!(stats(&*h.store).await.queued, 21);
    }

    pub(crate) async fn zero_window_turns_dedup_off(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["m1"]), DAY).await;
        assert_eq!(
            append_ok(store, events("web", &["m1", "m1"]), Duration::ZERO).await,
            vec![false, false]
        );
        assert_eq!(stats(store).await.queued, 3);
    }

    pub(crate) async fn lease_is_exclusive_between_concurrent_leasers(h: &Harness) {
        append_ok(&*h.store, numbered("web", "m", 600), DAY).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = Arc::clone(&h.store);
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.lease(7, HOUR).await.expect("lease");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|e| e.id));
                    tokio::task::yield_now().await;
                }
            });
        }
        let mut seen = HashSet::new();
        while let Some(mine) = tasks.join_next().await {
            for id in mine.expect("task") {
                assert!(seen.insert(id), "event {id} leased twice");
            }
        }
        assert_eq!(seen.len(), 600);
    }

    pub(crate) async fn concurrent_appends_leases_and_acks_lose_nothing(h: &Harness) {
        const WRITERS: usize = 4;
        const BATCHES: usize = 25;
        const BATCH: usize = 20;
        let total = WRITERS * BATCHES * BATCH;
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let store = Arc::clone(&h.store);
            writers.spawn(async move {
                for b in 0..BATCHES {
                    let append = numbered("web", &format!("w{w}-b{b}"), BATCH);
                    store.append(append, DAY).await.expect("append");
                    tokio::task::yield_now().await;
                }
            });
        }
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (store, acked) = (Arc::clone(&h.store), Arc::clone(&acked));
            workers.spawn(async move {
                loop {
                    let batch = store.lease(13, HOUR).await.expect("lease");
                    if batch.is_empty() {
                        if stats(&*store).await.queued == 0
                            && acked.lock().expect("lock").len() == total
                        {
                            return;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
                    store.ack(&ids).await.expect("ack");
                    acked
                        .lock()
                        .expect("lock")
                        .extend(batch.into_iter().map(|e| e.message_id));
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("writer");
        }
        while let Some(done) = workers.join_next().await {
            done.expect("worker");
        }
        let acked = std::mem::take(&mut *acked.lock().expect("lock"));
        let unique: HashSet<&String> = acked.iter().collect();
        assert_eq!(acked.len(), total, "every event delivered exactly once");
        assert_eq!(unique.len(), total);
        assert_eq!(stats(&*h.store).await.queued, 0);
    }

    pub(crate) async fn lease_takes_oldest_first_up_to_max(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b"]), DAY).await;
        h.clock.advance(Duration::from_secs(1));
        append_ok(store, events("ios", &["c", "d"]), DAY).await;
        assert!(store.lease(0, HOUR).await.expect("lease 0").is_empty());
        assert_eq!(lease_ids(store, 3).await, vec!["a", "b", "c"]);
        assert_eq!(lease_ids(store, 3).await, vec!["d"]);
    }

    pub(crate) async fn lease_expiry_gives_the_event_again(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b"]), DAY).await;
        let lease = Duration::from_secs(30);
        let first = store.lease(1, lease).await.expect("lease");
        assert_eq!(first.len(), 1);
        assert_eq!(lease_ids(store, 10).await, vec!["b"]);
        h.clock.advance(lease - Duration::from_millis(1));
        assert!(lease_ids(store, 10).await.is_empty());
        h.clock.advance(Duration::from_millis(1));
        let again = store.lease(10, HOUR).await.expect("lease");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, first[0].id);
        assert_eq!(
            again[0].attempts, 0,
            "a lease running out is not an attempt"
        );
    }

    pub(crate) async fn retry_waits_for_not_before_and_counts_attempts(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a"]), DAY).await;
        let leased = store.lease(10, HOUR).await.expect("lease");
        let id = leased[0].id;
        let backoff = Duration::from_secs(600);
        let not_before = h.clock_now() + backoff;
        store.retry(id, not_before).await.expect("retry");
        assert_eq!(stats(store).await.queued, 1);

        h.clock.advance(backoff - Duration::from_millis(1));
        assert!(lease_ids(store, 10).await.is_empty());
        h.clock.advance(Duration::from_millis(1));
        let again = store.lease(10, HOUR).await.expect("lease");
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (id, 1));
        assert_eq!(
            again[0].enqueued_at,
            common::start(),
            "the horizon keeps its start"
        );

        store.retry(id, h.clock_now()).await.expect("retry now");
        let third = store.lease(10, HOUR).await.expect("lease");
        assert_eq!(third[0].attempts, 2);
    }

    pub(crate) async fn release_makes_events_due_at_once_without_an_attempt(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b", "c"]), DAY).await;
        let leased = store.lease(2, HOUR).await.expect("lease");
        assert_eq!(lease_ids(store, 10).await, vec!["c"]);
        let ids: Vec<EventId> = leased.iter().map(|e| e.id).collect();
        store.release(&ids).await.expect("release");
        let again = store.lease(10, HOUR).await.expect("lease");
        let got: Vec<(&str, u32)> = again
            .iter()
            .map(|e| (e.message_id.as_str(), e.attempts))
            .collect();
        // Back in their place at the front of the queue.
        assert_eq!(got, vec![("a", 0), ("b", 0)]);
    }

    pub(crate) async fn failed_events_waiting_do_not_hold_back_new_ones(h: &Harness) {
        let store = &*h.store;
        append_ok(store, numbered("web", "old", 300), DAY).await;
        let leased = store.lease(300, HOUR).await.expect("lease");
        assert_eq!(leased.len(), 300);
        let later = h.clock_now() + Duration::from_secs(600);
        for event in &leased {
            store.retry(event.id, later).await.expect("retry");
        }
        append_ok(store, events("web", &["new"]), DAY).await;
        assert_eq!(lease_ids(store, 10).await, vec!["new"]);
        assert!(lease_ids(store, 10).await.is_empty());
        h.clock.advance(Duration::from_secs(600));
        let again = store.lease(1000, HOUR).await.expect("lease");
        assert_eq!(again.len(), 300);
        assert!(again.iter().all(|e| e.attempts == 1));
    }

    pub(crate) async fn due_retries_come_before_new_events(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b"]), DAY).await;
        let a = store.lease(1, HOUR).await.expect("lease")[0].id;
        store.retry(a, h.clock_now()).await.expect("retry");
        append_ok(store, events("web", &["c"]), DAY).await;
        assert_eq!(lease_ids(store, 10).await, vec!["a", "b", "c"]);
    }

    pub(crate) async fn dead_letter_list_and_requeue(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b", "c"]), DAY).await;
        let leased = store.lease(10, HOUR).await.expect("lease");
        let (a, b) = (&leased[0], &leased[1]);
        store.retry(a.id, h.clock_now()).await.expect("retry");
        h.clock.advance(Duration::from_secs(5));
        let bad = DeadLetterReason {
            status: Some(400),
            detail: "invalid event".into(),
        };
        store
            .dead_letter(a.id, bad.clone())
            .await
            .expect("dead letter a");
        let gone = DeadLetterReason {
            status: None,
            detail: "connection refused".into(),
        };
        store
            .dead_letter(b.id, gone.clone())
            .await
            .expect("dead letter b");
        // Again: the event is no longer queued, nothing happens.
        store
            .dead_letter(a.id, bad.clone())
            .await
            .expect("dead letter again");
        assert_eq!(
            stats(store).await,
            Stats {
                queued: 1,
                dead_letters: 2,
                rejected: 0
            }
        );

        let dead = store.dead_letters(10).await.expect("list");
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].message_id, "a");
        assert_eq!(dead[0].source, "web");
        assert_eq!(dead[0].reason, bad);
        assert_eq!(
            dead[0].attempts, 2,
            "one retry, then the failure that dead-lettered it"
        );
        assert_eq!(
            dead[0].payload.as_bytes(),
            event("web", "a").payload.as_slice()
        );
        assert_eq!(dead[0].dead_at, h.clock_now());
        assert_eq!((dead[1].message_id.as_str(), dead[1].attempts), ("b", 1));
        assert_eq!(dead[1].reason, gone);
        assert_eq!(store.dead_letters(1).await.expect("list 1").len(), 1);
        // A dead letter is not leased.
        h.clock.advance(HOUR);
        assert_eq!(lease_ids(store, 10).await, vec!["c"]);

        assert_eq!(
            store
                .requeue_dead_letters(Some(&[dead[1].id, 9_999]))
                .await
                .expect("requeue b"),
            1
        );
        assert_eq!(
            store
                .requeue_dead_letters(Some(&[dead[1].id]))
                .await
                .expect("requeue b again"),
            0
        );
        assert_eq!(
            store.requeue_dead_letters(None).await.expect("requeue all"),
            1
        );
        assert!(store.dead_letters(10).await.expect("list").is_empty());
        assert_eq!(stats(store).await.dead_letters, 0);
        assert_eq!(stats(store).await.queued, 3);
        let back = store.lease(10, HOUR).await.expect("lease requeued");
        let got: Vec<(&str, u32)> = back
            .iter()
            .map(|e| (e.message_id.as_str(), e.attempts))
            .collect();
        // Requeued as new events: attempts and retry horizon start again.
        assert_eq!(got, vec![("b", 0), ("a", 0)]);
        assert!(back.iter().all(|e| e.enqueued_at == h.clock_now()));
        assert_eq!(back[1].payload, event("web", "a").payload);
    }

    pub(crate) async fn requeue_all_moves_more_than_one_chunk(h: &Harness) {
        let n = 5_100;
        append_ok(&*h.store, numbered("web", "m", n), DAY).await;
        let leased = h.store.lease(n, HOUR).await.expect("lease");
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in leased.chunks(100) {
            let store = Arc::clone(&h.store);
            let ids: Vec<EventId> = chunk.iter().map(|e| e.id).collect();
            tasks.spawn(async move {
                for id in ids {
                    let reason = DeadLetterReason {
                        status: Some(422),
                        detail: "no".into(),
                    };
                    store.dead_letter(id, reason).await.expect("dead letter");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        assert_eq!(stats(&*h.store).await.dead_letters, n as u64);
        assert_eq!(
            h.store.requeue_dead_letters(None).await.expect("requeue"),
            n as u64
        );
        assert_eq!(
            stats(&*h.store).await,
            Stats {
                queued: n as u64,
                dead_letters: 0,
                rejected: 0
            }
        );
    }

    pub(crate) async fn rejected_inputs_are_kept_and_listed(h: &Harness) {
        let store = &*h.store;
        let first = Append {
            events: vec![event("web", "ok")],
            rejected: vec![
                rejection(Some(1), "no_user_anon_id"),
                rejection(None, "invalid_json"),
            ],
        };
        assert_eq!(append_ok(store, first, DAY).await, vec![false]);
        h.clock.advance(Duration::from_secs(1));
        let second = Append {
            events: Vec::new(),
            rejected: vec![rejection(Some(7), "missing_event")],
        };
        assert!(append_ok(store, second, DAY).await.is_empty());

        let listed = store.rejected(10).await.expect("rejected");
        let codes: Vec<&str> = listed.iter().map(|r| r.input.code.as_str()).collect();
        assert_eq!(
            codes,
            vec!["no_user_anon_id", "invalid_json", "missing_event"]
        );
        assert_eq!(listed[0].input, rejection(Some(1), "no_user_anon_id"));
        assert_eq!(listed[1].input.index, None);
        assert_eq!(listed[0].received_at, common::start());
        assert_eq!(
            listed[2].received_at,
            common::start() + Duration::from_secs(1)
        );
        assert!(listed[0].id < listed[1].id && listed[1].id < listed[2].id);
        assert_eq!(store.rejected(2).await.expect("rejected 2").len(), 2);
        assert_eq!(stats(store).await.rejected, 3);
        // Rejected input is never leased for delivery.
        assert_eq!(lease_ids(store, 10).await, vec!["ok"]);
    }

    pub(crate) async fn purges_delete_only_what_is_older(h: &Harness) {
        let store = &*h.store;
        let reason = || DeadLetterReason {
            status: Some(422),
            detail: "no".into(),
        };
        // At 0 s, 10 s and 20 s: a rejected input and a dead letter each.
        for (i, code) in ["a", "b", "c"].into_iter().enumerate() {
            if i > 0 {
                h.clock.advance(Duration::from_secs(10));
            }
            let append = Append {
                events: vec![event("web", code)],
                rejected: vec![rejection(None, code)],
            };
            append_ok(store, append, DAY).await;
            let leased = store.lease(1, HOUR).await.expect("lease");
            store
                .dead_letter(leased[0].id, reason())
                .await
                .expect("dead letter");
        }
        // At 25 s: older than 10 s are those of 0 s and 10 s.
        h.clock.advance(Duration::from_secs(5));
        let ten = Duration::from_secs(10);
        assert_eq!(store.purge_rejected(ten).await.expect("purge"), 2);
        let kept = store.rejected(10).await.expect("rejected");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].input.code, "c");
        assert_eq!(stats(store).await.dead_letters, 3, "dead letters untouched");
        assert_eq!(store.purge_dead_letters(ten).await.expect("purge"), 2);
        let dead = store.dead_letters(10).await.expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message_id, "c");
        assert_eq!(
            stats(store).await,
            Stats {
                queued: 0,
                dead_letters: 1,
                rejected: 1
            }
        );
        // Nothing more is that old.
        assert_eq!(store.purge_rejected(ten).await.expect("purge"), 0);
        // Ids are never given twice, purged or not.
        let append = Append {
            events: Vec::new(),
            rejected: vec![rejection(None, "d")],
        };
        append_ok(store, append, DAY).await;
        let listed = store.rejected(10).await.expect("rejected");
        assert!(listed[1].id > listed[0].id, "{listed:?}");
        // Zero: everything, even what the clock would say is not yet received.
        h.clock.set(common::start());
        assert_eq!(store.purge_rejected(Duration::ZERO).await.expect("all"), 2);
        assert_eq!(
            store.purge_dead_letters(Duration::ZERO).await.expect("all"),
            1
        );
        assert_eq!(stats(store).await, Stats::default());
    }

    pub(crate) async fn a_purge_stops_at_the_first_younger_row(h: &Harness) {
        let store = &*h.store;
        let one = |code: &str| Append {
            events: Vec::new(),
            rejected: vec![rejection(None, code)],
        };
        // At 10 s; then the clock steps back to 0 s.
        h.clock.advance(Duration::from_secs(10));
        append_ok(store, one("late"), DAY).await;
        h.clock.set(common::start());
        append_ok(store, one("early"), DAY).await;
        // At 30 s, older than 25 s is only "early", behind the younger "late": it waits.
        h.clock.advance(Duration::from_secs(30));
        let older = Duration::from_secs(25);
        assert_eq!(store.purge_rejected(older).await.expect("purge"), 0);
        // Once "late" is old enough too, both go.
        assert_eq!(
            store
                .purge_rejected(Duration::from_secs(20))
                .await
                .expect("purge"),
            2
        );
    }

    pub(crate) async fn purges_delete_more_than_one_chunk(h: &Harness) {
        let n = 5_100;
        let append = Append {
            events: Vec::new(),
            rejected: (0..n).map(|_| rejection(None, "invalid_json")).collect(),
        };
        append_ok(&*h.store, append, DAY).await;
        h.clock.advance(Duration::from_secs(1));
        assert_eq!(
            h.store.purge_rejected(Duration::ZERO).await.expect("purge"),
            n as u64
        );
        assert_eq!(stats(&*h.store).await.rejected, 0);
        assert!(h.store.rejected(1).await.expect("rejected").is_empty());
    }

    pub(crate) async fn stats_count_every_table(h: &Harness) {
        let store = &*h.store;
        assert_eq!(stats(store).await, Stats::default());
        let append = Append {
            events: numbered("web", "m", 5).events,
            rejected: vec![rejection(None, "invalid_json")],
        };
        append_ok(store, append, DAY).await;
        append_ok(store, numbered("web", "m", 5), DAY).await; // all duplicates
        let leased = store.lease(3, HOUR).await.expect("lease");
        store.ack(&[leased[0].id]).await.expect("ack");
        let reason = DeadLetterReason {
            status: Some(400),
            detail: "bad".into(),
        };
        store
            .dead_letter(leased[1].id, reason)
            .await
            .expect("dead letter");
        store.release(&[leased[2].id]).await.expect("release");
        assert_eq!(
            stats(store).await,
            Stats {
                queued: 3,
                dead_letters: 1,
                rejected: 1
            }
        );
    }

    pub(crate) async fn expire_dedup_forgets_only_old_keys(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["old"]), HOUR).await;
        h.clock.advance(Duration::from_secs(30 * 60));
        append_ok(store, events("web", &["new"]), HOUR).await;
        h.clock.advance(Duration::from_secs(30 * 60));
        assert_eq!(store.expire_dedup(HOUR).await.expect("expire"), 1);
        assert_eq!(store.expire_dedup(HOUR).await.expect("expire again"), 0);
        assert_eq!(
            append_ok(store, events("web", &["old", "new"]), HOUR).await,
            vec![false, true]
        );
        // Expiry never touches the queue.
        assert_eq!(stats(store).await.queued, 3);
    }

    pub(crate) async fn expire_dedup_removes_more_than_one_chunk(h: &Harness) {
        let store = &*h.store;
        append_ok(store, numbered("web", "m", 12_000), HOUR).await;
        h.clock.advance(HOUR);
        assert_eq!(store.expire_dedup(HOUR).await.expect("expire"), 12_000);
        assert_eq!(store.expire_dedup(HOUR).await.expect("expire again"), 0);
    }

    pub(crate) async fn expire_dedup_counts_no_key_claimed_again(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["k"]), HOUR).await;
        h.clock.advance(HOUR + Duration::from_secs(60));
        // Past its window: queued again, and claimed again from now.
        assert_eq!(
            append_ok(store, events("web", &["k"]), HOUR).await,
            vec![false]
        );
        h.clock.advance(Duration::from_secs(60));
        // Its first claim is old, but the key is not forgotten: nothing to count.
        assert_eq!(store.expire_dedup(HOUR).await.expect("expire"), 0);
        assert_eq!(
            append_ok(store, events("web", &["k"]), HOUR).await,
            vec![true]
        );
    }

    pub(crate) async fn operations_on_unknown_ids_do_nothing(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a"]), DAY).await;
        let unknown: EventId = 424_242;
        store.ack(&[unknown]).await.expect("ack");
        store.retry(unknown, h.clock_now()).await.expect("retry");
        store.release(&[unknown]).await.expect("release");
        let reason = DeadLetterReason {
            status: None,
            detail: "x".into(),
        };
        store
            .dead_letter(unknown, reason)
            .await
            .expect("dead letter");
        store.ack(&[]).await.expect("ack none");
        assert_eq!(
            stats(store).await,
            Stats {
                queued: 1,
                dead_letters: 0,
                rejected: 0
            }
        );
        assert_eq!(lease_ids(store, 10).await, vec!["a"]);
    }

    pub(crate) async fn ack_counts_each_event_once(h: &Harness) {
        let store = &*h.store;
        append_ok(store, events("web", &["a", "b", "c"]), DAY).await;
        let leased = store.lease(10, HOUR).await.expect("lease");
        let (a, b) = (leased[0].id, leased[1].id);
        // Repeated, unknown and already acknowledged ids change nothing.
        store.ack(&[a, a, 424_242, b, a]).await.expect("ack");
        store.ack(&[a, b]).await.expect("ack again");
        assert_eq!(stats(store).await.queued, 1);
        h.clock.advance(HOUR);
        assert_eq!(lease_ids(store, 10).await, vec!["c"]);
    }

    pub(crate) async fn ack_of_runs_and_gaps_deletes_exactly_those(h: &Harness) {
        let store = &*h.store;
        append_ok(store, numbered("web", "m", 10), DAY).await;
        let leased = store.lease(10, HOUR).await.expect("lease");
        let id = |i: usize| leased[i].id;
        // Out of order, runs of consecutive ids with gaps between, one run acked before.
        store.ack(&[id(8)]).await.expect("ack");
        store
            .ack(&[id(7), id(2), id(0), id(1), id(5), id(8)])
            .await
            .expect("ack");
        assert_eq!(stats(store).await.queued, 4);
        h.clock.advance(HOUR);
        let mut left = lease_ids(store, 10).await;
        left.sort();
        assert_eq!(left, vec!["m-3", "m-4", "m-6", "m-9"]);
    }

    pub(crate) async fn check_writable_answers(h: &Harness) {
        h.store.check_writable().await.expect("writable");
        assert_eq!(stats(&*h.store).await, Stats::default());
    }
}

impl common::Harness {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use stipple_store::Clock;
        self.clock.now()
    }
}
