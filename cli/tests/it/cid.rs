//! The vault's CIDs equal what `ipfs add` gives, as printed by Debian's
//! `ipfs_cid` (package `ipfs-cid`), for small, multi-chunk and multi-level files.

use std::process::Command;

use cohort_engine::storage::cid::{CHUNK_SIZE, MAX_LINKS, cid_of};
use rand::{Rng, SeedableRng};

fn ipfs_cid(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("block");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("ipfs_cid").arg(&file).output().unwrap_or_else(|e| {
        panic!("`ipfs_cid` is needed to check CIDs ({e}); install Debian's `ipfs-cid` package (scripts/test does)")
    });
    assert!(
        out.status.success(),
        "ipfs_cid failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ipfs_cid prints JSON");
    v["CIDv1"].as_str().expect("CIDv1 field").to_owned()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

#[test]
fn small_blocks_match_ipfs() {
    for (n, seed) in [(0, 1), (1, 2), (100, 3), (4096, 4), (CHUNK_SIZE, 5)] {
        let bytes = random_bytes(n, seed);
        let ours = cid_of(&bytes);
        assert!(ours.starts_with("bafy"), "{ours}");
        assert_eq!(ours, ipfs_cid(&bytes), "{n} bytes");
    }
}

#[test]
fn blocks_over_256k_match_ipfs() {
    for n in [CHUNK_SIZE + 1, 300_000, 5 * CHUNK_SIZE + 17] {
        let bytes = random_bytes(n, n as u64);
        assert_eq!(cid_of(&bytes), ipfs_cid(&bytes), "{n} bytes");
    }
}

#[test]
fn two_level_dag_matches_ipfs() {
    // More chunks than one node can link (174): the balanced layout grows a level.
    let n = (MAX_LINKS + 2) * CHUNK_SIZE + 99;
    let bytes = random_bytes(n, 7);
    assert_eq!(cid_of(&bytes), ipfs_cid(&bytes), "{n} bytes");
}

#[test]
fn stored_vault_blocks_match_ipfs() {
    let (_tmp, _dir, vault) = super::vault();
    let content =
        serde_json::to_vec(&serde_json::json!({"resourceType": "Patient", "id": "p1"})).unwrap();
    let big = random_bytes(400_000, 9);
    for (id, body) in [
        ("Patient/p1", content.as_slice()),
        ("Patient/p2", big.as_slice()),
    ] {
        let rec = cohort_engine::records::vault::NewRecord {
            patient_id: id,
            record_id: id,
            resource_type: "Patient",
            content: body,
        };
        let (_, rv) = vault.put(&super::access(), &rec).unwrap();
        let sealed = vault.blocks().get(&rv.cid).unwrap();
        assert_eq!(ipfs_cid(&sealed), rv.cid, "{id}");
    }
}
