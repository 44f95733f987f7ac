// swift-tools-version:6.0
// The io_uring lab: one executable per lesson, a tiny helper module, and the tests that run them.
import PackageDescription

/// Every lesson, in order. Each is `Sources/<name>/main.swift`, prose in `lessons/NN-slug.md`,
/// and a test in `Tests/LessonTests`.
let lessons = [
    "lesson-01-ring-setup",
    "lesson-02-probe",
    "lesson-03-nop-and-user-data",
    "lesson-04-read-file",
    "lesson-05-write-file",
    "lesson-06-batching",
    "lesson-07-linked-ops",
    "lesson-08-timeouts",
    "lesson-09-vectored-io",
    "lesson-10-file-copy",
    "lesson-11-splice-tee",
    "lesson-12-file-ops",
    "lesson-13-fixed-files",
    "lesson-14-fixed-buffers",
    "lesson-15-sqpoll",
    "lesson-16-iopoll",
    "lesson-17-tcp-basics",
    "lesson-18-echo-server",
    "lesson-19-multishot-accept",
    "lesson-20-provided-buffers",
    "lesson-21-buffer-rings",
    "lesson-22-multishot-recv",
    "lesson-23-send-zc",
    "lesson-24-udp",
    "lesson-25-cancellation",
    "lesson-26-poll",
    "lesson-27-eventfd",
    "lesson-28-cq-overflow",
    "lesson-29-msg-ring",
    "lesson-30-direct-descriptors",
    "lesson-31-modern-setup",
]

let package = Package(
    name: "IoUringLab",
    products: lessons.map { .executable(name: $0, targets: [$0]) },
    targets: [
        // liburing, found with pkg-config; `make setup` installs Debian's liburing-dev.
        .systemLibrary(
            name: "CLiburing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // What every lesson would otherwise repeat: ring ownership, errno names, printing CQEs,
        // skips, temp files, arguments. Never the io_uring call a lesson is about.
        .target(name: "LabSupport", dependencies: ["CLiburing"]),
        // Part IV's sockets where they are not the subject: a loopback listener made through the
        // ring, the demos' plain blocking clients, a thread. Lessons 17 on link it.
        .target(name: "LabNet", dependencies: ["CLiburing", "LabSupport"]),
        .testTarget(name: "LessonTests"),
    ] + lessons.map { name in
        .executableTarget(name: name, dependencies: ["CLiburing", "LabSupport"] + (name >= "lesson-17" ? ["LabNet"] : []))
    },
    swiftLanguageModes: [.v6]
)
