// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {CohortAccess} from "./CohortAccess.sol";

/// @title PatientRecords: the hashes of patients' health records, every
/// version of them, and who may read them.
/// @dev The records themselves stay off chain (encrypted, content-addressed
/// blocks); this contract holds their hashes. A patient is identified by
/// the address that first registered; the key that acts for them is
/// `CohortAccess.controllerOf`, which a guardian recovery can move.
contract PatientRecords {
    struct Record {
        address patient;
        string metadata;
        uint64 createdAt;
    }

    struct Version {
        bytes32 dataHash;
        address author;
        uint64 at;
    }

    /// The latest keyed head of a custodian's log and its length.
    struct LogAnchor {
        uint64 entries;
        bytes32 head;
        uint64 at;
    }

    /// The latest anchor of each log (0: the audit log).
    mapping(uint8 log => LogAnchor) public logAnchorOf;

    /// A batch of record versions the custodian (the ENGINE role) ingested,
    /// anchored by the Merkle root of their leaves (see `anchorRecords`).
    struct Anchor {
        bytes32 root;
        uint32 count;
        uint64 at;
        address by;
    }

    CohortAccess public immutable access;
    Anchor[] private _anchors;

    mapping(bytes32 recordId => Record) private _records;
    mapping(bytes32 recordId => Version[]) private _versions;
    mapping(bytes32 recordId => mapping(address viewer => bool)) private _viewers;
    mapping(address patient => uint256) public recordCount;

    event RecordAdded(bytes32 indexed recordId, address indexed patient, bytes32 dataHash, string metadata);
    event RecordUpdated(bytes32 indexed recordId, address indexed patient, uint256 version, bytes32 dataHash, address author);
    event ViewerAuthorized(bytes32 indexed recordId, address indexed viewer);
    event ViewerRemoved(bytes32 indexed recordId, address indexed viewer);
    event RecordAccessed(
        bytes32 indexed recordId, address indexed patient, address indexed accessor, uint256 version, bool emergency
    );
    event RecordsAnchored(uint256 indexed batch, bytes32 root, uint32 count, address by);
    event LogAnchored(uint8 indexed log, uint64 entries, bytes32 head, address by);
    event RecordsAccessed(
        address indexed patient,
        address indexed accessor,
        uint8 purpose,
        bool emergency,
        uint64 at,
        bytes32[] recordIds
    );

    error LogShrank(uint8 log, uint64 entries, uint64 anchored);
    error NotAPatient(address account);
    error NotController(address patient, address caller);
    error RecordExists(bytes32 recordId);
    error NoSuchRecord(bytes32 recordId);
    error NotThePatientOf(bytes32 recordId, address patient);
    error AccessDenied(bytes32 recordId, address accessor);
    /// `reason` is one of CohortAccess's DENY_* codes.
    error Denied(address patient, address actor, uint8 reason);
    error NotTheEngine(address caller);
    error EmptyBatch();
    error LengthMismatch(uint256 recordIds, uint256 hashes);
    error NoSuchAnchor(uint256 batch);
    error ZeroAddress();

    constructor(CohortAccess access_) {
        if (address(access_) == address(0)) revert ZeroAddress();
        access = access_;
    }

    // ----------------------------------------------------------------- records

    /// The caller's patient adds a record: its first version's hash, public
    /// metadata (a type, never PHI) and the accounts that may read it.
    function addHealthRecord(bytes32 recordHash, string calldata metadata, address[] calldata authorizedViewers)
        external
        returns (bytes32 recordId)
    {
        address patient = _actingPatient();
        recordId = keccak256(abi.encode(patient, recordHash));
        if (_records[recordId].patient != address(0)) revert RecordExists(recordId);
        _records[recordId] = Record(patient, metadata, uint64(block.timestamp));
        _versions[recordId].push(Version(recordHash, msg.sender, uint64(block.timestamp)));
        recordCount[patient] += 1;
        emit RecordAdded(recordId, patient, recordHash, metadata);
        for (uint256 i = 0; i < authorizedViewers.length; i++) {
            address viewer = authorizedViewers[i];
            if (viewer == address(0)) revert ZeroAddress();
            if (!_viewers[recordId][viewer]) {
                _viewers[recordId][viewer] = true;
                emit ViewerAuthorized(recordId, viewer);
            }
        }
    }

    /// A new version of a record, by the patient's controlling key or a
    /// provider with write access. Every earlier version is kept.
    function updateHealthRecord(address patient, bytes32 recordId, bytes32 newDataHash) external {
        Record storage r = _record(recordId);
        if (r.patient != patient) revert NotThePatientOf(recordId, patient);
        if (controllerOf(patient) != msg.sender && !access.hasAccess(patient, msg.sender, access.LEVEL_WRITE())) {
            revert AccessDenied(recordId, msg.sender);
        }
        _versions[recordId].push(Version(newDataHash, msg.sender, uint64(block.timestamp)));
        emit RecordUpdated(recordId, patient, _versions[recordId].length - 1, newDataHash, msg.sender);
    }

    /// Reads the current version's hash, leaving an access event for the
    /// audit trail: by the patient's key, a listed viewer, a provider with a
    /// read grant, or a provider under an open emergency override.
    function accessPatientRecord(address patient, bytes32 recordId) external returns (bytes32 dataHash, uint256 version) {
        Record storage r = _record(recordId);
        if (r.patient != patient) revert NotThePatientOf(recordId, patient);
        bool emergency = false;
        if (controllerOf(patient) != msg.sender && !_viewers[recordId][msg.sender]) {
            if (!access.hasAccess(patient, msg.sender, access.LEVEL_READ())) revert AccessDenied(recordId, msg.sender);
            CohortAccess.Grant memory g = access.grantOf(patient, msg.sender);
            emergency = g.level == 0 || block.timestamp >= g.expiresAt;
        }
        version = _versions[recordId].length - 1;
        dataHash = _versions[recordId][version].dataHash;
        emit RecordAccessed(recordId, patient, msg.sender, version, emergency);
    }

    /// The custodian anchors a batch of `count` record versions it
    /// ingested: one transaction per batch, whatever its size. A version's
    /// leaf is `keccak256(abi.encode(recordId, version, dataHash))`; the
    /// engine keeps each batch's leaves so that `records verify` can prove a
    /// stored version against its root.
    function anchorRecords(bytes32 root, uint32 count) external returns (uint256 batch) {
        if (!access.hasRole(access.ENGINE_ROLE(), msg.sender)) revert NotTheEngine(msg.sender);
        if (root == bytes32(0) || count == 0) revert EmptyBatch();
        batch = _anchors.length;
        _anchors.push(Anchor(root, count, uint64(block.timestamp), msg.sender));
        emit RecordsAnchored(batch, root, count, msg.sender);
    }

    /// The custodian anchors the keyed head of one of its logs (0: the audit
    /// log) after `entries` entries: an HMAC only the custodian's keystore
    /// can compute, so a rewrite of the log, even a consistent one, no
    /// longer matches what the chain holds. Entries only grow.
    function anchorLog(uint8 log, uint64 entries, bytes32 head) external {
        if (!access.hasRole(access.ENGINE_ROLE(), msg.sender)) revert NotTheEngine(msg.sender);
        LogAnchor storage last = logAnchorOf[log];
        if (head == bytes32(0) || entries == 0 || entries < last.entries) revert LogShrank(log, entries, last.entries);
        logAnchorOf[log] = LogAnchor(entries, head, uint64(block.timestamp));
        emit LogAnchored(log, entries, head, msg.sender);
    }

    function anchorOf(uint256 batch) external view returns (Anchor memory) {
        if (batch >= _anchors.length) revert NoSuchAnchor(batch);
        return _anchors[batch];
    }

    function anchorCount() external view returns (uint256) {
        return _anchors.length;
    }

    /// New versions of a patient's records of `kinds`, by their controlling
    /// key or an account `CohortAccess.check` allows to write them for
    /// `purpose`. A record first seen here (one the custodian anchored in a
    /// batch) is registered to the patient; one registered to another
    /// patient is refused.
    function updateHealthRecords(
        address patient,
        bytes32[] calldata recordIds,
        bytes32[] calldata newDataHashes,
        uint32 kinds,
        uint8 purpose
    ) external {
        if (recordIds.length != newDataHashes.length) revert LengthMismatch(recordIds.length, newDataHashes.length);
        _authorize(patient, access.LEVEL_WRITE(), purpose, kinds);
        for (uint256 i = 0; i < recordIds.length; i++) {
            bytes32 recordId = recordIds[i];
            Record storage r = _records[recordId];
            if (r.patient == address(0)) {
                _records[recordId] = Record(patient, "", uint64(block.timestamp));
                recordCount[patient] += 1;
            } else if (r.patient != patient) {
                revert NotThePatientOf(recordId, patient);
            }
            _versions[recordId].push(Version(newDataHashes[i], msg.sender, uint64(block.timestamp)));
            emit RecordUpdated(recordId, patient, _versions[recordId].length - 1, newDataHashes[i], msg.sender);
        }
    }

    /// Authorizes and logs one read of some of a patient's records (of
    /// `kinds`, for `purpose`), as the reader: the chain decides
    /// (`CohortAccess.check`) before the engine decrypts anything, and the
    /// event is the read's on-chain trace, marked when an emergency override
    /// allowed it. Reverts with `Denied` naming the missing authorization.
    function accessPatientRecords(address patient, bytes32[] calldata recordIds, uint32 kinds, uint8 purpose)
        external
        returns (bool emergency)
    {
        uint8 level = kinds & ~access.SUMMARY_KINDS() == 0 ? access.LEVEL_SUMMARY() : access.LEVEL_READ();
        emergency = _authorize(patient, level, purpose, kinds);
        emit RecordsAccessed(patient, msg.sender, purpose, emergency, uint64(block.timestamp), recordIds);
    }

    /// What `accessPatientRecords` would decide, without a trace.
    function checkAccess(address patient, address actor, uint8 level, uint8 purpose, uint32 kinds)
        public
        view
        returns (uint8 reason, bool emergency)
    {
        return access.check(patient, actor, level, purpose, kinds);
    }

    function _authorize(address patient, uint8 level, uint8 purpose, uint32 kinds) private view returns (bool) {
        (uint8 reason, bool emergency) = checkAccess(patient, msg.sender, level, purpose, kinds);
        if (reason != 0) revert Denied(patient, msg.sender, reason);
        return emergency;
    }

    function authorizeViewer(bytes32 recordId, address viewer) external {
        Record storage r = _record(recordId);
        _requireController(r.patient);
        if (viewer == address(0)) revert ZeroAddress();
        _viewers[recordId][viewer] = true;
        emit ViewerAuthorized(recordId, viewer);
    }

    function removeViewer(bytes32 recordId, address viewer) external {
        Record storage r = _record(recordId);
        _requireController(r.patient);
        _viewers[recordId][viewer] = false;
        emit ViewerRemoved(recordId, viewer);
    }

    function recordOf(bytes32 recordId) external view returns (Record memory) {
        return _record(recordId);
    }

    function versionsOf(bytes32 recordId) external view returns (Version[] memory) {
        _record(recordId);
        return _versions[recordId];
    }

    function isViewer(bytes32 recordId, address viewer) external view returns (bool) {
        return _viewers[recordId][viewer];
    }

    // ----------------------------------------------------------------- control

    /// The key that acts for `patient` (`CohortAccess` decides: guardian
    /// recovery lives there, so grants follow the patient to a new key).
    function controllerOf(address patient) public view returns (address) {
        return access.controllerOf(patient);
    }

    /// The patient `key` acts for, or zero if it acts for none.
    function patientOf(address key) public view returns (address) {
        return access.patientOf(key);
    }

    // ---------------------------------------------------------------- internal

    function _actingPatient() private view returns (address patient) {
        patient = patientOf(msg.sender);
        if (patient == address(0)) revert NotAPatient(msg.sender);
    }

    function _requireController(address patient) private view {
        if (controllerOf(patient) != msg.sender) revert NotController(patient, msg.sender);
    }

    function _record(bytes32 recordId) private view returns (Record storage r) {
        r = _records[recordId];
        if (r.patient == address(0)) revert NoSuchRecord(recordId);
    }
}
