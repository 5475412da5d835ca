// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {CohortAccess} from "./CohortAccess.sol";

/// @title ResearchStudy: proposals, m-of-n steward approval, patients'
/// consent, the privacy budget of every study and the compensation of its
/// consenting patients for the privacy they lose.
/// @dev Privacy amounts are fixed point with 18 decimals (1e18 = ε 1), the
/// units of cohort's accountant. A study's budget is pure ε, (ε, δ) or
/// ρ-zCDP; `primary` is ε or ρ. The invariant, for both dimensions:
/// committed + reserved <= budget. Only the ENGINE role moves the budget,
/// and each move is idempotent on its query id.
///
/// Compensation prices privacy loss, not matching: a query's fee is
/// `feePerUnit * cost / 1e18` (rounded down), fixed by the contract from
/// the cost it reserves, and it is shared equally by every patient in the
/// study's consenting set when the query ran (a set already public through
/// consent transactions), whoever's rows matched. No value on chain
/// depends on which rows a query read: paying the matching patients would
/// make the payment itself a release. Money moves escrow -> held (at
/// reserve) -> owed (at commit, in equal shares; the remainder of the
/// division goes back to escrow) -> the patients (pull claims with a
/// Merkle proof of membership); a released reservation returns its fee to
/// escrow.
contract ResearchStudy is ReentrancyGuard {
    enum Status {
        None,
        Proposed,
        Approved,
        Closed
    }

    enum Kind {
        Pure,
        Approx,
        Zcdp
    }

    enum QueryState {
        None,
        Reserved,
        Committed,
        Released
    }

    struct Proposal {
        bytes32 purposeHash; // hash of the purpose text
        bytes32 scopeHash; // hash of the scope (tables, columns, bounds)
        uint256 purposes; // purpose categories a patient's consent must cover (bit mask)
        Kind kind;
        uint128 budget; // ε or ρ
        uint128 deltaBudget; // δ, for Approx only
        uint128 queryCap; // the most ε or ρ one query may cost
        uint128 deltaQueryCap;
        uint64 duration; // seconds from approval
        bool microdata; // whether k-anonymous extracts may be released
        uint256 feePerUnit; // wei per 1e18 of the primary amount (per ε 1 or ρ 1)
        uint32 minK; // the smallest k an extract may have (0 unless microdata)
        uint32 maxExtracts; // how many extracts may ever be recorded (0 unless microdata)
    }

    struct Study {
        address researcher;
        Status status;
        uint8 approvals;
        uint64 proposedAt;
        uint64 approvedAt;
        uint64 endsAt;
        uint32 openReservations;
        uint32 extracts; // extracts recorded so far
        Proposal terms;
        uint128 committed;
        uint128 deltaCommitted;
        uint128 reserved;
        uint128 deltaReserved;
        uint256 escrow; // not yet allocated to any query
        uint256 held; // the fees of open reservations
        uint256 owed; // allocated to committed queries, not yet claimed
    }

    struct Query {
        uint256 studyId;
        QueryState state;
        uint64 members; // the size of the consenting set paid (packed with state and cost)
        uint128 cost;
        uint128 deltaCost;
        bytes32 resultHash;
        bytes32 membersRoot; // Merkle root over the consenting set's addresses
        uint256 fee; // held while reserved; paid to the members once committed
        uint256 claimed;
    }

    struct Consent {
        uint256 purposes;
        uint64 givenAt;
        uint64 expiresAt;
        uint64 withdrawnAt;
    }

    CohortAccess public immutable access;
    uint8 public requiredApprovals;
    uint256 public studyCount;
    uint64 public constant MAX_DURATION = 10 * 366 days;

    mapping(uint256 studyId => Study) private _studies;
    mapping(uint256 studyId => mapping(address steward => bool)) private _approvedBy;
    mapping(uint256 studyId => mapping(address patient => Consent)) private _consents;
    mapping(bytes32 queryId => Query) private _queries;
    mapping(bytes32 queryId => mapping(address patient => bool)) private _claimed;
    mapping(uint256 studyId => mapping(bytes32 extractHash => bool)) private _released;
    mapping(uint256 studyId => mapping(bytes32 column => mapping(address patient => bytes32))) private _shared;

    event RequiredApprovalsSet(uint8 approvals);
    event StudyProposed(
        uint256 indexed studyId,
        address indexed researcher,
        bytes32 purposeHash,
        bytes32 scopeHash,
        Kind kind,
        uint128 budget,
        uint128 deltaBudget,
        uint256 escrow
    );
    event StudyApprovalGiven(uint256 indexed studyId, address indexed steward, uint8 approvals);
    event StudyApproved(uint256 indexed studyId, uint64 endsAt);
    event EscrowAdded(uint256 indexed studyId, uint256 amount, uint256 escrow);
    event StudyClosed(uint256 indexed studyId, uint256 refund);
    event ConsentGiven(uint256 indexed studyId, address indexed patient, uint256 purposes, uint64 expiresAt);
    event ConsentWithdrawn(uint256 indexed studyId, address indexed patient);
    event BudgetReserved(
        uint256 indexed studyId, bytes32 indexed queryId, uint128 cost, uint128 deltaCost, uint256 fee
    );
    event BudgetCommitted(
        uint256 indexed studyId,
        bytes32 indexed queryId,
        uint128 cost,
        uint128 deltaCost,
        bytes32 resultHash,
        bytes32 membersRoot,
        uint64 members,
        uint256 fee
    );
    event BudgetReleased(uint256 indexed studyId, bytes32 indexed queryId, uint128 cost, uint128 deltaCost);
    event MicrodataReleased(uint256 indexed studyId, bytes32 indexed extractHash, uint32 k, uint32 l, uint64 rows);
    event CompensationClaimed(uint256 indexed studyId, bytes32 indexed queryId, address indexed patient, uint256 amount);
    event EncryptedValueShared(
        uint256 indexed studyId, address indexed patient, bytes32 indexed column, bytes32 valueHash
    );

    error MissingRole(bytes32 role, address account);
    error InvalidProposal(string field);
    error InvalidApprovals(uint8 approvals);
    error NoSuchStudy(uint256 studyId);
    error WrongStatus(uint256 studyId, Status status);
    error StudyEnded(uint256 studyId, uint64 endsAt);
    error AlreadyApproved(uint256 studyId, address steward);
    error SelfApproval(uint256 studyId);
    error InvalidConsent(uint256 studyId, uint256 purposes, uint64 expiresAt);
    error NoConsent(uint256 studyId, address patient);
    error InvalidCost(uint128 cost, uint128 deltaCost);
    error OverQueryCap(uint256 studyId, uint128 cost, uint128 deltaCost, uint128 cap, uint128 deltaCap);
    error BudgetExceeded(uint256 studyId, uint128 cost, uint128 deltaCost, uint128 available, uint128 deltaAvailable);
    error QueryExists(bytes32 queryId, QueryState state);
    error NotReserved(bytes32 queryId, QueryState state);
    error WrongStudy(bytes32 queryId, uint256 studyId);
    error MissingRoot(bytes32 queryId);
    error InsufficientEscrow(uint256 studyId, uint256 fee, uint256 escrow);
    error AlreadyClaimed(bytes32 queryId, address patient);
    error InvalidProof(bytes32 queryId, address patient);
    error ClaimExceedsFee(bytes32 queryId, uint256 amount, uint256 left);
    error NotResearcher(uint256 studyId, address caller);
    error ReservationsOpen(uint256 studyId, uint32 open);
    error TransferFailed(address to, uint256 amount);
    error MicrodataNotAllowed(uint256 studyId);
    error InvalidRelease(bytes32 extractHash, uint32 k, uint32 l);
    error TooManyExtracts(uint256 studyId, uint32 maxExtracts);
    error InvalidShare(bytes32 column);

    modifier onlyRole(bytes32 role) {
        if (!access.hasRole(role, msg.sender)) revert MissingRole(role, msg.sender);
        _;
    }

    /// The patient the caller's key acts for (`CohortAccess.patientOf`:
    /// after a guardian recovery, the new key, never the old).
    function _actingPatient() private view returns (address patient) {
        patient = access.patientOf(msg.sender);
        if (patient == address(0)) revert MissingRole(access.PATIENT_ROLE(), msg.sender);
    }

    constructor(CohortAccess access_, uint8 requiredApprovals_) {
        if (requiredApprovals_ == 0) revert InvalidApprovals(requiredApprovals_);
        access = access_;
        requiredApprovals = requiredApprovals_;
        emit RequiredApprovalsSet(requiredApprovals_);
    }

    /// How many stewards must approve a study (applies to later approvals).
    function setRequiredApprovals(uint8 approvals) external onlyRole(access.ADMIN_ROLE()) {
        if (approvals == 0) revert InvalidApprovals(approvals);
        requiredApprovals = approvals;
        emit RequiredApprovalsSet(approvals);
    }

    // -------------------------------------------------------------- proposal

    /// A researcher proposes a study; the ETH sent is its compensation
    /// escrow, from which each query's fee (`feePerUnit` per unit of its
    /// cost) is taken. `feePerUnit * budget` must fit in 256 bits, so that
    /// no fee computation can overflow.
    function proposeStudy(Proposal calldata p) external payable onlyRole(access.RESEARCHER_ROLE()) returns (uint256 id) {
        if (p.purposeHash == 0) revert InvalidProposal("purposeHash");
        if (p.scopeHash == 0) revert InvalidProposal("scopeHash");
        if (p.purposes == 0) revert InvalidProposal("purposes");
        if (p.budget == 0) revert InvalidProposal("budget");
        if (p.queryCap == 0 || p.queryCap > p.budget) revert InvalidProposal("queryCap");
        if (p.kind == Kind.Approx) {
            if (p.deltaBudget == 0 || p.deltaBudget >= 1e18) revert InvalidProposal("deltaBudget");
            if (p.deltaQueryCap > p.deltaBudget) revert InvalidProposal("deltaQueryCap");
        } else if (p.deltaBudget != 0 || p.deltaQueryCap != 0) {
            revert InvalidProposal("deltaBudget");
        }
        if (p.duration == 0 || p.duration > MAX_DURATION) revert InvalidProposal("duration");
        if (p.feePerUnit > type(uint256).max / p.budget) revert InvalidProposal("feePerUnit");
        if (p.microdata) {
            if (p.minK < 2) revert InvalidProposal("minK");
            if (p.maxExtracts == 0) revert InvalidProposal("maxExtracts");
        } else {
            if (p.minK != 0) revert InvalidProposal("minK");
            if (p.maxExtracts != 0) revert InvalidProposal("maxExtracts");
        }
        id = ++studyCount;
        Study storage s = _studies[id];
        s.researcher = msg.sender;
        s.status = Status.Proposed;
        s.proposedAt = uint64(block.timestamp);
        s.terms = p;
        s.escrow = msg.value;
        emit StudyProposed(id, msg.sender, p.purposeHash, p.scopeHash, p.kind, p.budget, p.deltaBudget, msg.value);
    }

    /// A steward approves; the approval that reaches the threshold starts the study.
    function approveStudy(uint256 studyId) external onlyRole(access.STEWARD_ROLE()) {
        Study storage s = _study(studyId);
        if (s.status != Status.Proposed) revert WrongStatus(studyId, s.status);
        if (s.researcher == msg.sender) revert SelfApproval(studyId);
        if (_approvedBy[studyId][msg.sender]) revert AlreadyApproved(studyId, msg.sender);
        _approvedBy[studyId][msg.sender] = true;
        s.approvals += 1;
        emit StudyApprovalGiven(studyId, msg.sender, s.approvals);
        if (s.approvals >= requiredApprovals) {
            s.status = Status.Approved;
            s.approvedAt = uint64(block.timestamp);
            s.endsAt = uint64(block.timestamp) + s.terms.duration;
            emit StudyApproved(studyId, s.endsAt);
        }
    }

    function addEscrow(uint256 studyId) external payable {
        Study storage s = _study(studyId);
        if (s.researcher != msg.sender) revert NotResearcher(studyId, msg.sender);
        if (s.status == Status.Closed) revert WrongStatus(studyId, s.status);
        s.escrow += msg.value;
        emit EscrowAdded(studyId, msg.value, s.escrow);
    }

    /// The researcher closes the study (anyone may, once it has ended):
    /// unallocated escrow goes back to the researcher; fees already owed
    /// to patients stay claimable. Refused while reservations are open
    /// (their fees are held until they are committed or released).
    function closeStudy(uint256 studyId) external nonReentrant {
        Study storage s = _study(studyId);
        if (s.status == Status.Closed) revert WrongStatus(studyId, s.status);
        bool ended = s.status == Status.Approved && block.timestamp >= s.endsAt;
        if (s.researcher != msg.sender && !ended) revert NotResearcher(studyId, msg.sender);
        if (s.openReservations != 0) revert ReservationsOpen(studyId, s.openReservations);
        uint256 refund = s.escrow;
        s.escrow = 0;
        s.status = Status.Closed;
        emit StudyClosed(studyId, refund);
        _send(s.researcher, refund);
    }

    function studyOf(uint256 studyId) external view returns (Study memory) {
        return _study(studyId);
    }

    function hasApproved(uint256 studyId, address steward) external view returns (bool) {
        return _approvedBy[studyId][steward];
    }

    /// What is left of the budget: ε or ρ, and δ.
    function remaining(uint256 studyId) external view returns (uint128 primary, uint128 delta) {
        Study storage s = _study(studyId);
        primary = s.terms.budget - s.committed - s.reserved;
        delta = s.terms.deltaBudget - s.deltaCommitted - s.deltaReserved;
    }

    // --------------------------------------------------------------- consent

    /// A patient consents to a study for `purposes` until `expiresAt`.
    function consent(uint256 studyId, uint256 purposes, uint64 expiresAt) external {
        address patient = _actingPatient();
        Study storage s = _study(studyId);
        if (s.status != Status.Proposed && s.status != Status.Approved) revert WrongStatus(studyId, s.status);
        if (purposes == 0 || expiresAt <= block.timestamp) revert InvalidConsent(studyId, purposes, expiresAt);
        _consents[studyId][patient] = Consent(purposes, uint64(block.timestamp), expiresAt, 0);
        emit ConsentGiven(studyId, patient, purposes, expiresAt);
    }

    /// A patient withdraws; every later query leaves them out.
    function withdraw(uint256 studyId) external {
        address patient = _actingPatient();
        Consent storage c = _consents[studyId][patient];
        if (c.purposes == 0 || c.withdrawnAt != 0) revert NoConsent(studyId, patient);
        c.withdrawnAt = uint64(block.timestamp);
        emit ConsentWithdrawn(studyId, patient);
    }

    function consentOf(uint256 studyId, address patient) external view returns (Consent memory) {
        return _consents[studyId][patient];
    }

    /// Whether `patient`'s consent covers every purpose of the study now.
    function hasConsent(uint256 studyId, address patient) external view returns (bool) {
        Consent storage c = _consents[studyId][patient];
        uint256 needed = _studies[studyId].terms.purposes;
        return c.withdrawnAt == 0 && block.timestamp < c.expiresAt && needed != 0 && (c.purposes & needed) == needed;
    }

    // ---------------------------------------------------------------- budget

    /// Reserves a query's cost and holds its fee, `feePerUnit * cost / 1e18`
    /// (rounded down), out of the escrow. Repeating the same reservation is
    /// a no-op.
    function reserve(uint256 studyId, bytes32 queryId, uint128 cost, uint128 deltaCost)
        external
        onlyRole(access.ENGINE_ROLE())
    {
        Study storage s = _study(studyId);
        Query storage q = _queries[queryId];
        if (q.state == QueryState.Reserved && q.studyId == studyId && q.cost == cost && q.deltaCost == deltaCost) {
            return;
        }
        if (q.state != QueryState.None) revert QueryExists(queryId, q.state);
        if (s.status != Status.Approved) revert WrongStatus(studyId, s.status);
        if (block.timestamp >= s.endsAt) revert StudyEnded(studyId, s.endsAt);
        if (cost == 0) revert InvalidCost(cost, deltaCost);
        if (cost > s.terms.queryCap || deltaCost > s.terms.deltaQueryCap) {
            revert OverQueryCap(studyId, cost, deltaCost, s.terms.queryCap, s.terms.deltaQueryCap);
        }
        uint128 available = s.terms.budget - s.committed - s.reserved;
        uint128 deltaAvailable = s.terms.deltaBudget - s.deltaCommitted - s.deltaReserved;
        if (cost > available || deltaCost > deltaAvailable) {
            revert BudgetExceeded(studyId, cost, deltaCost, available, deltaAvailable);
        }
        // Cannot overflow: cost <= queryCap <= budget and proposeStudy
        // checked that feePerUnit * budget fits.
        uint256 fee = s.terms.feePerUnit * cost / 1e18;
        if (fee > s.escrow) revert InsufficientEscrow(studyId, fee, s.escrow);
        s.reserved += cost;
        s.deltaReserved += deltaCost;
        s.openReservations += 1;
        s.escrow -= fee;
        s.held += fee;
        q.studyId = studyId;
        q.state = QueryState.Reserved;
        q.cost = cost;
        q.deltaCost = deltaCost;
        q.fee = fee;
        emit BudgetReserved(studyId, queryId, cost, deltaCost, fee);
    }

    /// Turns a reservation into a debit and pays its held fee to the
    /// study's consenting set at the time of the query: `members` patients
    /// whose addresses are the leaves under `membersRoot`. Each is owed
    /// `fee / members`; the remainder of the division (all of the fee when
    /// `members` is 0) goes back to the escrow. Nothing here depends on
    /// which rows the query read. Repeating the same commit is a no-op.
    function commit(uint256 studyId, bytes32 queryId, bytes32 resultHash, bytes32 membersRoot, uint64 members)
        external
        onlyRole(access.ENGINE_ROLE())
    {
        Study storage s = _study(studyId);
        Query storage q = _queries[queryId];
        if (q.state != QueryState.None && q.studyId != studyId) revert WrongStudy(queryId, studyId);
        if (
            q.state == QueryState.Committed && q.resultHash == resultHash && q.membersRoot == membersRoot
                && q.members == members
        ) return;
        if (q.state != QueryState.Reserved) revert NotReserved(queryId, q.state);
        uint256 fee = q.fee;
        if (fee > 0 && members > 0 && membersRoot == 0) revert MissingRoot(queryId);
        uint256 paid = members == 0 ? 0 : (fee / members) * members;
        s.reserved -= q.cost;
        s.deltaReserved -= q.deltaCost;
        s.committed += q.cost;
        s.deltaCommitted += q.deltaCost;
        s.openReservations -= 1;
        s.held -= fee;
        s.owed += paid;
        s.escrow += fee - paid;
        q.state = QueryState.Committed;
        q.resultHash = resultHash;
        q.membersRoot = membersRoot;
        q.members = members;
        q.fee = paid;
        emit BudgetCommitted(studyId, queryId, q.cost, q.deltaCost, resultHash, membersRoot, members, paid);
    }

    /// Cancels a reservation that will not be committed; its held fee
    /// goes back to the escrow. Repeating it is a no-op.
    function release(uint256 studyId, bytes32 queryId) external onlyRole(access.ENGINE_ROLE()) {
        Study storage s = _study(studyId);
        Query storage q = _queries[queryId];
        if (q.state != QueryState.None && q.studyId != studyId) revert WrongStudy(queryId, studyId);
        if (q.state == QueryState.Released) return;
        if (q.state != QueryState.Reserved) revert NotReserved(queryId, q.state);
        s.reserved -= q.cost;
        s.deltaReserved -= q.deltaCost;
        s.openReservations -= 1;
        s.held -= q.fee;
        s.escrow += q.fee;
        q.fee = 0;
        q.state = QueryState.Released;
        emit BudgetReleased(studyId, queryId, q.cost, q.deltaCost);
    }

    function queryOf(bytes32 queryId) external view returns (Query memory) {
        return _queries[queryId];
    }

    // ------------------------------------------------------------- microdata

    /// Records a k-anonymous extract of an approved study that allows
    /// microdata: the hash of its bytes, its k (at least the study's
    /// `minK`) and l (0: no l-diversity) and its row count. At most
    /// `maxExtracts` extracts are recorded per study. Recording the same
    /// extract again is a no-op and does not count.
    function recordRelease(uint256 studyId, bytes32 extractHash, uint32 k, uint32 l, uint64 rows)
        external
        onlyRole(access.ENGINE_ROLE())
    {
        Study storage s = _study(studyId);
        if (_released[studyId][extractHash]) return;
        if (s.status != Status.Approved) revert WrongStatus(studyId, s.status);
        if (block.timestamp >= s.endsAt) revert StudyEnded(studyId, s.endsAt);
        if (!s.terms.microdata) revert MicrodataNotAllowed(studyId);
        if (extractHash == 0 || k < 2 || k < s.terms.minK || l == 1) revert InvalidRelease(extractHash, k, l);
        if (s.extracts >= s.terms.maxExtracts) revert TooManyExtracts(studyId, s.terms.maxExtracts);
        _released[studyId][extractHash] = true;
        s.extracts += 1;
        emit MicrodataReleased(studyId, extractHash, k, l, rows);
    }

    /// Whether study `studyId` released the extract with this hash.
    function isReleased(uint256 studyId, bytes32 extractHash) external view returns (bool) {
        return _released[studyId][extractHash];
    }

    // --------------------------------------------------------- encrypted path

    /// A patient declares that they shared a value of the encrypted column
    /// `column` (the keccak256 of its name) with an approved, running
    /// study, committing to the hash of its ciphertext. A later share
    /// replaces the earlier one. The engine pads encrypted work to the
    /// number of consenting patients who shared a value, which this makes
    /// public.
    function shareEncrypted(uint256 studyId, bytes32 column, bytes32 valueHash) external {
        address patient = _actingPatient();
        Study storage s = _study(studyId);
        if (s.status != Status.Approved) revert WrongStatus(studyId, s.status);
        if (block.timestamp >= s.endsAt) revert StudyEnded(studyId, s.endsAt);
        if (column == 0 || valueHash == 0) revert InvalidShare(column);
        _shared[studyId][column][patient] = valueHash;
        emit EncryptedValueShared(studyId, patient, column, valueHash);
    }

    /// The ciphertext hash `patient` shared for `column` of study
    /// `studyId` (zero if none).
    function sharedValue(uint256 studyId, bytes32 column, address patient) external view returns (bytes32) {
        return _shared[studyId][column][patient];
    }

    // ---------------------------------------------------------- compensation

    /// A member of a committed query's consenting set claims their equal
    /// share, `fee / members`, with a proof that their patient identity is
    /// a leaf under its members root; it is paid to the key acting for them.
    function claim(uint256 studyId, bytes32 queryId, bytes32[] calldata proof) external nonReentrant {
        // The identity the caller's key acts for; an address that is no
        // patient's identity claims as itself (its proof decides), but a
        // patient's replaced key claims nothing.
        address patient = access.patientOf(msg.sender);
        if (patient == address(0)) {
            if (access.hasRole(access.PATIENT_ROLE(), msg.sender)) revert MissingRole(access.PATIENT_ROLE(), msg.sender);
            patient = msg.sender;
        }
        Study storage s = _study(studyId);
        Query storage q = _queries[queryId];
        if (q.studyId != studyId) revert WrongStudy(queryId, studyId);
        if (q.state != QueryState.Committed) revert NotReserved(queryId, q.state);
        if (_claimed[queryId][patient]) revert AlreadyClaimed(queryId, patient);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(patient))));
        if (q.members == 0 || !MerkleProof.verifyCalldata(proof, q.membersRoot, leaf)) {
            revert InvalidProof(queryId, patient);
        }
        uint256 amount = q.fee / q.members;
        if (amount > q.fee - q.claimed) revert ClaimExceedsFee(queryId, amount, q.fee - q.claimed);
        _claimed[queryId][patient] = true;
        q.claimed += amount;
        s.owed -= amount;
        emit CompensationClaimed(studyId, queryId, patient, amount);
        _send(msg.sender, amount);
    }

    function hasClaimed(bytes32 queryId, address patient) external view returns (bool) {
        return _claimed[queryId][patient];
    }

    // -------------------------------------------------------------- internal

    function _study(uint256 studyId) private view returns (Study storage s) {
        s = _studies[studyId];
        if (s.status == Status.None) revert NoSuchStudy(studyId);
    }

    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
