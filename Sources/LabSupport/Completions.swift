// The round trip of lesson 03, for lessons whose subject is something else: take an SQE,
// submit, wait for the CQEs and copy them out. Lessons 03 and 06 make these calls themselves.

import CLiburing

/// `io_uring_get_sqe`, or exit 1 with an `error:` line if the SQ is full. For lessons in
/// which a full SQ would be a bug: they submit and reap before the ring can fill up.
public func getSQE(_ ring: UnsafeMutablePointer<io_uring>) -> UnsafeMutablePointer<io_uring_sqe> {
    guard let sqe = io_uring_get_sqe(ring) else {
        fail("io_uring_get_sqe returned nil: the submission queue is full")
    }
    return sqe
}

/// `io_uring_submit`, expecting the kernel to accept `count` SQEs, then `io_uring_wait_cqe`
/// `count` times. Returns copies of the CQEs in the order they arrived; each slot is handed
/// back with `io_uring_cqe_seen` right after it is copied. For one request: `submitAndWait(ring)[0]`.
///
/// `io_uring_submit` says how many SQEs the kernel *accepted*, not whether they succeeded:
/// a request that fails is still accepted, and its failure is the `res` of its CQE.
public func submitAndWait(_ ring: UnsafeMutablePointer<io_uring>, count: Int = 1) -> [io_uring_cqe] {
    let submitted = io_uring_submit(ring)
    guard submitted == count else {
        fail("io_uring_submit returned \(describe(res: submitted)), expected \(count)")
    }
    var cqes: [io_uring_cqe] = []
    for _ in 0..<count {
        var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
        let ret = io_uring_wait_cqe(ring, &cqePointer)
        guard ret == 0, let cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))") }
        cqes.append(cqePointer.pointee)  // copy it before the slot goes back to the kernel
        io_uring_cqe_seen(ring, cqePointer)
    }
    return cqes
}
