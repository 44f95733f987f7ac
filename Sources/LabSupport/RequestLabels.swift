// TEMPORARY (issue 8): removed once lessons 07, 08, 11 and 12 give requests fixed user_data.
// Naming requests. A CQE carries only `user_data` to say which request it answers (lesson 03),
// so lessons that print many completions give every SQE the next user_data and remember a
// label for it. Lessons 07, 08, 11 and 12 print their CQEs this way.

import CLiburing

/// A label for each user_data handed out, counting up from `firstUserData`.
public final class RequestLabels {
    private var labels: [UInt64: String] = [:]
    private var nextUserData: UInt64

    public init(firstUserData: UInt64 = 1) {
        nextUserData = firstUserData
    }

    /// `io_uring_sqe_set_data64(sqe, next user_data)`, remembering `label` for it.
    /// Returns the user_data. Set it after the `io_uring_prep_*` call or before: liburing's prep
    /// functions leave `user_data` alone.
    @discardableResult
    public func tag(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ label: String) -> UInt64 {
        let userData = nextUserData
        io_uring_sqe_set_data64(sqe, userData)
        labels[userData] = label
        nextUserData += 1
        return userData
    }

    /// `getSQE(ring)` (io_uring_get_sqe, or an error line if the SQ is full), tagged with `label`.
    public func getSQE(_ ring: Ring, _ label: String) -> UnsafeMutablePointer<io_uring_sqe> {
        let sqe = LabSupport.getSQE(ring)
        tag(sqe, label)
        return sqe
    }

    /// The label given to `userData`, or `?` for one this object never handed out.
    public subscript(userData: UInt64) -> String {
        labels[userData] ?? "?"
    }
}

/// `io_uring_wait_cqe` `count` times, printing each CQE with its position in arrival order and
/// its label (`CQE 2: fsync: user_data=2 res=0 flags=0`). Returns copies, in arrival order.
@discardableResult
public func waitAndPrint(_ ring: Ring, count: Int, labels: RequestLabels) -> [io_uring_cqe] {
    var arrived: [io_uring_cqe] = []
    for position in stride(from: 1, through: count, by: 1) {
        var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
        let ret = io_uring_wait_cqe(ring, &cqePointer)
        guard ret == 0, let pointer = cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))") }
        let cqe = pointer.pointee  // copy it before the slot goes back to the kernel
        io_uring_cqe_seen(ring, pointer)
        printCQE(cqe, "CQE \(position): \(labels[cqe.user_data])")
        arrived.append(cqe)
    }
    return arrived
}
