// The only C the lab writes: a doorway to liburing for Swift.
//
// 1. Include order (the "feature-macro clash"). liburing.h defines _XOPEN_SOURCE
//    and _GNU_SOURCE before it pulls in glibc, which would give this module a different
//    `fd_set` from the one Foundation and Dispatch see, and every target importing both fails
//    on a clean build. Including the glibc headers first, with the default feature macros,
//    fixes their shape before liburing.h gets a say.
// 2. A few liburing names are macros Swift cannot import (IOSQE_* are shifts of enum
//    constants). They get plain constants below, with the same name plus a LAB_ prefix
//    removed in Swift by LabSupport, and nothing more.
#ifndef LAB_CLIBURING_SHIM_H
#define LAB_CLIBURING_SHIM_H

#include <features.h>
#include <sys/types.h>
#include <sys/select.h>
#include <signal.h>
// `struct statx` and STATX_*: glibc declares them only under _GNU_SOURCE, which the include
// order above keeps off, so they come from the kernel's header (io_uring_prep_statx needs them).
#include <linux/stat.h>

#include <liburing.h>

// SQE flags (man 2 io_uring_enter, "sqe->flags"). In liburing these are macros of the form
// (1U << IOSQE_IO_LINK_BIT), which Swift does not import.
static const __u8 LAB_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const __u8 LAB_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const __u8 LAB_IOSQE_IO_LINK = IOSQE_IO_LINK;
static const __u8 LAB_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK;
static const __u8 LAB_IOSQE_ASYNC = IOSQE_ASYNC;
static const __u8 LAB_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const __u8 LAB_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS;

#endif
