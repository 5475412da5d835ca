// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {CohortAccess} from "./CohortAccess.sol";

/// @title Appointments: a credentialed provider's published hours, visit
/// types and policy; bookings paid into escrow (the patient's copay, or the
/// deposit the policy asks, and the insurer's share of a covered visit);
/// confirmation by a deadline; cancellation refunded by the policy's
/// notice tiers; completion paying the provider; no-shows forfeiting the
/// deposit, disputable within a window and resolved by an admin.
/// @dev Every rule that moves ether is here, so no engine can bend it. A
/// slot is one provider's start time: it holds at most one live booking
/// (booked or confirmed), which makes double booking impossible whatever
/// the order transactions arrive in. Times are unix seconds; a provider's
/// hours are seconds after local midnight, Monday first, local time being
/// UTC plus the provider's offset. Ether moves after the state it depends
/// on is written, and every paying function is non-reentrant.
contract Appointments is ReentrancyGuard {
    enum Status {
        None,
        Booked,
        Confirmed,
        Declined,
        Expired,
        Cancelled,
        Completed,
        NoShow,
        Disputed,
        Excused
    }

    /// A provider's weekly hours.
    struct Hours {
        int32 utcOffset;
        uint32 slotSeconds;
        uint32[7] opens;
        uint32[7] closes;
    }

    /// A provider's terms, versioned: a booking keeps the version it was
    /// made under. A patient cancelling at least `notice[i]` seconds before
    /// the start gets back `refundBps[i]` of what they paid (the first tier
    /// that matches; none matching: nothing); tiers run from the longest
    /// notice down.
    struct Policy {
        uint16 depositBps;
        uint16 noShowThreshold;
        uint16 thresholdDepositBps;
        uint32 confirmWindow;
        uint32 noShowGrace;
        uint32[3] notice;
        uint16[3] refundBps;
    }

    struct Coverage {
        address insurer;
        uint16 shareBps;
        uint64 expiresAt;
        bytes32 policyHash;
    }

    /// What a booking costs, split.
    struct Quote {
        uint128 fee;
        uint128 insurerShare;
        uint128 copay;
        uint128 deposit;
        address insurer;
        uint64 coverageExpiresAt;
        uint32 policyVersion;
    }

    struct Appointment {
        address patient;
        address provider;
        address insurer;
        uint64 start;
        uint64 bookedAt;
        uint64 confirmBy;
        uint64 markedAt;
        bytes32 visitType;
        bytes32 reasonHash;
        uint128 fee;
        uint128 insurerShare;
        uint128 copay;
        uint128 deposit;
        uint128 paid;
        uint128 held;
        uint32 policyVersion;
        Status status;
    }

    uint16 private constant BPS = 10000;
    uint32 private constant DAY = 1 days;

    CohortAccess public immutable access;
    /// How long a patient has to dispute a no-show.
    uint64 public disputeWindow = 7 days;

    Appointment[] private _appointments;
    mapping(address provider => Hours) private _hours;
    mapping(address provider => mapping(uint256 localDay => bool)) public closedOn;
    mapping(address provider => mapping(bytes32 visitType => uint128)) public feeOf;
    mapping(address provider => Policy[]) private _policies;
    mapping(address provider => mapping(uint64 start => uint256)) private _slot;
    mapping(bytes32 key => Coverage) private _coverage;
    mapping(address insurer => uint256) public insurerFunds;
    mapping(address patient => uint256) public noShowCount;

    event HoursSet(address indexed provider, Hours hours_);
    event DaysClosed(address indexed provider, uint32[] localDays, bool closed);
    event VisitTypeSet(address indexed provider, bytes32 indexed visitType, uint128 fee);
    event PolicySet(address indexed provider, uint32 version, Policy policy);
    event DisputeWindowSet(uint64 disputeWindow);
    event CoverageVerified(
        address indexed patient,
        address indexed provider,
        bytes32 indexed visitType,
        address insurer,
        uint16 shareBps,
        uint64 expiresAt,
        bytes32 policyHash
    );
    event CoverageRevoked(address indexed patient, address indexed provider, bytes32 indexed visitType);
    event InsurerFunded(address indexed insurer, uint256 balance);
    event AppointmentBooked(uint256 indexed id, Appointment appointment);
    /// A change of status and the ether it moved: back to the patient, to
    /// the provider, back to the insurer's funds or out of them.
    event AppointmentSettled(
        uint256 indexed id,
        Status status,
        address indexed by,
        uint128 toPatient,
        uint128 toProvider,
        uint128 toInsurer,
        uint128 fromInsurer,
        uint64 at
    );
    event BalancePaid(uint256 indexed id, uint128 amount, uint128 paid, uint128 toProvider);

    error MissingRole(bytes32 role, address account);
    error NotCredentialed(address provider);
    error InvalidHours();
    error InvalidPolicy();
    error InvalidFee();
    error InvalidCoverage();
    error NoHours(address provider);
    error NoPolicy(address provider);
    error NotOffered(address provider, bytes32 visitType);
    error InPast(uint64 start);
    error OutsideHours(address provider, uint64 start);
    error SlotTaken(address provider, uint64 start, uint256 id);
    error PaymentBelow(uint256 sent, uint256 required);
    error PaymentAbove(uint256 sent, uint256 allowed);
    error InsurerUnderfunded(address insurer, uint256 needed, uint256 funds);
    error NoSuchAppointment(uint256 id);
    error WrongStatus(uint256 id, Status status);
    error NotParty(uint256 id, address caller);
    error TooEarly(uint256 id, uint64 allowedFrom);
    error TooLate(uint256 id, uint64 deadline);
    error NoCoverage(address patient, address provider, bytes32 visitType);
    error InsufficientFunds(uint256 asked, uint256 funds);
    error TransferFailed(address to, uint256 amount);

    modifier onlyRole(bytes32 role) {
        if (!access.hasRole(role, msg.sender)) revert MissingRole(role, msg.sender);
        _;
    }

    modifier onlyCredentialed() {
        if (!access.isCredentialed(msg.sender)) revert NotCredentialed(msg.sender);
        _;
    }

    constructor(CohortAccess access_) {
        access = access_;
    }

    // ---- what providers publish ----

    /// A credentialed provider publishes their weekly hours (a day with
    /// `opens == closes` is closed).
    function setHours(Hours calldata h) external onlyCredentialed {
        if (h.slotSeconds < 5 minutes || h.slotSeconds > DAY) revert InvalidHours();
        if (h.utcOffset < -14 hours || h.utcOffset > 14 hours) revert InvalidHours();
        for (uint256 d = 0; d < 7; d++) {
            if (h.opens[d] > h.closes[d] || h.closes[d] > DAY) revert InvalidHours();
        }
        _hours[msg.sender] = h;
        emit HoursSet(msg.sender, h);
    }

    /// Closes (or reopens) whole local days, numbered from 1970-01-01.
    function setClosed(uint32[] calldata localDays, bool closed) external onlyCredentialed {
        for (uint256 i = 0; i < localDays.length; i++) {
            closedOn[msg.sender][localDays[i]] = closed;
        }
        emit DaysClosed(msg.sender, localDays, closed);
    }

    /// Sets the fee of a visit type (zero: no longer offered).
    function setVisitType(bytes32 visitType, uint128 fee) external onlyCredentialed {
        if (visitType == bytes32(0)) revert InvalidFee();
        feeOf[msg.sender][visitType] = fee;
        emit VisitTypeSet(msg.sender, visitType, fee);
    }

    /// Publishes new terms; bookings already made keep theirs.
    function setPolicy(Policy calldata p) external onlyCredentialed {
        if (p.depositBps > BPS || p.thresholdDepositBps > BPS || p.confirmWindow == 0) revert InvalidPolicy();
        for (uint256 i = 0; i < 3; i++) {
            if (p.refundBps[i] > BPS) revert InvalidPolicy();
            if (i > 0 && (p.notice[i] > p.notice[i - 1] || p.refundBps[i] > p.refundBps[i - 1])) {
                revert InvalidPolicy();
            }
        }
        _policies[msg.sender].push(p);
        emit PolicySet(msg.sender, uint32(_policies[msg.sender].length - 1), p);
    }

    function setDisputeWindow(uint64 window) external onlyRole(access.ADMIN_ROLE()) {
        if (window == 0 || window > 90 days) revert InvalidPolicy();
        disputeWindow = window;
        emit DisputeWindowSet(window);
    }

    function hoursOf(address provider) external view returns (Hours memory) {
        return _hours[provider];
    }

    function policyOf(address provider) public view returns (Policy memory p, uint32 version) {
        uint256 n = _policies[provider].length;
        if (n == 0) revert NoPolicy(provider);
        return (_policies[provider][n - 1], uint32(n - 1));
    }

    /// Whether `start` begins a slot of `provider`'s hours on an open day.
    function inHours(address provider, uint64 start) public view returns (bool) {
        Hours storage h = _hours[provider];
        if (h.slotSeconds == 0) return false;
        int256 local = int256(uint256(start)) + h.utcOffset;
        if (local < 0) return false;
        uint256 l = uint256(local);
        uint256 day = l / DAY;
        if (closedOn[provider][day]) return false;
        uint256 weekday = (day + 3) % 7; // 1970-01-01 was a Thursday; Monday is 0
        uint256 second = l % DAY;
        uint256 open = h.opens[weekday];
        return second >= open && second + h.slotSeconds <= h.closes[weekday] && (second - open) % h.slotSeconds == 0;
    }

    /// The live booking of a slot, if any.
    function bookingAt(address provider, uint64 start) public view returns (bool taken, uint256 id) {
        uint256 s = _slot[provider][start];
        return (s != 0, s == 0 ? 0 : s - 1);
    }

    // ---- insurers ----

    /// An insurer attests `patient`'s coverage of `shareBps` of the fee for
    /// visits of `visitType` with `provider` starting before `expiresAt`.
    function verifyCoverage(
        address patient,
        address provider,
        bytes32 visitType,
        uint16 shareBps,
        uint64 expiresAt,
        bytes32 policyHash
    ) external onlyRole(access.INSURER_ROLE()) {
        if (shareBps == 0 || shareBps > BPS || expiresAt <= block.timestamp) revert InvalidCoverage();
        _coverage[_coverageKey(patient, provider, visitType)] = Coverage(msg.sender, shareBps, expiresAt, policyHash);
        emit CoverageVerified(patient, provider, visitType, msg.sender, shareBps, expiresAt, policyHash);
    }

    /// The insurer that attested a coverage (or an admin) withdraws it;
    /// bookings already made keep their split.
    function revokeCoverage(address patient, address provider, bytes32 visitType) external {
        bytes32 key = _coverageKey(patient, provider, visitType);
        Coverage storage c = _coverage[key];
        if (c.insurer == address(0)) revert NoCoverage(patient, provider, visitType);
        if (c.insurer != msg.sender && !access.hasRole(access.ADMIN_ROLE(), msg.sender)) {
            revert MissingRole(access.INSURER_ROLE(), msg.sender);
        }
        delete _coverage[key];
        emit CoverageRevoked(patient, provider, visitType);
    }

    /// An insurer adds to the funds its shares are paid from.
    function fundCoverage() external payable onlyRole(access.INSURER_ROLE()) {
        insurerFunds[msg.sender] += msg.value;
        emit InsurerFunded(msg.sender, insurerFunds[msg.sender]);
    }

    /// An insurer takes back funds not reserved by a booking.
    function withdrawFunds(uint256 amount) external nonReentrant {
        uint256 funds = insurerFunds[msg.sender];
        if (amount > funds) revert InsufficientFunds(amount, funds);
        insurerFunds[msg.sender] = funds - amount;
        emit InsurerFunded(msg.sender, funds - amount);
        _send(msg.sender, amount);
    }

    function coverageOf(address patient, address provider, bytes32 visitType) external view returns (Coverage memory) {
        return _coverage[_coverageKey(patient, provider, visitType)];
    }

    /// What booking `visitType` with `provider` at `start` costs `patient`
    /// now: the insurer's share (if a coverage in force at `start` exists
    /// and its insurer still holds the role), the copay, and the deposit
    /// the policy asks at booking (raised for patients at or above the
    /// no-show threshold).
    function quote(address patient, address provider, bytes32 visitType, uint64 start)
        public
        view
        returns (Quote memory q)
    {
        if (!access.isCredentialed(provider)) revert NotCredentialed(provider);
        uint128 fee = feeOf[provider][visitType];
        if (fee == 0) revert NotOffered(provider, visitType);
        (Policy memory p, uint32 version) = policyOf(provider);
        Coverage storage c = _coverage[_coverageKey(patient, provider, visitType)];
        q.fee = fee;
        q.policyVersion = version;
        if (c.insurer != address(0) && start < c.expiresAt && access.hasRole(access.INSURER_ROLE(), c.insurer)) {
            q.insurer = c.insurer;
            q.coverageExpiresAt = c.expiresAt;
            q.insurerShare = uint128(uint256(fee) * c.shareBps / BPS);
        }
        q.copay = fee - q.insurerShare;
        uint16 depositBps = p.depositBps;
        if (p.noShowThreshold > 0 && noShowCount[patient] >= p.noShowThreshold && p.thresholdDepositBps > depositBps) {
            depositBps = p.thresholdDepositBps;
        }
        q.deposit = uint128(uint256(q.copay) * depositBps / BPS);
    }

    // ---- bookings ----

    /// A patient books `provider`'s slot at `start` for `visitType`,
    /// paying at least the deposit and at most the copay; a covered visit
    /// reserves the insurer's share from its funds.
    function book(address provider, uint64 start, bytes32 visitType, bytes32 reasonHash)
        external
        payable
        returns (uint256 id)
    {
        address patient = access.patientOf(msg.sender);
        if (patient == address(0)) revert MissingRole(access.PATIENT_ROLE(), msg.sender);
        if (!access.isCredentialed(provider)) revert NotCredentialed(provider);
        if (start <= block.timestamp) revert InPast(start);
        if (_hours[provider].slotSeconds == 0) revert NoHours(provider);
        if (!inHours(provider, start)) revert OutsideHours(provider, start);
        (bool taken, uint256 other) = bookingAt(provider, start);
        if (taken) revert SlotTaken(provider, start, other);
        Quote memory q = quote(patient, provider, visitType, start);
        if (msg.value < q.deposit) revert PaymentBelow(msg.value, q.deposit);
        if (msg.value > q.copay) revert PaymentAbove(msg.value, q.copay);
        if (q.insurerShare > 0) {
            uint256 funds = insurerFunds[q.insurer];
            if (funds < q.insurerShare) revert InsurerUnderfunded(q.insurer, q.insurerShare, funds);
            insurerFunds[q.insurer] = funds - q.insurerShare;
        }
        (Policy memory p,) = policyOf(provider);
        uint64 confirmBy = uint64(block.timestamp) + p.confirmWindow;
        if (confirmBy > start) confirmBy = start;
        id = _appointments.length;
        Appointment memory a = Appointment({
            patient: patient,
            provider: provider,
            insurer: q.insurer,
            start: start,
            bookedAt: uint64(block.timestamp),
            confirmBy: confirmBy,
            markedAt: 0,
            visitType: visitType,
            reasonHash: reasonHash,
            fee: q.fee,
            insurerShare: q.insurerShare,
            copay: q.copay,
            deposit: q.deposit,
            paid: uint128(msg.value),
            held: uint128(msg.value),
            policyVersion: q.policyVersion,
            status: Status.Booked
        });
        _appointments.push(a);
        _slot[provider][start] = id + 1;
        emit AppointmentBooked(id, a);
    }

    /// The provider confirms a booking by its deadline.
    function confirm(uint256 id) external {
        Appointment storage a = _provided(id);
        _expect(id, a, Status.Booked);
        if (block.timestamp > a.confirmBy) revert TooLate(id, a.confirmBy);
        a.status = Status.Confirmed;
        emit AppointmentSettled(id, Status.Confirmed, msg.sender, 0, 0, 0, 0, uint64(block.timestamp));
    }

    /// The provider declines a booking: everything paid goes back.
    function decline(uint256 id) external nonReentrant {
        Appointment storage a = _provided(id);
        _expect(id, a, Status.Booked);
        _refundAll(id, a, Status.Declined);
    }

    /// Anyone ends a booking its provider did not confirm by the deadline:
    /// everything paid goes back.
    function expire(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        _expect(id, a, Status.Booked);
        if (block.timestamp <= a.confirmBy) revert TooEarly(id, a.confirmBy + 1);
        _refundAll(id, a, Status.Expired);
    }

    /// The patient or the provider cancels before the start. The provider's
    /// cancellation refunds everything; the patient's refunds what they
    /// paid by the booking's notice tiers, the rest going to the provider.
    /// The insurer's share always goes back to its funds.
    function cancel(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        if (msg.sender != access.controllerOf(a.patient) && msg.sender != a.provider) revert NotParty(id, msg.sender);
        if (a.status != Status.Booked && a.status != Status.Confirmed) revert WrongStatus(id, a.status);
        if (block.timestamp >= a.start) revert TooLate(id, a.start);
        if (msg.sender == a.provider) {
            _refundAll(id, a, Status.Cancelled);
            return;
        }
        uint16 bps = refundBpsAt(id, uint64(block.timestamp));
        uint128 refund = uint128(uint256(a.held) * bps / BPS);
        _settle(id, a, Status.Cancelled, refund, a.held - refund, a.insurerShare, 0);
    }

    /// The share of what was paid a patient cancelling `id` at `at` gets back.
    function refundBpsAt(uint256 id, uint64 at) public view returns (uint16) {
        Appointment storage a = _appointment(id);
        if (at >= a.start) return 0;
        Policy storage p = _policies[a.provider][a.policyVersion];
        uint64 notice = a.start - at;
        for (uint256 i = 0; i < 3; i++) {
            if (notice >= p.notice[i] && p.refundBps[i] > 0) return p.refundBps[i];
        }
        return 0;
    }

    /// The patient pays (part of) the rest of their copay; after completion
    /// it goes straight to the provider.
    function pay(uint256 id) external payable nonReentrant {
        Appointment storage a = _appointment(id);
        _requirePatientOf(id, a);
        if (a.status != Status.Booked && a.status != Status.Confirmed && a.status != Status.Completed) {
            revert WrongStatus(id, a.status);
        }
        uint128 owed = a.copay - a.paid;
        if (msg.value == 0) revert PaymentBelow(0, 1);
        if (msg.value > owed) revert PaymentAbove(msg.value, owed);
        a.paid += uint128(msg.value);
        uint128 toProvider;
        if (a.status == Status.Completed) {
            toProvider = uint128(msg.value);
        } else {
            a.held += uint128(msg.value);
        }
        emit BalancePaid(id, uint128(msg.value), a.paid, toProvider);
        _send(a.provider, toProvider);
    }

    /// The provider completes a confirmed visit once it has started: what
    /// the patient paid and the insurer's share go to the provider.
    function complete(uint256 id) external nonReentrant {
        Appointment storage a = _provided(id);
        _expect(id, a, Status.Confirmed);
        if (block.timestamp < a.start) revert TooEarly(id, a.start);
        _settle(id, a, Status.Completed, 0, a.held, 0, a.insurerShare);
    }

    /// The provider marks a confirmed visit's patient absent after the
    /// grace period: the deposit (or what was paid, if less) is held for the
    /// dispute window, the rest goes back, the insurer's share too.
    function markNoShow(uint256 id) external nonReentrant {
        Appointment storage a = _provided(id);
        _expect(id, a, Status.Confirmed);
        uint64 from = a.start + _policies[a.provider][a.policyVersion].noShowGrace;
        if (block.timestamp < from) revert TooEarly(id, from);
        uint128 forfeit = a.held < a.deposit ? a.held : a.deposit;
        a.markedAt = uint64(block.timestamp);
        noShowCount[a.patient] += 1;
        _settle(id, a, Status.NoShow, a.held - forfeit, 0, a.insurerShare, 0);
    }

    /// The patient disputes a no-show within the window.
    function dispute(uint256 id) external {
        Appointment storage a = _appointment(id);
        _requirePatientOf(id, a);
        _expect(id, a, Status.NoShow);
        uint64 deadline = a.markedAt + disputeWindow;
        if (block.timestamp >= deadline) revert TooLate(id, deadline);
        a.status = Status.Disputed;
        emit AppointmentSettled(id, Status.Disputed, msg.sender, 0, 0, 0, 0, uint64(block.timestamp));
    }

    /// An admin resolves a dispute: upheld, the forfeited deposit goes to
    /// the provider; overturned, back to the patient and the no-show is
    /// struck from their count.
    function resolveDispute(uint256 id, bool noShowStands) external nonReentrant onlyRole(access.ADMIN_ROLE()) {
        Appointment storage a = _appointment(id);
        _expect(id, a, Status.Disputed);
        if (noShowStands) {
            _settle(id, a, Status.NoShow, 0, a.held, 0, 0);
        } else {
            noShowCount[a.patient] -= 1;
            _settle(id, a, Status.Excused, a.held, 0, 0, 0);
        }
    }

    /// Anyone pays a no-show's forfeited deposit to the provider once the
    /// dispute window has passed undisputed.
    function releaseForfeit(uint256 id) external nonReentrant {
        Appointment storage a = _appointment(id);
        _expect(id, a, Status.NoShow);
        if (a.held == 0) revert WrongStatus(id, a.status);
        uint64 from = a.markedAt + disputeWindow;
        if (block.timestamp < from) revert TooEarly(id, from);
        _settle(id, a, Status.NoShow, 0, a.held, 0, 0);
    }

    function appointmentOf(uint256 id) external view returns (Appointment memory) {
        return _appointment(id);
    }

    function appointmentCount() external view returns (uint256) {
        return _appointments.length;
    }

    // ---- internals ----

    function _coverageKey(address patient, address provider, bytes32 visitType) private pure returns (bytes32) {
        return keccak256(abi.encode(patient, provider, visitType));
    }

    function _appointment(uint256 id) private view returns (Appointment storage a) {
        if (id >= _appointments.length) revert NoSuchAppointment(id);
        a = _appointments[id];
    }

    function _provided(uint256 id) private view returns (Appointment storage a) {
        a = _appointment(id);
        if (msg.sender != a.provider) revert NotParty(id, msg.sender);
    }

    function _expect(uint256 id, Appointment storage a, Status status) private view {
        if (a.status != status) revert WrongStatus(id, a.status);
    }

    function _refundAll(uint256 id, Appointment storage a, Status status) private {
        _settle(id, a, status, a.held, 0, a.insurerShare, 0);
    }

    /// Moves `a` to `status` and its escrow out: `toPatient` and
    /// `toProvider` from what the patient paid, `toInsurer` back to the
    /// insurer's funds, `fromInsurer` (the reserved share) to the provider.
    /// A booking that ends without a visit frees its slot.
    function _settle(
        uint256 id,
        Appointment storage a,
        Status status,
        uint128 toPatient,
        uint128 toProvider,
        uint128 toInsurer,
        uint128 fromInsurer
    ) private {
        a.held -= toPatient + toProvider;
        a.status = status;
        if (status == Status.Declined || status == Status.Expired || status == Status.Cancelled) {
            delete _slot[a.provider][a.start];
        }
        if (toInsurer > 0) insurerFunds[a.insurer] += toInsurer;
        emit AppointmentSettled(id, status, msg.sender, toPatient, toProvider, toInsurer, fromInsurer, uint64(block.timestamp));
        // To the key that acts for the patient now (after a recovery, not
        // the old, possibly stolen, one).
        _send(access.controllerOf(a.patient), toPatient);
        _send(a.provider, uint256(toProvider) + fromInsurer);
    }

    /// Only the key that acts for the booking's patient now.
    function _requirePatientOf(uint256 id, Appointment storage a) private view {
        if (msg.sender != access.controllerOf(a.patient)) revert NotParty(id, msg.sender);
    }

    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
