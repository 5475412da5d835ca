//! The members' Merkle tree of a committed query: one leaf per address in
//! the study's consenting set at the time of the query, hashed as
//! OpenZeppelin's `MerkleProof` expects, so `ResearchStudy.claim` verifies
//! a patient's proof on chain.
//!
//! A leaf is `keccak256(keccak256(abi.encode(account)))` (hashed twice so
//! that no inner node can pass for a leaf), inner nodes hash their two
//! children in sorted order, and a node without a sibling moves up
//! unchanged.
//!
//! A leaf carries no amount. A query's fee prices the privacy it cost and
//! is shared equally by every consenting patient, whoever matched its
//! predicate: the contract pays each member `fee / members`. An amount per
//! leaf would let the fee vary with the data (paying the patients whose
//! rows answered makes the payment itself a release), so the tree is a
//! plain set, and its root and size are all the chain learns, both
//! already public through consent transactions.

use std::collections::BTreeSet;

use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::SolValue;

use crate::error::{Error, Result};

/// The tree over a query's consenting set.
#[derive(Debug, Clone)]
pub struct MemberTree {
    tree: LeafTree,
    members: BTreeSet<Address>,
}

/// A tree over distinct leaves, hashed as OpenZeppelin's `MerkleProof`
/// expects: the members' tree, and the custodian's anchored batches of
/// record versions ([`record_leaf`]).
#[derive(Debug, Clone)]
pub struct LeafTree {
    /// Levels from the sorted leaves up to the root.
    levels: Vec<Vec<B256>>,
}

/// The leaf of one record version in an anchored batch:
/// `keccak256(keccak256(abi.encode(recordId, version, dataHash)))`.
pub fn record_leaf(record_id: B256, version: u64, data_hash: B256) -> B256 {
    keccak256(keccak256(
        (record_id, alloy::primitives::U256::from(version), data_hash).abi_encode(),
    ))
}

impl LeafTree {
    /// The tree of `leaves` (at least one, none twice).
    pub fn new(leaves: impl IntoIterator<Item = B256>) -> Result<LeafTree> {
        let mut leaves: Vec<B256> = leaves.into_iter().collect();
        leaves.sort();
        if leaves.is_empty() {
            return Err(Error::Config(
                "a Merkle tree needs at least one leaf".into(),
            ));
        }
        if let Some(w) = leaves.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!("the leaf {} appears twice", w[0])));
        }
        let mut levels = vec![leaves];
        while levels.last().expect("a level").len() > 1 {
            let below = levels.last().expect("a level");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(*a, *b),
                    [a] => *a,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Ok(LeafTree { levels })
    }

    /// The root.
    pub fn root(&self) -> B256 {
        self.levels.last().expect("a level")[0]
    }

    /// How many leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether it has no leaf (it never has none).
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The proof of `leaf`, if it is in the tree.
    pub fn proof(&self, leaf: B256) -> Option<Vec<B256>> {
        let mut index = self.levels[0].binary_search(&leaf).ok()?;
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            if sibling < level.len() {
                proof.push(level[sibling]);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// The leaf of `account`.
pub fn leaf(account: Address) -> B256 {
    keccak256(keccak256(account.abi_encode()))
}

fn hash_pair(a: B256, b: B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(low.as_slice());
    bytes[32..].copy_from_slice(high.as_slice());
    keccak256(bytes)
}

impl MemberTree {
    /// The tree of `members`; an address may appear once and the set may
    /// not be empty (a query with no consenting patient commits zero
    /// members and no root).
    pub fn new(members: impl IntoIterator<Item = Address>) -> Result<MemberTree> {
        let mut set = BTreeSet::new();
        for account in members {
            if !set.insert(account) {
                return Err(Error::Config(format!(
                    "{account} appears twice in a query's consenting set"
                )));
            }
        }
        if set.is_empty() {
            return Err(Error::Config(
                "a member tree needs at least one member (commit zero members without a root)"
                    .into(),
            ));
        }
        let tree = LeafTree::new(set.iter().map(|a| leaf(*a)))?;
        Ok(MemberTree { tree, members: set })
    }

    /// The root committed on chain.
    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    /// How many members: the `members` committed with the root.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the tree is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `account` is a member.
    pub fn contains(&self, account: Address) -> bool {
        self.members.contains(&account)
    }

    /// The proof of `account`'s leaf, if it is a member.
    pub fn proof(&self, account: Address) -> Option<Vec<B256>> {
        if !self.contains(account) {
            return None;
        }
        self.tree.proof(leaf(account))
    }
}

/// Whether `proof` shows `leaf` under `root` (what `MerkleProof.verify` checks).
pub fn verify(root: B256, leaf: B256, proof: &[B256]) -> bool {
    proof
        .iter()
        .fold(leaf, |node, sibling| hash_pair(node, *sibling))
        == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    #[test]
    fn every_member_proves_membership_and_no_one_else_does() {
        for n in 1..=9u8 {
            let tree = MemberTree::new((1..=n).map(account)).unwrap();
            assert_eq!(tree.len(), n as usize);
            for i in 1..=n {
                assert!(tree.contains(account(i)));
                let proof = tree.proof(account(i)).unwrap();
                assert!(verify(tree.root(), leaf(account(i)), &proof), "n={n} i={i}");
                // The proof is the member's alone.
                assert!(!verify(tree.root(), leaf(account(n + 1)), &proof));
            }
            assert!(!tree.contains(account(n + 1)));
            assert!(tree.proof(account(n + 1)).is_none());
        }
    }

    #[test]
    fn the_root_depends_on_the_set_not_its_order() {
        let a = MemberTree::new([account(3), account(1), account(2)]).unwrap();
        let b = MemberTree::new([account(1), account(2), account(3)]).unwrap();
        assert_eq!(a.root(), b.root());
        let c = MemberTree::new([account(1), account(2)]).unwrap();
        assert_ne!(a.root(), c.root());
        // One member: the root is its leaf and the proof is empty.
        let one = MemberTree::new([account(9)]).unwrap();
        assert_eq!(one.root(), leaf(account(9)));
        assert_eq!(one.proof(account(9)).unwrap(), Vec::<B256>::new());
    }

    #[test]
    fn duplicates_and_empty_sets_are_refused() {
        assert!(MemberTree::new([account(1), account(1)]).is_err());
        assert!(MemberTree::new([]).is_err());
    }
}
