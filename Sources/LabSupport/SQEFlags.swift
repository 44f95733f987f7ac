// The SQE flags under their C names. liburing defines them as macros over enum constants
// (`#define IOSQE_IO_LINK (1U << IOSQE_IO_LINK_BIT)`), which Swift cannot import, so the shim
// exposes each as a constant and this file gives it back its own name.
// man 2 io_uring_enter, "sqe->flags"; set them with io_uring_sqe_set_flags(sqe, flags).

import CLiburing

/// 5.1: `fd` is an index into the registered file table, not a file descriptor.
public let IOSQE_FIXED_FILE = LAB_IOSQE_FIXED_FILE
/// 5.2: start only after every earlier request has completed.
public let IOSQE_IO_DRAIN = LAB_IOSQE_IO_DRAIN
/// 5.3: the next SQE starts only after this one succeeds; a failure cancels the rest.
public let IOSQE_IO_LINK = LAB_IOSQE_IO_LINK
/// 5.5: like IO_LINK, but the chain goes on even if this request fails.
public let IOSQE_IO_HARDLINK = LAB_IOSQE_IO_HARDLINK
/// 5.6: always issue from an io-wq worker instead of trying inline first.
public let IOSQE_ASYNC = LAB_IOSQE_ASYNC
/// 5.7: let the kernel pick a buffer from the group in `buf_group`.
public let IOSQE_BUFFER_SELECT = LAB_IOSQE_BUFFER_SELECT
/// 5.17: post no CQE if the request succeeds.
public let IOSQE_CQE_SKIP_SUCCESS = LAB_IOSQE_CQE_SKIP_SUCCESS
