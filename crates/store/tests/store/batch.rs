//! Batch jobs: chunks claimed under a lease, results stored only by the claim that holds the
//! chunk, cancel, retry and retention.

use crate::helpers::{backend, migrated};
use std::collections::BTreeSet;
use std::time::Duration;
use vatic_schema::batch::{FileFormat, JobState};
use vatic_store::{NewJob, Store};
use vatic_testkit::TestDb;

const LEASE: Duration = Duration::from_secs(60);

fn new_job(id: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: id.into(),
        model: "m".into(),
        version: Some("1".into()),
        label: None,
        input_format: FileFormat::Jsonl,
        output_format: FileFormat::Csv,
        layout: "{}".into(),
        api_key: key.map(str::to_string),
    }
}

/// A queued job of `chunks` chunks of two rows each.
async fn queued(store: &Store, id: &str, chunks: i64) {
    store.create_job(&new_job(id, Some("k1"))).await.unwrap();
    for seq in 0..chunks {
        let first = seq * 2 + 1;
        let data = format!("[{first}]\n[{}]\n", first + 1);
        store
            .add_chunk(id, seq, first, 2, data.as_bytes())
            .await
            .unwrap();
    }
    store.finish_upload(id, chunks * 2, chunks).await.unwrap();
}

async fn state(store: &Store, id: &str) -> vatic_schema::batch::BatchJob {
    store.job(id).await.unwrap().unwrap().0
}

fn lines(rows: std::ops::Range<i64>, failed: &[i64]) -> Vec<u8> {
    rows.map(|r| {
        if failed.contains(&r) {
            format!("{{\"row\":{r},\"error\":\"bad\"}}\n")
        } else {
            format!("{{\"row\":{r},\"outputs\":[]}}\n")
        }
    })
    .collect::<String>()
    .into_bytes()
}

#[tokio::test]
async fn chunks_run_once_each_and_the_job_succeeds_with_its_last() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j1", 2).await;
        let job = state(&store, "j1").await;
        assert_eq!(job.state, JobState::Queued, "{b}");
        assert_eq!((job.rows_total, job.input_bytes), (4, 16), "{b}");

        // A lease longer than the calendar holds until the last time the database stores.
        let first = store.claim_chunk(Duration::MAX).await.unwrap().unwrap();
        assert_eq!((first.seq, first.first_row, first.rows), (0, 1, 2), "{b}");
        assert_eq!(first.input, b"[1]\n[2]\n", "{b}");
        assert_eq!(
            (first.model.as_str(), first.version.as_deref()),
            ("m", Some("1")),
            "{b}"
        );
        assert_eq!(state(&store, "j1").await.state, JobState::Running, "{b}");
        let second = store.claim_chunk(LEASE).await.unwrap().unwrap();
        assert_eq!(second.seq, 1, "{b}");
        assert!(
            store.claim_chunk(LEASE).await.unwrap().is_none(),
            "{b}: every chunk is held"
        );

        assert!(
            store
                .complete_chunk(&second, &lines(3..5, &[4]), 1)
                .await
                .unwrap(),
            "{b}"
        );
        // Twice is refused: the claim ended with the first.
        assert!(
            !store
                .complete_chunk(&second, &lines(3..5, &[]), 0)
                .await
                .unwrap(),
            "{b}"
        );
        let job = state(&store, "j1").await;
        assert_eq!(
            (job.state, job.rows_done, job.rows_failed),
            (JobState::Running, 2, 1),
            "{b}"
        );
        assert!(store.renew_claim(&first, LEASE).await.unwrap(), "{b}");
        assert!(
            store
                .complete_chunk(&first, &lines(1..3, &[]), 0)
                .await
                .unwrap(),
            "{b}"
        );
        let job = state(&store, "j1").await;
        assert_eq!(
            (job.state, job.rows_done, job.rows_failed),
            (JobState::Succeeded, 4, 1),
            "{b}"
        );
        assert!(
            job.finished_at.is_some() && job.rows_per_second.is_some(),
            "{b}: {job:?}"
        );
        assert_eq!(job.eta_seconds, None, "{b}: an ended job has no ETA");

        let results = store.chunk_results("j1", -1, 10).await.unwrap();
        let all: Vec<u8> = results
            .iter()
            .flat_map(|c| c.results.clone().unwrap())
            .collect();
        assert_eq!(all, lines(1..5, &[4]), "{b}: in input order");
        let page = store.chunk_results("j1", 0, 10).await.unwrap();
        assert_eq!(
            page.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![1],
            "{b}"
        );
    }
}

#[tokio::test]
async fn claims_take_the_oldest_jobs_chunks_in_order_then_the_next_jobs() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j1", 2).await;
        queued(&store, "j2", 2).await;
        let mut claimed = Vec::new();
        while let Some(claim) = store.claim_chunk(LEASE).await.unwrap() {
            claimed.push((claim.job.clone(), claim.seq));
            // Done or held, the first job's chunks are passed over for the next job's.
            if claimed.len() == 1 {
                store
                    .complete_chunk(&claim, &lines(1..3, &[]), 0)
                    .await
                    .unwrap();
            }
        }
        let ids = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
            v.iter().map(|(j, s)| (j.to_string(), *s)).collect()
        };
        assert_eq!(
            claimed,
            ids(&[("j1", 0), ("j1", 1), ("j2", 0), ("j2", 1)]),
            "{b}"
        );
    }
}

#[tokio::test]
async fn a_claim_that_ran_out_is_taken_again_and_its_late_answer_refused() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j2", 1).await;
        // A claim that runs out at once: its process died.
        let dead = store.claim_chunk(Duration::ZERO).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = store.claim_chunk(LEASE).await.unwrap().unwrap();
        assert_eq!((again.job.as_str(), again.seq), ("j2", 0), "{b}");
        assert_ne!(again.lease, dead.lease, "{b}");
        assert!(!store.renew_claim(&dead, LEASE).await.unwrap(), "{b}");
        assert!(
            !store
                .complete_chunk(&dead, &lines(1..3, &[]), 0)
                .await
                .unwrap(),
            "{b}"
        );
        // Putting back a chunk the claim lost changes nothing.
        store.release_claim(&dead, Duration::ZERO).await.unwrap();
        assert!(store.claim_chunk(LEASE).await.unwrap().is_none(), "{b}");
        assert!(
            store
                .complete_chunk(&again, &lines(1..3, &[]), 0)
                .await
                .unwrap(),
            "{b}"
        );
        let job = state(&store, "j2").await;
        assert_eq!((job.state, job.rows_done), (JobState::Succeeded, 2), "{b}");
    }
}

#[tokio::test]
async fn a_chunk_put_back_waits_then_runs_again() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j3", 1).await;
        let claim = store.claim_chunk(LEASE).await.unwrap().unwrap();
        store
            .release_claim(&claim, Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(
            store.claim_chunk(LEASE).await.unwrap().is_none(),
            "{b}: not before its time"
        );
        queued(&store, "j4", 1).await;
        let other = store.claim_chunk(LEASE).await.unwrap().unwrap();
        store.release_claim(&other, Duration::ZERO).await.unwrap();
        let back = store.claim_chunk(LEASE).await.unwrap().unwrap();
        assert_eq!(back.job, "j4", "{b}");
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_chunk() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j5", 40).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                while let Some(claim) = store.claim_chunk(LEASE).await.unwrap() {
                    let rows = claim.first_row..claim.first_row + claim.rows;
                    assert!(store
                        .complete_chunk(&claim, &lines(rows, &[]), 0)
                        .await
                        .unwrap());
                    mine.push(claim.seq);
                }
                mine
            });
        }
        let mut seen = Vec::new();
        while let Some(mine) = tasks.join_next().await {
            seen.extend(mine.unwrap());
        }
        seen.sort();
        assert_eq!(seen, (0..40).collect::<Vec<_>>(), "{b}: each chunk once");
        let job = state(&store, "j5").await;
        assert_eq!((job.state, job.rows_done), (JobState::Succeeded, 80), "{b}");
    }
}

#[tokio::test]
async fn cancel_stops_claims_and_retry_runs_failed_and_unrun_rows() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "j6", 3).await;
        let first = store.claim_chunk(LEASE).await.unwrap().unwrap();
        assert!(
            store
                .complete_chunk(&first, &lines(1..3, &[2]), 1)
                .await
                .unwrap(),
            "{b}"
        );
        let running = store.claim_chunk(LEASE).await.unwrap().unwrap();
        assert!(
            store.cancel_job("j6", "cancelled by test").await.unwrap(),
            "{b}"
        );
        assert!(
            !store.cancel_job("j6", "again").await.unwrap(),
            "{b}: ended already"
        );
        assert!(store.claim_chunk(LEASE).await.unwrap().is_none(), "{b}");
        // The chunk that was running keeps its results.
        assert!(
            store
                .complete_chunk(&running, &lines(3..5, &[]), 0)
                .await
                .unwrap(),
            "{b}"
        );
        let job = state(&store, "j6").await;
        assert_eq!(
            (job.state, job.rows_done, job.rows_failed),
            (JobState::Cancelled, 4, 1),
            "{b}"
        );
        assert_eq!(job.error.as_deref(), Some("cancelled by test"), "{b}");

        assert!(store.retry_job("j6").await.unwrap(), "{b}");
        let job = state(&store, "j6").await;
        assert_eq!(
            (job.state, job.rows_done, job.rows_failed),
            (JobState::Queued, 3, 0),
            "{b}"
        );
        let mut claimed = BTreeSet::new();
        while let Some(claim) = store.claim_chunk(LEASE).await.unwrap() {
            claimed.insert(claim.seq);
            let rows = claim.first_row..claim.first_row + claim.rows;
            if claim.seq == 0 {
                // Only the failed row runs again; the others keep their results.
                assert_eq!(
                    claim.previous.as_deref(),
                    Some(&lines(1..3, &[2])[..]),
                    "{b}"
                );
                assert_eq!(claim.previous_failed, 1, "{b}");
            } else {
                assert!(claim.previous.is_none(), "{b}");
            }
            assert!(
                store
                    .complete_chunk(&claim, &lines(rows, &[]), 0)
                    .await
                    .unwrap(),
                "{b}"
            );
        }
        assert_eq!(claimed, BTreeSet::from([0, 2]), "{b}");
        let job = state(&store, "j6").await;
        assert_eq!(
            (job.state, job.rows_done, job.rows_failed),
            (JobState::Succeeded, 6, 0),
            "{b}"
        );
        assert!(
            !store.retry_job("j6").await.unwrap(),
            "{b}: nothing left to run"
        );
    }
}

#[tokio::test]
async fn jobs_are_listed_per_key_and_expire() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        queued(&store, "a", 1).await;
        store.create_job(&new_job("b", Some("k2"))).await.unwrap();
        store.finish_upload("b", 0, 0).await.unwrap();
        // An upload that never finished.
        store.create_job(&new_job("c", Some("k1"))).await.unwrap();
        let ids = |jobs: Vec<vatic_schema::batch::BatchJob>| {
            jobs.into_iter().map(|j| j.id).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(store.jobs(None, 10).await.unwrap()),
            vec!["b", "a"],
            "{b}"
        );
        assert_eq!(
            ids(store.jobs(Some(Some("k1")), 10).await.unwrap()),
            vec!["a"],
            "{b}"
        );
        assert!(store.jobs(Some(None), 10).await.unwrap().is_empty(), "{b}");
        assert_eq!(
            state(&store, "b").await.state,
            JobState::Succeeded,
            "{b}: no rows"
        );

        let kept = store.expire_jobs(LEASE, LEASE).await.unwrap();
        assert_eq!((kept.ended, kept.abandoned), (0, 0), "{b}");
        // A retention longer than the calendar keeps everything (batch.keep_days = u32::MAX).
        let forever = Duration::from_secs(u64::from(u32::MAX) * 86_400);
        let kept = store.expire_jobs(forever, forever).await.unwrap();
        assert_eq!((kept.ended, kept.abandoned), (0, 0), "{b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gone = store
            .expire_jobs(Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((gone.ended, gone.abandoned), (1, 1), "{b}");
        assert!(store.job("b").await.unwrap().is_none(), "{b}");
        assert!(store.job("c").await.unwrap().is_none(), "{b}");
        assert!(store.job("a").await.unwrap().is_some(), "{b}: still queued");
        store.delete_job("a").await.unwrap();
        assert!(
            store.chunk_results("a", -1, 10).await.unwrap().is_empty(),
            "{b}"
        );
    }
}
