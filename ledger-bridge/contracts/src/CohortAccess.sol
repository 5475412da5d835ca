// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title CohortAccess: roles, provider credentials, patients' access grants
/// and emergency overrides. The registry every other cohort contract reads
/// its roles and grants from.
/// @dev A patient is identified by the address that registered (their
/// *identity*); the key that acts for them (their *controller*) is that
/// address until a guardian recovery moves it to a new key. Grants,
/// delegations, overrides, consents and bookings are keyed by the identity,
/// so they follow the patient to the new key, and the old key loses every
/// power at once. Time is the block timestamp; every expiry is exclusive (a
/// grant expiring at t is void at t).
contract CohortAccess is AccessControl {
    bytes32 public constant ADMIN_ROLE = DEFAULT_ADMIN_ROLE;
    bytes32 public constant PATIENT_ROLE = keccak256("cohort.PATIENT");
    bytes32 public constant PROVIDER_ROLE = keccak256("cohort.PROVIDER");
    bytes32 public constant RESEARCHER_ROLE = keccak256("cohort.RESEARCHER");
    bytes32 public constant STEWARD_ROLE = keccak256("cohort.STEWARD");
    bytes32 public constant AUDITOR_ROLE = keccak256("cohort.AUDITOR");
    bytes32 public constant ENGINE_ROLE = keccak256("cohort.ENGINE");
    bytes32 public constant ISSUER_ROLE = keccak256("cohort.ISSUER");
    /// Insurers attest patients' coverage and pay their share of covered visits.
    bytes32 public constant INSURER_ROLE = keccak256("cohort.INSURER");
    /// Providers who may open an emergency override (besides a credential).
    bytes32 public constant EMERGENCY_ROLE = keccak256("cohort.EMERGENCY");

    /// Access levels, ordered: a higher level includes the lower ones.
    /// SUMMARY reads the record kinds of a patient summary (`SUMMARY_KINDS`),
    /// READ every kind, WRITE reads and adds versions.
    uint8 public constant LEVEL_NONE = 0;
    uint8 public constant LEVEL_SUMMARY = 1;
    uint8 public constant LEVEL_READ = 2;
    uint8 public constant LEVEL_WRITE = 3;

    /// Purposes of use a grant allows (HIPAA's treatment, payment and
    /// health-care operations), as bits.
    uint8 public constant PURPOSE_TREATMENT = 1;
    uint8 public constant PURPOSE_PAYMENT = 2;
    uint8 public constant PURPOSE_OPERATIONS = 4;
    uint8 public constant ALL_PURPOSES = 7;

    /// Record kinds, as bits the engine assigns to FHIR resource types:
    /// Patient 1, Observation 2, Condition 4, Encounter 8,
    /// MedicationRequest 16. A grant may be limited to some kinds.
    uint32 public constant ALL_KINDS = type(uint32).max;
    /// The kinds of a patient summary: Patient, Condition, MedicationRequest.
    uint32 public constant SUMMARY_KINDS = 1 | 4 | 16;

    /// Why a read or write is refused (0: it is allowed), as `check` says.
    uint8 public constant OK = 0;
    uint8 public constant DENY_NOT_A_PATIENT = 1;
    uint8 public constant DENY_NO_GRANT = 2;
    uint8 public constant DENY_GRANT_EXPIRED = 3;
    uint8 public constant DENY_GRANT_REVOKED = 4;
    uint8 public constant DENY_NO_CREDENTIAL = 5;
    uint8 public constant DENY_CREDENTIAL_EXPIRED = 6;
    uint8 public constant DENY_CREDENTIAL_REVOKED = 7;
    uint8 public constant DENY_LEVEL = 8;
    uint8 public constant DENY_PURPOSE = 9;
    uint8 public constant DENY_KIND = 10;
    uint8 public constant DENY_EMERGENCY_ENDED = 11;
    uint8 public constant DENY_NOT_A_PROVIDER = 12;
    /// The actor is the patient's identity, but a recovery moved control of
    /// it to another key.
    uint8 public constant DENY_KEY_REPLACED = 13;
    /// An auditor found the patient's last recovery unjustified: nobody acts
    /// for them until a new recovery completes.
    uint8 public constant DENY_RECOVERY_DISPUTED = 14;

    /// The longest grant or delegation a patient can give in one call.
    uint64 public constant MAX_DURATION = 366 days;

    struct Credential {
        address issuer;
        bytes32 licenseHash;
        uint64 expiresAt;
        bool revoked;
    }

    struct Grant {
        uint8 level;
        uint8 purposes; // PURPOSE_* bits
        uint32 kinds; // record kinds (ALL_KINDS: every kind)
        uint64 expiresAt;
        uint64 revokedAt; // 0 unless revoked (kept so a refusal can say so)
        address grantedBy; // the patient, or the delegate who acted for them
    }

    struct Delegation {
        uint8 maxLevel;
        uint64 expiresAt;
    }

    enum Review {
        None,
        Pending,
        Justified,
        Unjustified
    }

    struct Emergency {
        address patient;
        address provider;
        bytes32 reasonHash;
        uint64 startedAt;
        uint64 expiresAt;
        Review review;
        address reviewer;
        bytes32 findingHash;
        uint64 endedAt; // 0 unless ended before its expiry
        address endedBy;
    }

    mapping(address provider => Credential) private _credentials;
    mapping(address patient => mapping(address provider => Grant)) private _grants;
    mapping(address patient => mapping(address delegate => Delegation)) private _delegations;
    Emergency[] private _emergencies;
    mapping(address patient => mapping(address provider => uint256)) private _lastEmergency; // id + 1
    uint256 public pendingReviews;
    uint64 public emergencyDuration = 24 hours;
    /// Providers whose emergency override was found unjustified: they may
    /// open none until an admin restores them.
    mapping(address provider => bool) public emergencySuspended;

    /// A patient's guardians: any `threshold` of the `members` approve a
    /// recovery. `sharesHash` commits to the key shares the engine sealed to
    /// each guardian (and to `backupKey`, if the patient registered one) in
    /// this `round`; every change bumps the round, so stale approvals lapse.
    struct Guardians {
        address[] members;
        uint8 threshold;
        uint64 round;
        address backupKey;
        bytes32 sharesHash;
    }

    enum RecoveryState {
        None,
        Open,
        Completed,
        Cancelled
    }

    /// One recovery of a patient's control: opened by the new key, approved
    /// by guardians (each attesting the person's identity), attested by a
    /// credentialed provider, completed by the new key, then reviewed by an
    /// auditor.
    struct Recovery {
        address patient;
        address newKey;
        address oldKey;
        uint64 round;
        uint64 openedAt;
        uint8 approvals;
        RecoveryState state;
        address attestedBy;
        bytes32 attestationHash;
        uint64 completedAt;
        Review review;
        address reviewer;
        bytes32 findingHash;
    }

    /// The key that acts for a patient, when a recovery moved it.
    mapping(address patient => address key) private _controller;
    /// The patient a recovered key acts for.
    mapping(address key => address patient) private _patientOfKey;
    mapping(address patient => Guardians) private _guardians;
    Recovery[] private _recoveries;
    mapping(uint256 id => mapping(address guardian => bytes32 attestationHash)) private _approvalOf;
    /// The open recovery of each patient (id + 1), at most one at a time.
    mapping(address patient => uint256) private _openRecovery;
    /// Patients whose last recovery an auditor found unjustified.
    mapping(address patient => bool) public recoveryDisputed;
    uint256 public pendingRecoveryReviews;

    event PatientRegistered(address indexed patient);
    event CredentialAttested(address indexed provider, address indexed issuer, bytes32 licenseHash, uint64 expiresAt);
    event CredentialRevoked(address indexed provider, address indexed by);
    event AccessGranted(
        address indexed patient,
        address indexed provider,
        uint8 level,
        uint8 purposes,
        uint32 kinds,
        uint64 expiresAt,
        address grantedBy
    );
    event AccessRevoked(address indexed patient, address indexed provider, address revokedBy);
    event DelegateSet(address indexed patient, address indexed delegate, uint8 maxLevel, uint64 expiresAt);
    event DelegateRevoked(address indexed patient, address indexed delegate);
    event EmergencyAccessed(
        uint256 indexed id, address indexed patient, address indexed provider, bytes32 reasonHash, uint64 expiresAt
    );
    event EmergencyReviewed(uint256 indexed id, address indexed reviewer, bool justified, bytes32 findingHash);
    event EmergencyEnded(uint256 indexed id, address indexed by);
    event EmergencySuspended(address indexed provider, uint256 indexed id);
    event EmergencyRestored(address indexed provider, address indexed by);
    event EmergencyDurationSet(uint64 duration);
    event GuardiansSet(
        address indexed patient, address[] guardians, uint8 threshold, uint64 round, address backupKey, bytes32 sharesHash
    );
    event RecoveryOpened(uint256 indexed id, address indexed patient, address indexed newKey, uint64 round);
    event RecoveryApproved(uint256 indexed id, address indexed guardian, bytes32 attestationHash, uint8 approvals);
    event IdentityAttested(uint256 indexed id, address indexed provider, bytes32 attestationHash);
    event ControlRecovered(uint256 indexed id, address indexed patient, address oldKey, address indexed newKey);
    event RecoveryCancelled(uint256 indexed id, address indexed by);
    event RecoveryReviewed(uint256 indexed id, address indexed reviewer, bool justified, bytes32 findingHash);

    error InvalidLevel(uint8 level);
    error InvalidPurposes(uint8 purposes);
    error InvalidKinds(uint32 kinds);
    error NotEmergencyProvider(address provider);
    error Suspended(address provider);
    error NotAllowedToEnd(uint256 id, address caller);
    error AlreadyEnded(uint256 id);
    error InvalidDuration(uint64 duration, uint64 max);
    error InvalidExpiry(uint64 expiresAt);
    error NotAPatient(address account);
    error NotAProvider(address account);
    error NotCredentialed(address provider);
    error NotADelegate(address patient, address delegate);
    error ExceedsDelegation(uint8 level, uint64 expiresAt, uint8 maxLevel, uint64 delegationExpiresAt);
    error NoSuchGrant(address patient, address provider);
    error NoSuchEmergency(uint256 id);
    error AlreadyReviewed(uint256 id);
    error NotIssuerOfCredential(address provider, address issuer);
    error ZeroAddress();
    error InvalidGuardians(uint256 count, uint8 threshold);
    error NotAGuardian(address patient, address account);
    error AlreadyApproved(uint256 id, address guardian);
    error KeyInUse(address key);
    error NoGuardians(address patient);
    error RecoveryOpen(address patient, uint256 id);
    error NoSuchRecovery(uint256 id);
    error RecoveryNotOpen(uint256 id);
    error RecoveryStale(uint256 id, uint64 round, uint64 current);
    error TooFewApprovals(uint256 id, uint8 approvals, uint8 threshold);
    error NotAttested(uint256 id);
    error AttesterConflict(uint256 id, address provider);
    error NotTheNewKey(uint256 id, address caller);
    error NotAllowedToCancel(uint256 id, address caller);
    error RecoveryNotCompleted(uint256 id);

    constructor(address admin) {
        if (admin == address(0)) revert ZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ---------------------------------------------------------------- patients

    /// Any account may register itself as a patient, unless it already acts
    /// for one (a recovered key).
    function registerPatient() external {
        if (_patientOfKey[msg.sender] != address(0)) revert KeyInUse(msg.sender);
        if (_grantRole(PATIENT_ROLE, msg.sender)) emit PatientRegistered(msg.sender);
    }

    /// The key that acts for `patient` now: their own address unless a
    /// recovery moved it (zero while an auditor disputes the recovery).
    function controllerOf(address patient) public view returns (address) {
        if (recoveryDisputed[patient]) return address(0);
        address key = _controller[patient];
        return key == address(0) ? patient : key;
    }

    /// The patient `key` acts for, or zero if it acts for none (an old key
    /// after a recovery acts for none).
    function patientOf(address key) public view returns (address) {
        address patient = _patientOfKey[key];
        if (patient == address(0) && hasRole(PATIENT_ROLE, key)) patient = key;
        return patient != address(0) && controllerOf(patient) == key ? patient : address(0);
    }

    // ------------------------------------------------------------- credentials

    /// An issuer attests a provider's licence until `expiresAt`.
    function attestCredential(address provider, bytes32 licenseHash, uint64 expiresAt)
        external
        onlyRole(ISSUER_ROLE)
    {
        if (provider == address(0)) revert ZeroAddress();
        if (!hasRole(PROVIDER_ROLE, provider)) revert NotAProvider(provider);
        if (expiresAt <= block.timestamp) revert InvalidExpiry(expiresAt);
        _credentials[provider] = Credential(msg.sender, licenseHash, expiresAt, false);
        emit CredentialAttested(provider, msg.sender, licenseHash, expiresAt);
    }

    /// The issuer who attested a credential, or an admin, revokes it.
    function revokeCredential(address provider) external {
        Credential storage c = _credentials[provider];
        if (c.issuer != msg.sender && !hasRole(ADMIN_ROLE, msg.sender)) {
            revert NotIssuerOfCredential(provider, msg.sender);
        }
        c.revoked = true;
        emit CredentialRevoked(provider, msg.sender);
    }

    function credentialOf(address provider) external view returns (Credential memory) {
        return _credentials[provider];
    }

    /// A provider holds the role and an unexpired, unrevoked credential.
    function isCredentialed(address provider) public view returns (bool) {
        Credential storage c = _credentials[provider];
        return hasRole(PROVIDER_ROLE, provider) && c.issuer != address(0) && !c.revoked
            && block.timestamp < c.expiresAt;
    }

    // ------------------------------------------------------------------ grants

    /// A patient grants `provider` access at `level` for `duration`
    /// seconds, for treatment, to every kind of record.
    function grantAccess(address provider, uint64 duration, uint8 level) external {
        _grant(_actingPatient(), provider, duration, level, PURPOSE_TREATMENT, ALL_KINDS, msg.sender);
    }

    /// A patient grants access limited to some purposes and record kinds.
    function grantAccessScoped(address provider, uint64 duration, uint8 level, uint8 purposes, uint32 kinds)
        external
    {
        _grant(_actingPatient(), provider, duration, level, purposes, kinds, msg.sender);
    }

    /// A patient's delegate grants access on the patient's behalf, within
    /// the level and the expiry of the delegation.
    function grantAccessFor(address patient, address provider, uint64 duration, uint8 level) external {
        _grantFor(patient, provider, duration, level, PURPOSE_TREATMENT, ALL_KINDS);
    }

    /// [`grantAccessFor`] limited to some purposes and record kinds.
    function grantAccessForScoped(
        address patient,
        address provider,
        uint64 duration,
        uint8 level,
        uint8 purposes,
        uint32 kinds
    ) external {
        _grantFor(patient, provider, duration, level, purposes, kinds);
    }

    /// The patient (or a delegate) revokes a provider's grant.
    function revokeAccess(address patient, address provider) external {
        if (msg.sender != controllerOf(patient)) _activeDelegation(patient, msg.sender);
        Grant storage g = _grants[patient][provider];
        if (g.level == LEVEL_NONE || g.revokedAt != 0 || block.timestamp >= g.expiresAt) {
            revert NoSuchGrant(patient, provider);
        }
        g.revokedAt = uint64(block.timestamp);
        emit AccessRevoked(patient, provider, msg.sender);
    }

    function grantOf(address patient, address provider) external view returns (Grant memory) {
        return _grants[patient][provider];
    }

    /// Whether `provider` may act on `patient`'s records at `level` now: an
    /// unexpired grant at that level or above from a credentialed provider,
    /// or (for reading) an unexpired emergency override.
    function hasAccess(address patient, address provider, uint8 level) public view returns (bool) {
        if (!isCredentialed(provider)) return false;
        Grant storage g = _grants[patient][provider];
        if (g.level >= level && level != LEVEL_NONE && g.revokedAt == 0 && block.timestamp < g.expiresAt) {
            return true;
        }
        return level != LEVEL_NONE && level <= LEVEL_READ && inEmergency(patient, provider);
    }

    /// Whether `actor` may act on `patient`'s records of `kinds` at `level`
    /// for `purpose` now, and if not, why (a `DENY_*` code): the patient
    /// themself; an active delegate within their level; a credentialed
    /// provider with an unexpired, unrevoked grant covering the level, the
    /// purpose and every kind; or (reading, for treatment) a provider under
    /// an open emergency override, which `emergency` then says. The first
    /// missing authorization is named.
    function check(address patient, address actor, uint8 level, uint8 purpose, uint32 kinds)
        public
        view
        returns (uint8 reason, bool emergency)
    {
        if (!hasRole(PATIENT_ROLE, patient)) return (DENY_NOT_A_PATIENT, false);
        address controller = controllerOf(patient);
        if (actor == controller) return (OK, false);
        if (actor == patient || actor == _controller[patient]) {
            return (recoveryDisputed[patient] ? DENY_RECOVERY_DISPUTED : DENY_KEY_REPLACED, false);
        }
        Delegation storage d = _delegations[patient][actor];
        if (d.maxLevel >= level && block.timestamp < d.expiresAt) return (OK, false);
        if (!hasRole(PROVIDER_ROLE, actor)) return (DENY_NOT_A_PROVIDER, false);
        Credential storage c = _credentials[actor];
        if (c.issuer == address(0)) return (DENY_NO_CREDENTIAL, false);
        if (c.revoked) return (DENY_CREDENTIAL_REVOKED, false);
        if (block.timestamp >= c.expiresAt) return (DENY_CREDENTIAL_EXPIRED, false);
        reason = _grantReason(_grants[patient][actor], level, purpose, kinds);
        if (reason == OK) return (OK, false);
        if (level <= LEVEL_READ && purpose == PURPOSE_TREATMENT) {
            if (inEmergency(patient, actor)) return (OK, true);
        }
        // No grant in force, after an override that has ended: say so.
        bool noGrant = reason == DENY_NO_GRANT || reason == DENY_GRANT_REVOKED || reason == DENY_GRANT_EXPIRED;
        if (noGrant && _lastEmergency[patient][actor] != 0 && !inEmergency(patient, actor)) {
            return (DENY_EMERGENCY_ENDED, false);
        }
    }

    function _grantReason(Grant storage g, uint8 level, uint8 purpose, uint32 kinds) private view returns (uint8) {
        if (g.level == LEVEL_NONE) return DENY_NO_GRANT;
        if (g.revokedAt != 0) return DENY_GRANT_REVOKED;
        if (block.timestamp >= g.expiresAt) return DENY_GRANT_EXPIRED;
        if (g.level < level) return DENY_LEVEL;
        if (g.purposes & purpose != purpose) return DENY_PURPOSE;
        if (g.kinds & kinds != kinds) return DENY_KIND;
        if (g.level == LEVEL_SUMMARY && kinds & ~SUMMARY_KINDS != 0) return DENY_LEVEL;
        return OK;
    }

    // ------------------------------------------------------------- delegation

    /// A patient lets `delegate` grant and revoke access for them, at most
    /// at `maxLevel`, for `duration` seconds.
    function setDelegate(address delegate, uint8 maxLevel, uint64 duration) external {
        address patient = _actingPatient();
        if (delegate == address(0)) revert ZeroAddress();
        if (maxLevel == LEVEL_NONE || maxLevel > LEVEL_WRITE) revert InvalidLevel(maxLevel);
        if (duration == 0 || duration > MAX_DURATION) revert InvalidDuration(duration, MAX_DURATION);
        uint64 expiresAt = uint64(block.timestamp) + duration;
        _delegations[patient][delegate] = Delegation(maxLevel, expiresAt);
        emit DelegateSet(patient, delegate, maxLevel, expiresAt);
    }

    function revokeDelegate(address delegate) external {
        address patient = _actingPatient();
        if (_delegations[patient][delegate].maxLevel == LEVEL_NONE) revert NotADelegate(patient, delegate);
        delete _delegations[patient][delegate];
        emit DelegateRevoked(patient, delegate);
    }

    function delegationOf(address patient, address delegate) external view returns (Delegation memory) {
        return _delegations[patient][delegate];
    }

    // -------------------------------------------------------------- emergency

    /// A credentialed provider opens an emergency override on a patient's
    /// records: read access that expires on its own after
    /// `emergencyDuration`, announced by an event and queued for review.
    function emergencyAccess(address patient, bytes32 reasonHash) external returns (uint256 id) {
        if (!isCredentialed(msg.sender)) revert NotCredentialed(msg.sender);
        if (!hasRole(EMERGENCY_ROLE, msg.sender)) revert NotEmergencyProvider(msg.sender);
        if (emergencySuspended[msg.sender]) revert Suspended(msg.sender);
        _requirePatient(patient);
        uint64 expiresAt = uint64(block.timestamp) + emergencyDuration;
        id = _emergencies.length;
        _emergencies.push(
            Emergency(
                patient,
                msg.sender,
                reasonHash,
                uint64(block.timestamp),
                expiresAt,
                Review.Pending,
                address(0),
                0,
                0,
                address(0)
            )
        );
        _lastEmergency[patient][msg.sender] = id + 1;
        pendingReviews += 1;
        emit EmergencyAccessed(id, patient, msg.sender, reasonHash, expiresAt);
    }

    /// An auditor records the post-event review of an override.
    function reviewEmergency(uint256 id, bool justified, bytes32 findingHash) external onlyRole(AUDITOR_ROLE) {
        if (id >= _emergencies.length) revert NoSuchEmergency(id);
        Emergency storage e = _emergencies[id];
        if (e.review != Review.Pending) revert AlreadyReviewed(id);
        e.review = justified ? Review.Justified : Review.Unjustified;
        e.reviewer = msg.sender;
        e.findingHash = findingHash;
        pendingReviews -= 1;
        emit EmergencyReviewed(id, msg.sender, justified, findingHash);
        if (!justified) {
            // An unjustified override ends now and suspends the provider's
            // right to open another until an admin restores it.
            if (block.timestamp < e.expiresAt) _end(id, e);
            emergencySuspended[e.provider] = true;
            emit EmergencySuspended(e.provider, id);
        }
    }

    /// Ends an open override before its expiry: by the patient, one of
    /// their active delegates, the provider who opened it, or an auditor.
    /// The provider's reads under it stop at once.
    function endEmergency(uint256 id) external {
        if (id >= _emergencies.length) revert NoSuchEmergency(id);
        Emergency storage e = _emergencies[id];
        if (block.timestamp >= e.expiresAt) revert AlreadyEnded(id);
        bool allowed =
            msg.sender == controllerOf(e.patient) || msg.sender == e.provider || hasRole(AUDITOR_ROLE, msg.sender);
        if (!allowed) {
            Delegation storage d = _delegations[e.patient][msg.sender];
            allowed = d.maxLevel != LEVEL_NONE && block.timestamp < d.expiresAt;
        }
        if (!allowed) revert NotAllowedToEnd(id, msg.sender);
        _end(id, e);
    }

    /// An admin lets a suspended provider open overrides again.
    function restoreEmergency(address provider) external onlyRole(ADMIN_ROLE) {
        emergencySuspended[provider] = false;
        emit EmergencyRestored(provider, msg.sender);
    }

    function _end(uint256 id, Emergency storage e) private {
        e.expiresAt = uint64(block.timestamp);
        e.endedAt = uint64(block.timestamp);
        e.endedBy = msg.sender;
        emit EmergencyEnded(id, msg.sender);
    }

    function emergencyOf(uint256 id) external view returns (Emergency memory) {
        if (id >= _emergencies.length) revert NoSuchEmergency(id);
        return _emergencies[id];
    }

    function emergencyCount() external view returns (uint256) {
        return _emergencies.length;
    }

    /// Whether `provider`'s latest override on `patient` is still open.
    function inEmergency(address patient, address provider) public view returns (bool) {
        uint256 last = _lastEmergency[patient][provider];
        return last != 0 && block.timestamp < _emergencies[last - 1].expiresAt;
    }

    function setEmergencyDuration(uint64 duration) external onlyRole(ADMIN_ROLE) {
        if (duration == 0 || duration > 7 days) revert InvalidDuration(duration, 7 days);
        emergencyDuration = duration;
        emit EmergencyDurationSet(duration);
    }

    // --------------------------------------------------------------- recovery

    /// The patient names `guardians`, any `threshold` of whom may approve
    /// moving control to a new key, optionally a `backupKey` that holds a
    /// copy of their key material, and commits to the sealed shares
    /// (`sharesHash`). Approvals of an earlier round lapse. Refused while a
    /// recovery is open, so a stolen key cannot swap the guardians under it.
    function setGuardians(address[] calldata guardians, uint8 threshold, address backupKey, bytes32 sharesHash)
        external
    {
        address patient = _actingPatient();
        uint256 open = _openRecovery[patient];
        if (open != 0) revert RecoveryOpen(patient, open - 1);
        if (threshold == 0 || threshold > guardians.length || guardians.length > 16) {
            revert InvalidGuardians(guardians.length, threshold);
        }
        for (uint256 i = 0; i < guardians.length; i++) {
            address g = guardians[i];
            if (g == address(0) || g == patient || g == msg.sender) revert InvalidGuardians(guardians.length, threshold);
            for (uint256 j = 0; j < i; j++) {
                if (guardians[j] == g) revert InvalidGuardians(guardians.length, threshold);
            }
        }
        Guardians storage gs = _guardians[patient];
        gs.members = guardians;
        gs.threshold = threshold;
        gs.round += 1;
        gs.backupKey = backupKey;
        gs.sharesHash = sharesHash;
        emit GuardiansSet(patient, guardians, threshold, gs.round, backupKey, sharesHash);
    }

    function guardiansOf(address patient) external view returns (Guardians memory) {
        return _guardians[patient];
    }

    /// Step 1 begins: the holder of `msg.sender`, a fresh key that acts for
    /// nobody, asks to take over `patient`'s control. One open recovery per
    /// patient.
    function openRecovery(address patient) external returns (uint256 id) {
        _requirePatient(patient);
        Guardians storage gs = _guardians[patient];
        if (gs.members.length == 0) revert NoGuardians(patient);
        if (patientOf(msg.sender) != address(0) || _patientOfKey[msg.sender] != address(0)) {
            revert KeyInUse(msg.sender);
        }
        if (hasRole(PATIENT_ROLE, msg.sender)) revert KeyInUse(msg.sender);
        uint256 open = _openRecovery[patient];
        if (open != 0) revert RecoveryOpen(patient, open - 1);
        id = _recoveries.length;
        _recoveries.push(
            Recovery(
                patient,
                msg.sender,
                address(0),
                gs.round,
                uint64(block.timestamp),
                0,
                RecoveryState.Open,
                address(0),
                0,
                0,
                Review.None,
                address(0),
                0
            )
        );
        _openRecovery[patient] = id + 1;
        emit RecoveryOpened(id, patient, msg.sender, gs.round);
    }

    /// Steps 1 and 3: a guardian approves recovery `id`, attesting (by the
    /// hash of their evidence) that they verified the person's identity.
    function approveRecovery(uint256 id, bytes32 attestationHash) external {
        Recovery storage r = _openRecoveryAt(id);
        Guardians storage gs = _guardians[r.patient];
        bool member = false;
        for (uint256 i = 0; i < gs.members.length; i++) {
            if (gs.members[i] == msg.sender) member = true;
        }
        if (!member) revert NotAGuardian(r.patient, msg.sender);
        if (attestationHash == 0) revert InvalidGuardians(gs.members.length, gs.threshold);
        if (_approvalOf[id][msg.sender] != 0) revert AlreadyApproved(id, msg.sender);
        _approvalOf[id][msg.sender] = attestationHash;
        r.approvals += 1;
        emit RecoveryApproved(id, msg.sender, attestationHash, r.approvals);
    }

    /// Step 3: a credentialed provider, neither a guardian nor a party to
    /// the recovery, attests the person's identity.
    function attestIdentity(uint256 id, bytes32 attestationHash) external {
        Recovery storage r = _openRecoveryAt(id);
        if (!isCredentialed(msg.sender)) revert NotCredentialed(msg.sender);
        if (attestationHash == 0) revert NotAttested(id);
        bool conflict = msg.sender == r.patient || msg.sender == r.newKey || msg.sender == controllerOf(r.patient);
        Guardians storage gs = _guardians[r.patient];
        for (uint256 i = 0; i < gs.members.length; i++) {
            if (gs.members[i] == msg.sender) conflict = true;
        }
        if (conflict) revert AttesterConflict(id, msg.sender);
        r.attestedBy = msg.sender;
        r.attestationHash = attestationHash;
        emit IdentityAttested(id, msg.sender, attestationHash);
    }

    /// Step 4: the new key completes recovery `id` once `threshold`
    /// guardians of the current round approved and a provider attested: it
    /// becomes the patient's controller, and the old key acts for no one.
    /// Grants, delegations and consents are the identity's, so they stay.
    function completeRecovery(uint256 id) external {
        Recovery storage r = _openRecoveryAt(id);
        if (msg.sender != r.newKey) revert NotTheNewKey(id, msg.sender);
        if (patientOf(msg.sender) != address(0) || hasRole(PATIENT_ROLE, msg.sender)) revert KeyInUse(msg.sender);
        Guardians storage gs = _guardians[r.patient];
        if (r.approvals < gs.threshold) revert TooFewApprovals(id, r.approvals, gs.threshold);
        if (r.attestedBy == address(0) || !isCredentialed(r.attestedBy)) revert NotAttested(id);
        address patient = r.patient;
        address oldKey = _controller[patient] == address(0) ? patient : _controller[patient];
        if (oldKey != patient) delete _patientOfKey[oldKey];
        _controller[patient] = msg.sender;
        _patientOfKey[msg.sender] = patient;
        recoveryDisputed[patient] = false;
        gs.round += 1; // the old key's shares and every other approval lapse
        r.oldKey = oldKey;
        r.state = RecoveryState.Completed;
        r.completedAt = uint64(block.timestamp);
        r.review = Review.Pending;
        _openRecovery[patient] = 0;
        pendingRecoveryReviews += 1;
        emit ControlRecovered(id, patient, oldKey, msg.sender);
    }

    /// The new key (given up) or an auditor (a false alarm the patient
    /// reported) cancels an open recovery. Not the current key: if it was
    /// stolen, its thief could block every recovery.
    function cancelRecovery(uint256 id) external {
        Recovery storage r = _openRecoveryAt(id);
        bool allowed = msg.sender == r.newKey || hasRole(AUDITOR_ROLE, msg.sender);
        if (!allowed) revert NotAllowedToCancel(id, msg.sender);
        r.state = RecoveryState.Cancelled;
        _openRecovery[r.patient] = 0;
        emit RecoveryCancelled(id, msg.sender);
    }

    /// Step 5: an auditor reviews a completed recovery's trail. Found
    /// unjustified, the patient's control is frozen (nobody acts for them)
    /// until a new recovery completes.
    function reviewRecovery(uint256 id, bool justified, bytes32 findingHash) external onlyRole(AUDITOR_ROLE) {
        if (id >= _recoveries.length) revert NoSuchRecovery(id);
        Recovery storage r = _recoveries[id];
        if (r.state != RecoveryState.Completed) revert RecoveryNotCompleted(id);
        if (r.review != Review.Pending) revert AlreadyReviewed(id);
        r.review = justified ? Review.Justified : Review.Unjustified;
        r.reviewer = msg.sender;
        r.findingHash = findingHash;
        pendingRecoveryReviews -= 1;
        if (!justified && _controller[r.patient] == r.newKey) recoveryDisputed[r.patient] = true;
        emit RecoveryReviewed(id, msg.sender, justified, findingHash);
    }

    function recoveryOf(uint256 id) external view returns (Recovery memory) {
        if (id >= _recoveries.length) revert NoSuchRecovery(id);
        return _recoveries[id];
    }

    function recoveryCount() external view returns (uint256) {
        return _recoveries.length;
    }

    /// The attestation hash guardian `guardian` gave recovery `id` (zero:
    /// no approval).
    function approvalOf(uint256 id, address guardian) external view returns (bytes32) {
        return _approvalOf[id][guardian];
    }

    function _openRecoveryAt(uint256 id) private view returns (Recovery storage r) {
        if (id >= _recoveries.length) revert NoSuchRecovery(id);
        r = _recoveries[id];
        if (r.state != RecoveryState.Open) revert RecoveryNotOpen(id);
        uint64 round = _guardians[r.patient].round;
        if (r.round != round) revert RecoveryStale(id, r.round, round);
    }

    // ---------------------------------------------------------------- internal

    function _grantFor(address patient, address provider, uint64 duration, uint8 level, uint8 purposes, uint32 kinds)
        private
    {
        Delegation memory d = _activeDelegation(patient, msg.sender);
        uint64 expiresAt = uint64(block.timestamp) + duration;
        if (level > d.maxLevel || expiresAt > d.expiresAt) {
            revert ExceedsDelegation(level, expiresAt, d.maxLevel, d.expiresAt);
        }
        _grant(patient, provider, duration, level, purposes, kinds, msg.sender);
    }

    function _grant(
        address patient,
        address provider,
        uint64 duration,
        uint8 level,
        uint8 purposes,
        uint32 kinds,
        address by
    ) private {
        if (provider == address(0)) revert ZeroAddress();
        if (!hasRole(PROVIDER_ROLE, provider)) revert NotAProvider(provider);
        if (level == LEVEL_NONE || level > LEVEL_WRITE) revert InvalidLevel(level);
        if (purposes == 0 || purposes & ~ALL_PURPOSES != 0) revert InvalidPurposes(purposes);
        if (kinds == 0) revert InvalidKinds(kinds);
        if (duration == 0 || duration > MAX_DURATION) revert InvalidDuration(duration, MAX_DURATION);
        uint64 expiresAt = uint64(block.timestamp) + duration;
        _grants[patient][provider] = Grant(level, purposes, kinds, expiresAt, 0, by);
        emit AccessGranted(patient, provider, level, purposes, kinds, expiresAt, by);
    }

    function _activeDelegation(address patient, address delegate) private view returns (Delegation memory d) {
        d = _delegations[patient][delegate];
        if (d.maxLevel == LEVEL_NONE || block.timestamp >= d.expiresAt) revert NotADelegate(patient, delegate);
    }

    function _requirePatient(address account) private view {
        if (!hasRole(PATIENT_ROLE, account)) revert NotAPatient(account);
    }

    /// The patient the caller's key acts for.
    function _actingPatient() private view returns (address patient) {
        patient = patientOf(msg.sender);
        if (patient == address(0)) revert NotAPatient(msg.sender);
    }

    // --------------------------------------------------------------- geography
    // Kept apart from the credential itself (its struct and `attestCredential`
    // are unchanged): a provider's jurisdiction and a patient's own
    // geographic restriction. The engine reads both after `check` allows a
    // read and decides with the deployment's public policy before anything
    // is traced or decrypted (engine/src/access/geo.rs).

    /// The patient refuses readers outside their record's jurisdiction.
    uint8 public constant GEO_DOMESTIC_READS_ONLY = 1;
    /// The patient refuses research views of studies outside their
    /// records' jurisdiction.
    uint8 public constant GEO_NO_CROSS_BORDER_RESEARCH = 2;
    uint8 public constant GEO_ALL_RESTRICTIONS = 3;

    /// A provider's jurisdiction (ISO 3166 code as ASCII, zero-padded;
    /// zero: none attested), set by the issuer of their credential.
    mapping(address provider => bytes8) public jurisdictionOf;
    /// A patient's restrictions (GEO_* bits), set only by the patient.
    mapping(address patient => uint8) public geoRestrictionOf;

    event JurisdictionAttested(address indexed provider, address indexed issuer, bytes8 jurisdiction);
    event GeoRestrictionSet(address indexed patient, uint8 restrictions);

    error InvalidRestrictions(uint8 restrictions);

    /// The issuer of `provider`'s credential attests where they practise.
    function attestJurisdiction(address provider, bytes8 jurisdiction) external {
        if (_credentials[provider].issuer != msg.sender) revert NotIssuerOfCredential(provider, msg.sender);
        jurisdictionOf[provider] = jurisdiction;
        emit JurisdictionAttested(provider, msg.sender, jurisdiction);
    }

    /// A patient narrows where their records may be read or studied. The
    /// bits only ever refuse more than the deployment's policy does.
    function setGeoRestriction(uint8 restrictions) external {
        address patient = _actingPatient();
        if (restrictions & ~GEO_ALL_RESTRICTIONS != 0) revert InvalidRestrictions(restrictions);
        geoRestrictionOf[patient] = restrictions;
        emit GeoRestrictionSet(patient, restrictions);
    }
}
