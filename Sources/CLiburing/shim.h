// The only C the lab writes: a doorway to liburing for Swift.
//
// 1. Include order (the "feature-macro clash"). liburing.h defines _XOPEN_SOURCE
//    and _GNU_SOURCE before it pulls in glibc, which would give this module a different
//    `fd_set` from the one Foundation and Dispatch see, and every target importing both fails
//    on a clean build. Including the glibc headers first, with the default feature macros,
//    fixes their shape before liburing.h gets a say.
// 2. A few liburing names are macros Swift cannot import (IOSQE_* are shifts of enum
//    constants). They become plain constants of the same names below, and nothing more.
//    One glibc declaration joins them.
#ifndef LAB_CLIBURING_SHIM_H
#define LAB_CLIBURING_SHIM_H

#include <features.h>
#include <sys/types.h>
#include <sys/select.h>
#include <signal.h>
#include <stdio.h>
// `struct statx` and STATX_*: glibc declares them only under _GNU_SOURCE, which the include
// order above keeps off, so they come from the kernel's header (io_uring_prep_statx needs them).
#include <linux/stat.h>
// eventfd(2) and EFD_* (lesson 27): Swift's Glibc module does not import <sys/eventfd.h>.
#include <sys/eventfd.h>
// poll(2)'s POLLRDHUP (lesson 26) is declared only under _GNU_SOURCE; its value, as the kernel's EPOLLRDHUP.
#ifndef POLLRDHUP
#define POLLRDHUP 0x2000
#endif

#include <liburing.h>

// glibc 2.32's errno names ("ENOENT" for 2); string.h declares it only under _GNU_SOURCE.
extern const char *strerrorname_np(int errnum);
// Whether a write to stdout failed; Swift 6 cannot name the global `stdout` (shared mutable state).
static inline int lab_stdout_error(void) { return ferror(stdout); }

// SQE flags (man 2 io_uring_enter, "sqe->flags"): liburing's are macros, (1U << IOSQE_IO_LINK_BIT),
// which Swift cannot import. The same names, as constants of the type io_uring_sqe_set_flags takes.
#undef IOSQE_FIXED_FILE
static const unsigned IOSQE_FIXED_FILE = 1U << IOSQE_FIXED_FILE_BIT;
#undef IOSQE_IO_DRAIN
static const unsigned IOSQE_IO_DRAIN = 1U << IOSQE_IO_DRAIN_BIT;
#undef IOSQE_IO_LINK
static const unsigned IOSQE_IO_LINK = 1U << IOSQE_IO_LINK_BIT;
#undef IOSQE_IO_HARDLINK
static const unsigned IOSQE_IO_HARDLINK = 1U << IOSQE_IO_HARDLINK_BIT;
#undef IOSQE_ASYNC
static const unsigned IOSQE_ASYNC = 1U << IOSQE_ASYNC_BIT;
#undef IOSQE_BUFFER_SELECT
static const unsigned IOSQE_BUFFER_SELECT = 1U << IOSQE_BUFFER_SELECT_BIT;
#undef IOSQE_CQE_SKIP_SUCCESS
static const unsigned IOSQE_CQE_SKIP_SUCCESS = 1U << IOSQE_CQE_SKIP_SUCCESS_BIT;

// Newer than liburing 2.3's header: the kernel's numbers (include/uapi/linux/io_uring.h), used
// only after a probe. Opcodes are enum constants in newer liburings, hence the LAB_ names.
#define LAB_IORING_OP_BIND 56    // Linux 6.11; liburing 2.7 adds io_uring_prep_bind
#define LAB_IORING_OP_LISTEN 57  // Linux 6.11; liburing 2.7 adds io_uring_prep_listen
#define LAB_IORING_REGISTER_PBUF_STATUS 26  // Linux 6.8: a buffer ring's head (liburing 2.6: io_uring_buf_ring_head)
struct lab_io_uring_buf_status { __u32 buf_group; __u32 head; __u32 resv[8]; };
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)   // Linux 6.2, in sqe->ioprio of SEND_ZC
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31) // in the notification's res: the data was copied
#endif

#endif
