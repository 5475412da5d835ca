// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title CohortAccess: roles, provider credentials, patients' access grants
/// and emergency overrides. The registry every other cohort contract reads
/// its roles and grants from.
/// @dev Grants are keyed by the patient's address. Time is the block
/// timestamp; every expiry is exclusive (a grant expiring at t is void at t).
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

    constructor(address admin) {
        if (admin == address(0)) revert ZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ---------------------------------------------------------------- patients

    /// Any account may register itself as a patient.
    function registerPatient() external {
        if (_grantRole(PATIENT_ROLE, msg.sender)) emit PatientRegistered(msg.sender);
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
        _requirePatient(msg.sender);
        _grant(msg.sender, provider, duration, level, PURPOSE_TREATMENT, ALL_KINDS, msg.sender);
    }

    /// A patient grants access limited to some purposes and record kinds.
    function grantAccessScoped(address provider, uint64 duration, uint8 level, uint8 purposes, uint32 kinds)
        external
    {
        _requirePatient(msg.sender);
        _grant(msg.sender, provider, duration, level, purposes, kinds, msg.sender);
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
        if (msg.sender != patient) _activeDelegation(patient, msg.sender);
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
        if (actor == patient) return (OK, false);
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
        _requirePatient(msg.sender);
        if (delegate == address(0)) revert ZeroAddress();
        if (maxLevel == LEVEL_NONE || maxLevel > LEVEL_WRITE) revert InvalidLevel(maxLevel);
        if (duration == 0 || duration > MAX_DURATION) revert InvalidDuration(duration, MAX_DURATION);
        uint64 expiresAt = uint64(block.timestamp) + duration;
        _delegations[msg.sender][delegate] = Delegation(maxLevel, expiresAt);
        emit DelegateSet(msg.sender, delegate, maxLevel, expiresAt);
    }

    function revokeDelegate(address delegate) external {
        if (_delegations[msg.sender][delegate].maxLevel == LEVEL_NONE) revert NotADelegate(msg.sender, delegate);
        delete _delegations[msg.sender][delegate];
        emit DelegateRevoked(msg.sender, delegate);
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
        bool allowed = msg.sender == e.patient || msg.sender == e.provider || hasRole(AUDITOR_ROLE, msg.sender);
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
        _requirePatient(msg.sender);
        if (restrictions & ~GEO_ALL_RESTRICTIONS != 0) revert InvalidRestrictions(restrictions);
        geoRestrictionOf[msg.sender] = restrictions;
        emit GeoRestrictionSet(msg.sender, restrictions);
    }
}
