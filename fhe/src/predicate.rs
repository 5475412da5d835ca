//! The non-linear layer: a comparison on an encrypted value, counted, with
//! `tfhe`. A patient encrypts under the custodian's compact public key with
//! a zero-knowledge proof of well-formed encryption (tfhe's proven compact
//! lists); the engine verifies and expands it once, when it enters, into
//! the smallest integer type that holds the column's bounds, and keeps the
//! expanded ciphertext so a query pays no expansion. A query compares each
//! value with a public constant (one encrypted bit per record), widens the
//! bits for free, adds them with tfhe's multi-operand sum, and adds the DP
//! noise under encryption. Only the custodian decryptor, which holds the
//! client key, can decrypt, and only through the ledger gate.
//!
//! tfhe's proof bounds a value to its type's width, not to the column's
//! declared bounds: a patient can submit 255 for a column declared 20..=200.
//! That cannot bias a count by more than the record's own 0 or 1, which is
//! the sensitivity the count is noised for; a layer that summed such values
//! would have to clamp them under encryption first.

use std::io::Cursor;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tfhe::integer::ciphertext::IntegerProvenCompactCiphertextListConformanceParams;
use tfhe::prelude::*;
use tfhe::safe_serialization::{safe_deserialize, safe_deserialize_conformant, safe_serialize};
use tfhe::shortint::parameters::{
    PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::zk::{CompactPkeCrs, ZkComputeLoad};
use tfhe::{
    ClientKey, CompactPublicKey, Config, ConfigBuilder, FheUint8, FheUint16, FheUint32,
    ProvenCompactCiphertextList, ServerKey, set_server_key,
};

use crate::error::{FheError, Result, malformed};
use crate::range::Bounds;
use crate::{
    Comparison, CostEstimate, DecryptionGate, EncryptedAggregate, EncryptedOp, Job, Layer, Padding,
    Sealed,
};

/// Format version of every encoding this module writes.
pub const FORMAT_VERSION: u8 = 1;
/// The most bytes read for any one tfhe object (a server key is the largest).
const SIZE_LIMIT: u64 = 1 << 31;
/// Bits one proof covers: a FheUint16, the widest value type.
const PROOF_BITS: usize = 16;

/// Seconds per record of a `COUNT WHERE v >= c` over FheUint8 values on
/// the reference machine (comparison, widening, the record's share of the
/// sum), from the `fhe` bench in docs/BENCHMARKS.md.
const SECONDS_PER_RECORD: f64 = 0.08;
/// Programmable bootstraps per record measured by the same bench (4.3:
/// the comparison's 3 and the record's share of the sum's carries).
const PBS_PER_RECORD: f64 = 4.3;

/// The cost of a predicate count over `records` values.
pub fn estimate(_op: &EncryptedOp, records: u64) -> CostEstimate {
    CostEstimate {
        layer: Layer::Tfhe,
        operations: (PBS_PER_RECORD * records as f64).ceil() as u64,
        operation: "programmable bootstraps",
        seconds: SECONDS_PER_RECORD * records as f64,
    }
}

/// The parameter set: tfhe's default 2-bit message, 2-bit carry blocks
/// (2^-128 failure probability), with the dedicated compact public-key
/// parameters that proven encryption requires.
pub fn config() -> Config {
    ConfigBuilder::with_custom_parameters(PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
        .use_dedicated_compact_public_key_parameters((
            PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        ))
        .build()
}

/// The integer type a column's values are kept in: the smallest that holds
/// its upper bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// FheUint8, for bounds within 0..=255.
    U8,
    /// FheUint16, for bounds within 0..=65535.
    U16,
}

impl Width {
    /// The width for `bounds`, or why there is none.
    pub fn for_bounds(bounds: Bounds) -> Result<Self> {
        match (bounds.lo, bounds.hi) {
            (lo, _) if lo < 0 => Err(FheError::InvalidBounds {
                lo: bounds.lo,
                hi: bounds.hi,
                why: "tfhe columns hold unsigned values",
            }),
            (_, hi) if hi <= u8::MAX as i64 => Ok(Width::U8),
            (_, hi) if hi <= u16::MAX as i64 => Ok(Width::U16),
            _ => Err(FheError::InvalidBounds {
                lo: bounds.lo,
                hi: bounds.hi,
                why: "tfhe columns hold at most 16-bit values",
            }),
        }
    }

    fn tag(self) -> u8 {
        match self {
            Width::U8 => 8,
            Width::U16 => 16,
        }
    }
}

/// What patients need to encrypt: the compact public key and the CRS of
/// the proofs. Public.
pub struct PublicParams {
    key: CompactPublicKey,
    crs: CompactPkeCrs,
}

/// The custodian's key set, generated once: the client key stays with the
/// custodian decryptor, the server key goes to the engine, the public
/// parameters to patients.
pub struct KeySet {
    /// The custodian's secret.
    pub client: CustodianKey,
    /// The engine's evaluation key.
    pub server: ServerKey,
    /// The patients' encryption parameters.
    pub public: PublicParams,
}

/// Generates a key set (about ten seconds on two cores).
pub fn generate() -> Result<KeySet> {
    let config = config();
    let client = ClientKey::generate(config);
    let server = ServerKey::new(&client);
    let key = CompactPublicKey::try_new(&client).map_err(tfhe_error)?;
    let crs = CompactPkeCrs::from_config(config, PROOF_BITS).map_err(tfhe_error)?;
    Ok(KeySet {
        client: CustodianKey(client),
        server,
        public: PublicParams { key, crs },
    })
}

impl PublicParams {
    /// Version byte, then the key and the CRS, each length-prefixed.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![FORMAT_VERSION];
        put(&mut out, &self.key)?;
        put(&mut out, &self.crs)?;
        Ok(out)
    }

    /// Reads parameters written by [`PublicParams::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("tfhe public parameters", bytes)?;
        Ok(PublicParams {
            key: r.object()?,
            crs: r.object()?,
        })
    }
}

/// Encodes the engine's server key.
pub fn server_key_to_bytes(key: &ServerKey) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    put(&mut out, key)?;
    Ok(out)
}

/// Decodes the engine's server key.
pub fn server_key_from_bytes(bytes: &[u8]) -> Result<ServerKey> {
    Reader::new("tfhe server key", bytes)?.object()
}

/// The custodian decryptor's client key.
pub struct CustodianKey(ClientKey);

impl std::fmt::Debug for CustodianKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustodianKey(<redacted>)")
    }
}

impl CustodianKey {
    /// Encoded for the key store (the caller seals it).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![FORMAT_VERSION];
        put(&mut out, &self.0)?;
        Ok(out)
    }

    /// Decodes a key written by [`CustodianKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(CustodianKey(
            Reader::new("tfhe client key", bytes)?.object()?,
        ))
    }

    /// The tfhe client key itself, for benches and tests that encrypt
    /// directly (the engine never calls it).
    pub fn client_key(&self) -> &ClientKey {
        &self.0
    }

    /// Decrypts a sealed count after the gate authorises the digest of the
    /// ciphertext itself. The result is signed: noise can take a small count
    /// below zero.
    pub fn decrypt(
        &self,
        gate: &dyn DecryptionGate,
        query_id: &str,
        sealed: &Sealed,
    ) -> Result<i64> {
        if sealed.layer != Layer::Tfhe {
            return Err(malformed(
                "sealed result",
                "the custodian decrypts only tfhe results",
            ));
        }
        let digest = result_digest(&sealed.ciphertext);
        gate.authorize(query_id, &digest)?;
        let mut r = Reader::new("tfhe result", &sealed.ciphertext)?;
        match r.byte()? {
            16 => {
                let v: u16 = r.object::<FheUint16>()?.decrypt(&self.0);
                Ok(v as i16 as i64)
            }
            32 => {
                let v: u32 = r.object::<FheUint32>()?.decrypt(&self.0);
                Ok(v as i32 as i64)
            }
            w => Err(malformed("tfhe result", format!("unknown width {w}"))),
        }
    }
}

/// Patient side: encrypts `value` under the custodian's compact public key
/// with a zero-knowledge proof bound to `context` (study, column, patient).
pub fn encrypt_proven(
    params: &PublicParams,
    value: i64,
    bounds: Bounds,
    context: &[u8],
) -> Result<Vec<u8>> {
    if value < bounds.lo || value > bounds.hi {
        return Err(FheError::OutOfRange {
            value,
            lo: bounds.lo,
            hi: bounds.hi,
        });
    }
    let width = Width::for_bounds(bounds)?;
    let mut builder = ProvenCompactCiphertextList::builder(&params.key);
    match width {
        Width::U8 => builder.push(value as u8),
        Width::U16 => builder.push(value as u16),
    };
    let list = builder
        .build_with_proof_packed(&params.crs, context, ZkComputeLoad::Proof)
        .map_err(tfhe_error)?;
    let mut out = vec![FORMAT_VERSION, width.tag()];
    put(&mut out, &list)?;
    Ok(out)
}

/// Engine side, once per submission: checks the proof against the public
/// parameters and `context`, expands the value with the server key, and
/// returns its at-rest encoding. A wrong proof, context, type or width is
/// refused here and never stored.
pub fn verify(
    params: &PublicParams,
    server: &ServerKey,
    submission: &[u8],
    bounds: Bounds,
    context: &[u8],
) -> Result<Vec<u8>> {
    let width = Width::for_bounds(bounds)?;
    let mut r = Reader::new("tfhe submission", submission)?;
    let tag = r.byte()?;
    if tag != width.tag() {
        return Err(malformed(
            "tfhe submission",
            format!(
                "a {tag}-bit value for a column kept in {} bits",
                width.tag()
            ),
        ));
    }
    let conformance = IntegerProvenCompactCiphertextListConformanceParams::from_crs_and_parameters(
        PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        &params.crs,
    );
    let list: ProvenCompactCiphertextList =
        safe_deserialize_conformant(Cursor::new(r.body()?), SIZE_LIMIT, &conformance)
            .map_err(|e| malformed("tfhe submission", e))?;
    if list.len() != 1 {
        return Err(malformed(
            "tfhe submission",
            format!("{} values, expected 1", list.len()),
        ));
    }
    set_server_key(server.clone());
    let expanded = list
        .verify_and_expand(&params.crs, &params.key, context)
        .map_err(|e| match e.kind() {
            tfhe::ErrorKind::InvalidZkProof => FheError::RangeProof { bit: 0 },
            _ => tfhe_error(e),
        })?;
    let mut out = vec![FORMAT_VERSION, width.tag()];
    match width {
        Width::U8 => put(
            &mut out,
            &expanded
                .get::<FheUint8>(0)
                .map_err(tfhe_error)?
                .ok_or_else(|| malformed("tfhe submission", "empty"))?,
        )?,
        Width::U16 => put(
            &mut out,
            &expanded
                .get::<FheUint16>(0)
                .map_err(tfhe_error)?
                .ok_or_else(|| malformed("tfhe submission", "empty"))?,
        )?,
    }
    Ok(out)
}

/// Counts records under a comparison with tfhe, with the engine's server key.
pub struct PredicateLayer {
    server: ServerKey,
}

impl PredicateLayer {
    /// The layer with the engine's evaluation key.
    pub fn new(server: ServerKey) -> Self {
        PredicateLayer { server }
    }

    /// The layer with a server key written by [`server_key_to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(PredicateLayer {
            server: server_key_from_bytes(bytes)?,
        })
    }

    /// [`verify`] with this layer's server key.
    pub fn verify(
        &self,
        params: &PublicParams,
        submission: &[u8],
        bounds: Bounds,
        context: &[u8],
    ) -> Result<Vec<u8>> {
        verify(params, &self.server, submission, bounds, context)
    }
}

impl EncryptedAggregate for PredicateLayer {
    fn layer(&self) -> Layer {
        Layer::Tfhe
    }

    fn aggregate(
        &self,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        job: &Job,
        padding: Padding<'_>,
    ) -> Result<Sealed> {
        let EncryptedOp::CountWhere { cmp, constant } = *op else {
            return Err(malformed(
                "operation",
                "tfhe answers comparisons; route sums to ElGamal",
            ));
        };
        // Every record, real or stand-in, is compared; only the real ones'
        // bits are counted.
        let real = cells.len();
        let mut work: Vec<&[u8]> = cells.to_vec();
        work.extend(padding.stand_ins(cells));
        job.start(work.len());
        // The server key is thread-local in tfhe: set it on every worker.
        set_server_key(self.server.clone());
        rayon::broadcast(|_| set_server_key(self.server.clone()));
        let wide = work.len() + (noise.unsigned_abs() as usize) >= 1 << 15;
        let mut bits: Vec<tfhe::FheBool> = work
            .par_iter()
            .enumerate()
            .map(|(i, cell)| {
                let bit = compare(i, cell, cmp, constant)?;
                job.step()?;
                Ok(bit)
            })
            .collect::<Result<_>>()?;
        std::hint::black_box(bits.split_off(real));
        let mut out = vec![FORMAT_VERSION];
        if wide {
            let mut total: FheUint32 = bits
                .into_iter()
                .map(FheUint32::cast_from)
                .collect::<Vec<_>>()
                .iter()
                .sum();
            total += noise as i32 as u32;
            out.push(32);
            put(&mut out, &total)?;
        } else {
            let mut total: FheUint16 = bits
                .into_iter()
                .map(FheUint16::cast_from)
                .collect::<Vec<_>>()
                .iter()
                .sum();
            total += noise as i16 as u16;
            out.push(16);
            put(&mut out, &total)?;
        }
        if job.is_cancelled() {
            let (done, total) = job.progress();
            return Err(FheError::Cancelled { done, total });
        }
        let digest = result_digest(&out);
        Ok(Sealed {
            layer: Layer::Tfhe,
            ciphertext: out,
            digest,
        })
    }
}

/// One record's comparison bit. A constant outside the type's range is
/// decided without touching the ciphertext (as a trivial encryption).
fn compare(i: usize, cell: &[u8], cmp: Comparison, constant: i64) -> Result<tfhe::FheBool> {
    let mut r = Reader::new("stored tfhe value", cell).map_err(|e| at_cell(i, e))?;
    match r.byte().map_err(|e| at_cell(i, e))? {
        8 => Ok(compare_typed::<FheUint8>(
            r.object().map_err(|e| at_cell(i, e))?,
            cmp,
            constant,
            u8::MAX as i64,
        )),
        16 => Ok(compare_typed::<FheUint16>(
            r.object().map_err(|e| at_cell(i, e))?,
            cmp,
            constant,
            u16::MAX as i64,
        )),
        w => Err(malformed(
            "stored tfhe value",
            format!("cell {i}: unknown width {w}"),
        )),
    }
}

fn compare_typed<T>(v: T, cmp: Comparison, c: i64, max: i64) -> tfhe::FheBool
where
    T: FheOrd<u16> + FheEq<u16>,
{
    // Out-of-range constants have a fixed answer for every value in 0..=max.
    let fixed = match cmp {
        Comparison::Ge if c <= 0 => Some(true),
        Comparison::Ge if c > max => Some(false),
        Comparison::Gt if c < 0 => Some(true),
        Comparison::Gt if c >= max => Some(false),
        Comparison::Le if c >= max => Some(true),
        Comparison::Le if c < 0 => Some(false),
        Comparison::Lt if c > max => Some(true),
        Comparison::Lt if c <= 0 => Some(false),
        Comparison::Eq if c < 0 || c > max => Some(false),
        _ => None,
    };
    if let Some(b) = fixed {
        return tfhe::FheBool::encrypt_trivial(b);
    }
    let c = c as u16;
    match cmp {
        Comparison::Ge => v.ge(c),
        Comparison::Gt => v.gt(c),
        Comparison::Le => v.le(c),
        Comparison::Lt => v.lt(c),
        Comparison::Eq => v.eq(c),
    }
}

fn at_cell(i: usize, e: FheError) -> FheError {
    match e {
        FheError::Malformed { what, why } => FheError::Malformed {
            what,
            why: format!("cell {i}: {why}"),
        },
        other => other,
    }
}

pub(crate) fn result_digest(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort-fhe/tfhe-result");
    h.update(bytes);
    h.finalize().into()
}

fn tfhe_error(e: impl std::fmt::Display) -> FheError {
    FheError::Tfhe(e.to_string())
}

fn put<T: serde::Serialize + tfhe::Versionize + tfhe::named::Named>(
    out: &mut Vec<u8>,
    object: &T,
) -> Result<()> {
    let mut body = Vec::new();
    safe_serialize(object, &mut body, SIZE_LIMIT).map_err(tfhe_error)?;
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Reads the length-prefixed objects after a version byte.
struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Result<Self> {
        match bytes.split_first() {
            None => Err(malformed(what, "empty")),
            Some((&v, rest)) if v == FORMAT_VERSION => Ok(Reader { what, rest }),
            Some((&v, _)) => Err(FheError::Version {
                what,
                found: v,
                supported: FORMAT_VERSION,
            }),
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| malformed(self.what, "truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    fn object<T: serde::de::DeserializeOwned + tfhe::Unversionize + tfhe::named::Named>(
        &mut self,
    ) -> Result<T> {
        let body = self.body()?;
        safe_deserialize(Cursor::new(body), SIZE_LIMIT).map_err(|e| malformed(self.what, e))
    }

    fn body(&mut self) -> Result<&'a [u8]> {
        if self.rest.len() < 8 {
            return Err(malformed(self.what, "truncated"));
        }
        let (len, rest) = self.rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        if rest.len() < len {
            return Err(malformed(
                self.what,
                format!("a {len}-byte object in {} bytes", rest.len()),
            ));
        }
        let (body, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(body)
    }
}
