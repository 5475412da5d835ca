//! The contributors' Merkle tree of a committed query: one leaf per
//! (account, amount), hashed as OpenZeppelin's `MerkleProof` expects, so
//! `ResearchStudy.claim` verifies a patient's proof on chain.
//!
//! A leaf is `keccak256(keccak256(abi.encode(account, amount)))` (hashed
//! twice so that no inner node can pass for a leaf), inner nodes hash
//! their two children in sorted order, and a node without a sibling moves
//! up unchanged.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::sol_types::SolValue;

use crate::error::{Error, Result};

/// The tree over a query's contributors.
#[derive(Debug, Clone)]
pub struct ContributorTree {
    /// Levels from the sorted leaves up to the root.
    levels: Vec<Vec<B256>>,
    shares: BTreeMap<Address, U256>,
}

/// The leaf of `account`'s `amount`.
pub fn leaf(account: Address, amount: U256) -> B256 {
    keccak256(keccak256((account, amount).abi_encode()))
}

fn hash_pair(a: B256, b: B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(low.as_slice());
    bytes[32..].copy_from_slice(high.as_slice());
    keccak256(bytes)
}

impl ContributorTree {
    /// The tree of `shares`; an account may appear once.
    pub fn new(shares: impl IntoIterator<Item = (Address, U256)>) -> Result<ContributorTree> {
        let mut map = BTreeMap::new();
        for (account, amount) in shares {
            if map.insert(account, amount).is_some() {
                return Err(Error::Config(format!(
                    "{account} appears twice among a query's contributors"
                )));
            }
        }
        if map.is_empty() {
            return Err(Error::Config(
                "a contributor tree needs at least one contributor".into(),
            ));
        }
        let mut leaves: Vec<B256> = map.iter().map(|(a, v)| leaf(*a, *v)).collect();
        leaves.sort();
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
        Ok(ContributorTree {
            levels,
            shares: map,
        })
    }

    /// The root committed on chain.
    pub fn root(&self) -> B256 {
        self.levels.last().expect("a level")[0]
    }

    /// The sum of every share.
    pub fn total(&self) -> U256 {
        self.shares.values().copied().sum()
    }

    /// How many contributors.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    /// Whether the tree is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// `account`'s amount and the proof of its leaf.
    pub fn proof(&self, account: Address) -> Option<(U256, Vec<B256>)> {
        let amount = *self.shares.get(&account)?;
        let mut index = self.levels[0].binary_search(&leaf(account, amount)).ok()?;
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            if sibling < level.len() {
                proof.push(level[sibling]);
            }
            index /= 2;
        }
        Some((amount, proof))
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
    fn every_proof_verifies_and_none_verifies_for_another_amount() {
        for n in 1..=9u8 {
            let tree =
                ContributorTree::new((1..=n).map(|i| (account(i), U256::from(i as u64 * 10))))
                    .unwrap();
            for i in 1..=n {
                let (amount, proof) = tree.proof(account(i)).unwrap();
                assert_eq!(amount, U256::from(i as u64 * 10));
                assert!(
                    verify(tree.root(), leaf(account(i), amount), &proof),
                    "n={n} i={i}"
                );
                assert!(!verify(
                    tree.root(),
                    leaf(account(i), amount + U256::from(1)),
                    &proof
                ));
            }
            assert!(tree.proof(account(n + 1)).is_none());
        }
    }

    #[test]
    fn duplicates_and_empty_trees_are_refused() {
        assert!(
            ContributorTree::new([(account(1), U256::from(1)), (account(1), U256::from(2))])
                .is_err()
        );
        assert!(ContributorTree::new([]).is_err());
    }
}
