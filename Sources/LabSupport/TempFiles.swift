// Temporary files and directories that remove themselves when the lesson exits, however it
// exits. Each call makes a new private directory (mkdtemp), so lessons and tests can run in
// parallel without sharing a path.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A new empty directory under $TMPDIR (or /tmp), removed with everything in it at exit.
public func makeTempDir(_ purpose: String = "lesson") -> String {
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array("\(base)/iouring-lab-\(purpose)-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else {
        fail("cannot create a temporary directory under \(base): \(describe(res: -errno))")
    }
    let path = String(cString: made)
    _ = releaseAtExit { removeTree(path) }
    return path
}

/// A new file holding `contents`, in its own temporary directory (removed at exit).
public func makeTempFile(named name: String = "data.txt", contents: [UInt8]) -> String {
    let path = makeTempDir() + "/" + name
    let fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0o644)
    guard fd >= 0 else { fail("cannot create \(path): \(describe(res: -errno))") }
    defer { close(fd) }
    var written = 0
    while written < contents.count {
        let n = contents[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { fail("cannot write \(path): \(describe(res: -errno))") }
        written += n
    }
    return path
}

/// `rm -rf path`, without following symbolic links.
private func removeTree(_ path: String) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    guard info.st_mode & S_IFMT == S_IFDIR else {
        unlink(path)
        return
    }
    if let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { removeTree(path + "/" + name) }
        }
        closedir(dir)
    }
    rmdir(path)
}
