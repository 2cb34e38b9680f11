//! Artifacts: chunked storage, verified fetches, and hashing.

use crate::helpers::{backend, migrated, model_file, pseudo_random, push, Raw};
use sha2::{Digest, Sha256};
use std::path::Path;
use vatic_store::StoreError;
use vatic_testkit::TestDb;

const MIB: usize = 1 << 20;

fn folder_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn sha256_file_matches_the_reference_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abc");
    std::fs::write(&path, b"abc").unwrap();
    assert_eq!(
        vatic_store::sha256_file(&path).unwrap(),
        (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
            3
        ),
        "FIPS 180-2 test vector"
    );
    let bytes = pseudo_random(2 * MIB + 12345, 7);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        vatic_store::sha256_file(&path).unwrap(),
        (hex::encode(Sha256::digest(&bytes)), bytes.len() as u64),
        "a file spanning several read chunks"
    );
}

#[tokio::test]
async fn artifacts_round_trip_byte_for_byte() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let mut raw = Raw::connect(&db).await;
        for (seed, len, chunks) in [(20, 0, 1), (21, MIB, 1), (22, MIB * 5 / 2, 3), (23, 17, 1)] {
            let file = model_file(&pseudo_random(len, seed));
            push(&store, &format!("m{seed}"), None, &file, "alice")
                .await
                .unwrap();
            assert!(
                store.has_artifact(&file.sha256).await.unwrap(),
                "{b}: {len} bytes stored"
            );
            let sql = format!(
                "SELECT CAST(chunks AS BIGINT) FROM artifacts WHERE sha256 = '{}'",
                file.sha256
            );
            assert_eq!(
                raw.count(&sql).await,
                chunks,
                "{b}: {len} bytes in {chunks} chunk(s)"
            );

            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("nested/folder/model.onnx");
            let size = store
                .fetch_artifact(&file.sha256, &dest)
                .await
                .unwrap_or_else(|e| panic!("{b}: fetch {len} bytes: {e}"));
            assert_eq!(size, len as u64, "{b}");
            let got = std::fs::read(&dest).unwrap();
            assert!(
                got == file.bytes,
                "{b}: {len} bytes differ after the round trip"
            );
            assert_eq!(
                folder_entries(dest.parent().unwrap()),
                ["model.onnx"],
                "{b}: no temporary file left"
            );

            // Fetching again replaces the file in place.
            std::fs::write(&dest, b"stale").unwrap();
            vatic_store::fetch_artifact_to(&store, &file.sha256, &dest)
                .await
                .unwrap();
            assert!(
                std::fs::read(&dest).unwrap() == file.bytes,
                "{b}: refetch of {len} bytes"
            );
        }
    }
}

async fn assert_fetch_refused(store: &vatic_store::Store, sha256: &str, what: &str, b: &str) {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("model.onnx");
    match store.fetch_artifact(sha256, &dest).await {
        Ok(n) => panic!("{b}: {what}: fetched {n} bytes"),
        Err(e) => assert!(
            matches!(e, StoreError::Artifact { sha256: ref s, .. } if s == sha256),
            "{b}: {what}: {e:?}"
        ),
    }
    assert!(
        !dest.exists(),
        "{b}: {what}: a file was left at the destination"
    );
    assert!(
        folder_entries(out.path()).is_empty(),
        "{b}: {what}: left {:?}",
        folder_entries(out.path())
    );
}

#[tokio::test]
async fn tampered_or_missing_chunks_are_refused() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let mut raw = Raw::connect(&db).await;

        let flipped = model_file(&pseudo_random(MIB * 5 / 2, 30));
        push(&store, "flipped", None, &flipped, "alice")
            .await
            .unwrap();
        let mut chunk = raw.chunk(&flipped.sha256, 1).await.expect("chunk 1 stored");
        chunk[1000] ^= 0x01;
        raw.set_chunk(&flipped.sha256, 1, chunk).await;
        assert_fetch_refused(&store, &flipped.sha256, "one bit flipped", b).await;

        let shortened = model_file(&pseudo_random(MIB * 5 / 2, 31));
        push(&store, "shortened", None, &shortened, "alice")
            .await
            .unwrap();
        let mut chunk = raw
            .chunk(&shortened.sha256, 2)
            .await
            .expect("chunk 2 stored");
        chunk.pop();
        raw.set_chunk(&shortened.sha256, 2, chunk).await;
        assert_fetch_refused(&store, &shortened.sha256, "last byte cut", b).await;

        let gap = model_file(&pseudo_random(MIB * 5 / 2, 32));
        push(&store, "gap", None, &gap, "alice").await.unwrap();
        let deleted = raw
            .execute(
                "DELETE FROM artifact_chunks WHERE seq = 1 AND sha256 = $1",
                &gap.sha256,
            )
            .await;
        assert_eq!(deleted, 1, "{b}");
        assert_fetch_refused(&store, &gap.sha256, "a chunk missing", b).await;
    }
}

#[tokio::test]
async fn unknown_artifacts_are_not_found() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let unknown = hex::encode(Sha256::digest(b"never pushed"));
        assert!(!store.has_artifact(&unknown).await.unwrap(), "{b}");
        assert_fetch_refused(&store, &unknown, "unknown hash", b).await;
    }
}
