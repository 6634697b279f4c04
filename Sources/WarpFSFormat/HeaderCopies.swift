/// The two header copies at the start of a backing file, decoded once, and
/// what they make of the file: a plain file, a container (with its newest
/// valid copy), or a container none of whose copies is valid. The one
/// classification the file system, `fsck` and the converters use.
public struct HeaderCopies: Sendable {
    /// Bytes to read from offset 0 to classify a file (both copies).
    public static let span = 2 * FileHeader.size(version: 2)

    /// What one copy holds.
    public enum Copy: Sendable, Equatable {
        case valid(FileHeader)
        /// All zeros (as far as a short file goes): never written (a file
        /// written once has copy A alone). Not damage.
        case unwritten
        case invalid(FileHeader.DecodeError)
    }

    /// What the file is.
    public enum Kind: Sendable, Equatable {
        /// No magic, and no near-magic a valid copy B vouches for.
        case plain
        /// A container: its newest valid copy, and which copy that is.
        case container(FileHeader, copy: Int)
        /// A container (by its magic) with no valid copy: an error, never
        /// to be shown as plain bytes. The first error of a copy that had
        /// the magic, else `notAHeader`.
        case damaged(FileHeader.DecodeError)
    }

    /// Copy A and copy B.
    public let copies: [Copy]
    /// Where copy A and copy B are: by the version of the valid copies
    /// (version 3: 0 and 64; version 2: 0 and 512), else by the version copy
    /// A states, else version 3's.
    public let copyOffsets: [Int]
    /// Whether the first bytes mark a container: the magic, or copy A's
    /// magic off by a flipped bit or two with a valid copy B
    /// (`secondCopyVouches`).
    public let hasContainerMagic: Bool

    /// Decodes the copies in `first`, the first bytes of a file (up to
    /// `span`; fewer for a short file).
    public init(_ first: UnsafeRawBufferPointer) {
        // `size` bytes are decoded (a copy states its own size); the first
        // `zeros` bytes all zero make an unwritten copy.
        func copy(at off: Int, size: Int, zeros: Int) -> Copy {
            let raw = UnsafeRawBufferPointer(rebasing: first[min(off, first.count)..<min(off + size, first.count)])
            do throws(FileHeader.DecodeError) { return .valid(try FileHeader.decode(raw)) } catch {
                return raw.prefix(zeros).allSatisfy({ $0 == 0 }) ? .unwritten : .invalid(error)
            }
        }
        let a = copy(at: 0, size: HeaderCopies.span, zeros: FileHeader.size(version: FileHeader.version))
        // Copy B's place: the version of a valid copy A, else whichever
        // version's copy B is valid, else the version copy A states.
        let version: UInt16
        if case .valid(let h) = a { version = h.version }
        else if let v = HeaderCopies.validSecondCopy(first) { version = v }
        else { version = first.count >= 10 && first[8] == 2 && first[9] == 0 ? 2 : FileHeader.version }
        let size = FileHeader.size(version: version)
        copyOffsets = FileHeader.copyOffsets(version: version)
        // Copy B must state the version whose place it is in: a valid header
        // of the other version there (a version-3 copy at 512 beside a
        // version-2 copy A) is no copy of this container.
        var b = copy(at: size, size: size, zeros: size)
        if case .valid(let h) = b, h.version != version {
            b = .invalid(.unsupported("format version \(h.version) in the place of a version-\(version) copy B"))
        }
        copies = [a, b]
        hasContainerMagic = FileHeader.hasMagic(first) || HeaderCopies.secondCopyVouches(first)
    }

    /// The valid copy with the higher generation (A on a tie), if any.
    public var newest: (header: FileHeader, copy: Int)? {
        var best: (header: FileHeader, copy: Int)?
        for (i, c) in copies.enumerated() {
            if case .valid(let h) = c, best == nil || h.generation > best!.header.generation { best = (h, i) }
        }
        return best
    }

    /// Why no copy is valid: the first error other than `notAHeader`, else `notAHeader`.
    public var firstError: FileHeader.DecodeError {
        for c in copies { if case .invalid(let e) = c, e != .notAHeader { return e } }
        return .notAHeader
    }

    public var kind: Kind {
        guard hasContainerMagic else { return .plain }
        if let n = newest { return .container(n.header, copy: n.copy) }
        return .damaged(firstError)
    }

    /// Whether a file whose first 8 bytes are not the magic is still a
    /// container with a damaged copy A: copy B (at 64 for version 3, at 512
    /// for version 2) is a valid header of its version and the first 8
    /// bytes differ from the magic in at most 2 bits (a flipped bit must not
    /// show a container's bytes as a plain file, while a plain file that
    /// merely embeds a container, like a tar archive of a backing file,
    /// stays plain).
    public static func secondCopyVouches(_ first: UnsafeRawBufferPointer) -> Bool {
        guard validSecondCopy(first) != nil, first.count >= FileHeader.magic.count else { return false }
        var differing = 0
        for (i, m) in FileHeader.magic.enumerated() { differing += (first[i] ^ m).nonzeroBitCount }
        return differing <= 2
    }

    /// The version whose copy B is valid in `first` (where that version puts
    /// it), if one is.
    static func validSecondCopy(_ first: UnsafeRawBufferPointer) -> UInt16? {
        for v in FileHeader.versions.reversed() {
            let off = FileHeader.size(version: v)
            guard first.count >= 2 * off,
                  let h = try? FileHeader.decode(UnsafeRawBufferPointer(rebasing: first[off..<(2 * off)])), h.version == v else { continue }
            return v
        }
        return nil
    }
}

extension FileHeader.DecodeError {
    /// Short words for messages: "no header", "bad checksum", or what is unsupported.
    public var reason: String {
        switch self {
        case .notAHeader: return "no header"
        case .badChecksum: return "bad checksum"
        case .unsupported(let s): return s
        }
    }
}
