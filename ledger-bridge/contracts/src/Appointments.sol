// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {CohortAccess} from "./CohortAccess.sol";

/// @title Appointments: booking with the fee held by the contract,
/// confirmation, cancellation under a refund policy, completion, no-shows
/// and insurance attested by an issuer.
/// @dev Refund policy: a provider's cancellation, or a patient's before the
/// cut-off (`cancelCutoff` seconds before the appointment), refunds the
/// whole fee; a patient's later cancellation refunds `lateRefundBps` / 10000
/// of it and pays the rest to the provider.
contract Appointments is ReentrancyGuard {
    enum Status {
        None,
        Scheduled,
        Confirmed,
        Cancelled,
        Completed,
        NoShow
    }

    struct Appointment {
        address patient;
        address provider;
        uint64 timestamp;
        bytes32 reasonHash;
        uint256 fee;
        Status status;
        bool insured;
        bool reminded;
    }

    struct Insurance {
        address issuer;
        bytes32 policyHash;
        uint64 expiresAt;
    }

    CohortAccess public immutable access;
    uint64 public cancelCutoff = 24 hours;
    uint16 public lateRefundBps = 5000;
    uint64 public reminderWindow = 24 hours;
    uint64 public noShowGrace = 1 hours;

    Appointment[] private _appointments;
    mapping(address provider => uint256) public feeOf;
    mapping(address patient => uint256) public noShowCount;
    mapping(address patient => Insurance) private _insurance;

    event FeeSet(address indexed provider, uint256 fee);
    event PolicySet(uint64 cancelCutoff, uint16 lateRefundBps, uint64 reminderWindow, uint64 noShowGrace);
    event AppointmentScheduled(
        uint256 indexed id, address indexed patient, address indexed provider, uint64 timestamp, bytes32 reasonHash, uint256 fee, bool insured
    );
    event AppointmentConfirmed(uint256 indexed id, address indexed provider);
    event AppointmentCancelled(uint256 indexed id, address indexed by, uint256 refund, uint256 providerShare);
    event AppointmentCompleted(uint256 indexed id, uint256 paid);
    event AppointmentNoShow(uint256 indexed id, address indexed patient, uint256 noShows);
    event AppointmentReminder(uint256 indexed id, address indexed patient, address indexed provider, uint64 timestamp);
    event InsuranceVerified(address indexed patient, address indexed issuer, bytes32 policyHash, uint64 expiresAt);

    error MissingRole(bytes32 role, address account);
    error NotCredentialed(address provider);
    error WrongFee(uint256 sent, uint256 fee);
    error InPast(uint64 timestamp);
    error NoSuchAppointment(uint256 id);
    error WrongStatus(uint256 id, Status status);
    error NotParty(uint256 id, address caller);
    error TooEarly(uint256 id, uint64 allowedFrom);
    error AlreadyReminded(uint256 id);
    error InvalidPolicy();
    error InvalidExpiry(uint64 expiresAt);
    error TransferFailed(address to, uint256 amount);

    modifier onlyRole(bytes32 role) {
        if (!access.hasRole(role, msg.sender)) revert MissingRole(role, msg.sender);
        _;
    }

    constructor(CohortAccess access_) {
        access = access_;
    }

    /// A provider sets the fee a booking with them must carry.
    function setFee(uint256 fee) external onlyRole(access.PROVIDER_ROLE()) {
        feeOf[msg.sender] = fee;
        emit FeeSet(msg.sender, fee);
    }

    function setPolicy(uint64 cutoff, uint16 lateBps, uint64 window, uint64 grace)
        external
        onlyRole(access.ADMIN_ROLE())
    {
        if (lateBps > 10000 || window == 0) revert InvalidPolicy();
        cancelCutoff = cutoff;
        lateRefundBps = lateBps;
        reminderWindow = window;
        noShowGrace = grace;
        emit PolicySet(cutoff, lateBps, window, grace);
    }

    /// An issuer attests a patient's insurance until `expiresAt`.
    function verifyInsurance(address patient, bytes32 policyHash, uint64 expiresAt)
        external
        onlyRole(access.ISSUER_ROLE())
    {
        if (expiresAt <= block.timestamp) revert InvalidExpiry(expiresAt);
        _insurance[patient] = Insurance(msg.sender, policyHash, expiresAt);
        emit InsuranceVerified(patient, msg.sender, policyHash, expiresAt);
    }

    function insuranceOf(address patient) external view returns (Insurance memory) {
        return _insurance[patient];
    }

    function isInsured(address patient) public view returns (bool) {
        Insurance storage i = _insurance[patient];
        return i.issuer != address(0) && block.timestamp < i.expiresAt && access.hasRole(access.ISSUER_ROLE(), i.issuer);
    }

    /// A patient books `provider` at `timestamp`, sending the provider's fee,
    /// which the contract holds until the appointment is settled.
    function scheduleAppointment(address provider, uint64 timestamp, bytes32 reasonHash)
        external
        payable
        onlyRole(access.PATIENT_ROLE())
        returns (uint256 id)
    {
        if (!access.isCredentialed(provider)) revert NotCredentialed(provider);
        if (timestamp <= block.timestamp) revert InPast(timestamp);
        if (msg.value != feeOf[provider]) revert WrongFee(msg.value, feeOf[provider]);
        bool insured = isInsured(msg.sender);
        id = _appointments.length;
        _appointments.push(
            Appointment(msg.sender, provider, timestamp, reasonHash, msg.value, Status.Scheduled, insured, false)
        );
        emit AppointmentScheduled(id, msg.sender, provider, timestamp, reasonHash, msg.value, insured);
    }

    function confirm(uint256 id) external {
        Appointment storage a = _appointment(id);
        if (msg.sender != a.provider) revert NotParty(id, msg.sender);
        if (a.status != Status.Scheduled) revert WrongStatus(id, a.status);
        a.status = Status.Confirmed;
        emit AppointmentConfirmed(id, msg.sender);
    }

    /// The patient or the provider cancels before the appointment; the fee
    /// is refunded by the policy.
    function cancel(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        if (msg.sender != a.patient && msg.sender != a.provider) revert NotParty(id, msg.sender);
        if (a.status != Status.Scheduled && a.status != Status.Confirmed) revert WrongStatus(id, a.status);
        if (block.timestamp >= a.timestamp) revert WrongStatus(id, a.status);
        uint256 refund = a.fee;
        if (msg.sender == a.patient && block.timestamp + cancelCutoff > a.timestamp) {
            refund = a.fee * lateRefundBps / 10000;
        }
        uint256 providerShare = a.fee - refund;
        a.status = Status.Cancelled;
        emit AppointmentCancelled(id, msg.sender, refund, providerShare);
        _send(a.patient, refund);
        _send(a.provider, providerShare);
    }

    /// The provider completes a confirmed appointment once its time has
    /// come; the held fee goes to them.
    function complete(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        if (msg.sender != a.provider) revert NotParty(id, msg.sender);
        if (a.status != Status.Confirmed) revert WrongStatus(id, a.status);
        if (block.timestamp < a.timestamp) revert TooEarly(id, a.timestamp);
        a.status = Status.Completed;
        emit AppointmentCompleted(id, a.fee);
        _send(a.provider, a.fee);
    }

    /// The provider marks a patient who did not come, after the grace
    /// period; the fee goes to the provider and the patient's count grows.
    function markNoShow(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        if (msg.sender != a.provider) revert NotParty(id, msg.sender);
        if (a.status != Status.Scheduled && a.status != Status.Confirmed) revert WrongStatus(id, a.status);
        uint64 from = a.timestamp + noShowGrace;
        if (block.timestamp < from) revert TooEarly(id, from);
        a.status = Status.NoShow;
        uint256 count = ++noShowCount[a.patient];
        emit AppointmentNoShow(id, a.patient, count);
        _send(a.provider, a.fee);
    }

    /// Anyone (a reminder service) emits the one reminder of an upcoming
    /// appointment inside the reminder window.
    function remind(uint256 id) external {
        Appointment storage a = _appointment(id);
        if (a.status != Status.Scheduled && a.status != Status.Confirmed) revert WrongStatus(id, a.status);
        if (a.reminded) revert AlreadyReminded(id);
        uint64 from = a.timestamp > reminderWindow ? a.timestamp - reminderWindow : 0;
        if (block.timestamp < from) revert TooEarly(id, from);
        if (block.timestamp >= a.timestamp) revert WrongStatus(id, a.status);
        a.reminded = true;
        emit AppointmentReminder(id, a.patient, a.provider, a.timestamp);
    }

    function appointmentOf(uint256 id) external view returns (Appointment memory) {
        return _appointment(id);
    }

    function appointmentCount() external view returns (uint256) {
        return _appointments.length;
    }

    function _appointment(uint256 id) private view returns (Appointment storage a) {
        if (id >= _appointments.length) revert NoSuchAppointment(id);
        a = _appointments[id];
    }

    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
