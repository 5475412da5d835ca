//! Content identifiers that match `ipfs add`.
//!
//! A vault block is named by the CIDv1 that `ipfs add` (default settings:
//! 256 KiB fixed-size chunks, balanced DAG of at most 174 links per node,
//! dag-pb UnixFS leaves, sha2-256) gives the same bytes, written in base32
//! (`bafy...`). The bytes can therefore be published to any IPFS node unchanged
//! and will be found under the same name. Only the root of the DAG names the
//! block: the intermediate nodes are recomputed when needed, never stored.

use sha2::{Digest, Sha256};

/// `ipfs add`'s default chunk size (`size-262144`).
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Links per node in go-unixfs's balanced layout (`DefaultLinksPerBlock`).
pub const MAX_LINKS: usize = 174;

const DAG_PB: u64 = 0x70;
const SHA2_256: u64 = 0x12;
const UNIXFS_FILE: u64 = 2;

/// The CIDv1 (dag-pb, sha2-256, base32) `ipfs add` gives `bytes`.
pub fn cid_of(bytes: &[u8]) -> String {
    let root = build_file_dag(bytes);
    let digest = Sha256::digest(&root.block);
    let hash = multihash::Multihash::<64>::wrap(SHA2_256, &digest).expect("32-byte digest fits");
    cid::Cid::new_v1(DAG_PB, hash).to_string()
}

/// Checks that `text` is a CIDv1 of the kind the vault produces (dag-pb,
/// sha2-256), returning it normalised.
pub fn parse(text: &str) -> crate::Result<String> {
    let cid = cid::Cid::try_from(text)
        .map_err(|e| crate::Error::Invalid(format!("`{text}` is not a CID: {e}")))?;
    if cid.version() != cid::Version::V1 || cid.codec() != DAG_PB || cid.hash().code() != SHA2_256 {
        return Err(crate::Error::Invalid(format!(
            "`{text}` is not a vault CID (expected CIDv1, dag-pb, sha2-256: `bafy...`)"
        )));
    }
    Ok(cid.to_string())
}

/// A serialized dag-pb node with what its parent needs to link to it.
struct Node {
    block: Vec<u8>,
    /// Bytes of file content below this node.
    file_size: u64,
    /// Serialized size of this node plus all nodes below it (the link's Tsize).
    cumulative: u64,
}

fn build_file_dag(bytes: &[u8]) -> Node {
    if bytes.len() <= CHUNK_SIZE {
        return leaf(bytes);
    }
    let leaves: Vec<Node> = bytes.chunks(CHUNK_SIZE).map(leaf).collect();
    // go-unixfs grows the tree one level at a time until every leaf fits:
    // the smallest depth d with MAX_LINKS^d >= leaves.
    let mut depth = 1;
    let mut capacity = MAX_LINKS;
    while capacity < leaves.len() {
        depth += 1;
        capacity = capacity.saturating_mul(MAX_LINKS);
    }
    build_level(leaves, depth)
}

/// Fills a node of `depth` levels with as many leaves as it takes, greedily,
/// exactly as go-unixfs's `fillNodeRec` does.
fn build_level(mut leaves: Vec<Node>, depth: u32) -> Node {
    if depth == 0 {
        debug_assert_eq!(leaves.len(), 1);
        return leaves.pop().expect("one leaf");
    }
    let per_child = MAX_LINKS.pow(depth - 1);
    let mut children = Vec::new();
    let mut rest = leaves.into_iter().peekable();
    while rest.peek().is_some() {
        let group: Vec<Node> = rest.by_ref().take(per_child).collect();
        children.push(build_level(group, depth - 1));
    }
    internal(&children)
}

fn leaf(chunk: &[u8]) -> Node {
    let mut data = Vec::with_capacity(chunk.len() + 16);
    put_varint_field(&mut data, 1, UNIXFS_FILE);
    if !chunk.is_empty() {
        put_bytes_field(&mut data, 2, chunk);
    }
    put_varint_field(&mut data, 3, chunk.len() as u64);
    let mut block = Vec::with_capacity(data.len() + 8);
    put_bytes_field(&mut block, 1, &data);
    let len = block.len() as u64;
    Node {
        block,
        file_size: chunk.len() as u64,
        cumulative: len,
    }
}

fn internal(children: &[Node]) -> Node {
    let file_size: u64 = children.iter().map(|c| c.file_size).sum();
    let mut data = Vec::new();
    put_varint_field(&mut data, 1, UNIXFS_FILE);
    put_varint_field(&mut data, 3, file_size);
    for child in children {
        put_varint_field(&mut data, 4, child.file_size);
    }
    // dag-pb's canonical form writes Links (field 2) before Data (field 1).
    let mut block = Vec::new();
    for child in children {
        let digest = Sha256::digest(&child.block);
        let mut link = Vec::with_capacity(48);
        let mut mh = vec![SHA2_256 as u8, 32];
        mh.extend_from_slice(&digest);
        put_bytes_field(&mut link, 1, &mh); // Hash: CIDv0 bytes (a bare multihash)
        put_bytes_field(&mut link, 2, b""); // Name: go-merkledag writes an empty name
        put_varint_field(&mut link, 3, child.cumulative); // Tsize
        put_bytes_field(&mut block, 2, &link);
    }
    put_bytes_field(&mut block, 1, &data);
    let cumulative = block.len() as u64 + children.iter().map(|c| c.cumulative).sum::<u64>();
    Node {
        block,
        file_size,
        cumulative,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_has_the_well_known_cid() {
        // `ipfs add` of an empty file: QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH.
        assert_eq!(
            cid_of(b""),
            "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y"
        );
    }

    #[test]
    fn hello_world_matches_ipfs() {
        // `echo "hello world" | ipfs add --cid-version 0` gives
        // QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o.
        assert_eq!(
            cid_of(b"hello world\n"),
            "bafybeicg2rebjoofv4kbyovkw7af3rpiitvnl6i7ckcywaq6xjcxnc2mby"
        );
    }

    #[test]
    fn parse_rejects_other_cid_kinds() {
        assert!(parse("bafybeicg2rebjoofv4kbyovkw7af3rpiitvnl6i7ckcywaq6xjcxnc2mby").is_ok());
        // raw-leaves CIDv1 (bafk...) is not what the vault writes
        assert!(parse("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e").is_err());
        assert!(parse("not-a-cid").is_err());
    }
}
