#!/usr/bin/env python3
"""Join thin Mach-O files of different CPU types into one universal ("fat") file.

    macho-universal.py OUTPUT INPUT...

What `lipo -create` does, for the two kinds of file scripts/build-mac.sh makes: a linked
Mach-O (the tool) and a static archive of Mach-O objects (libapplevz.a). Apple's lipo
does not run on Linux, and LLVM's reads every archive member with its own object reader,
which fails on objects from a newer LLVM than its own (Rust's); the fat format itself is
only a header, so this writes it.

An input's CPU type comes from its Mach-O header, or for an archive from its Mach-O
members, which must all agree (an archive holding objects of two CPU types is refused,
as is one without any Mach-O object). Two inputs of the same CPU type, a fat input and an
unknown file are refused too. Exit status 0 on success, 1 on a refused input (with the
reason on stderr); OUTPUT is written only on success.
"""

import os
import struct
import sys

FAT_MAGIC = 0xCAFEBABE
MH_MAGIC_64 = 0xFEEDFACF
AR_MAGIC = b"!<arch>\n"
# Slices start on 16 KiB boundaries (arm64's page size; a multiple of x86_64's 4 KiB), so
# the loader can map an executable slice directly.
ALIGN_LOG2 = 14
CPU_NAMES = {0x01000007: "x86_64", 0x0100000C: "arm64"}


class Refused(Exception):
    """An input that cannot go into a universal file, with the reason."""


def thin_cpu(data, what):
    """(cputype, cpusubtype) of a 64-bit little-endian Mach-O header, or None."""
    if len(data) < 12:
        return None
    magic, cputype, cpusubtype = struct.unpack_from("<III", data, 0)
    if magic != MH_MAGIC_64:
        return None
    if cputype not in CPU_NAMES:
        raise Refused(f"{what}: unexpected CPU type {cputype:#x}")
    # The top byte of cpusubtype holds capability bits, kept as they are.
    return cputype, cpusubtype


def archive_cpu(data, path):
    """The one (cputype, cpusubtype) of every Mach-O object in an ar archive."""
    found = {}
    offset = len(AR_MAGIC)
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        if header[58:60] != b"`\n":
            raise Refused(f"{path}: malformed archive member header at byte {offset}")
        name = header[0:16].decode("ascii", "replace").strip()
        size = int(header[48:58].decode("ascii").strip())
        body = offset + 60
        start = body
        if name.startswith("#1/"):  # BSD long name, stored before the member's data
            start += int(name[3:])
            name = data[body:start].rstrip(b"\0").decode("utf-8", "replace")
        member = data[start : body + size]
        cpu = thin_cpu(member, f"{path}({name})")
        if cpu is not None:
            found.setdefault(cpu, name)
        offset = body + size + (size & 1)
    if not found:
        raise Refused(f"{path}: an archive without any 64-bit Mach-O object")
    if len(found) > 1:
        kinds = ", ".join(f"{CPU_NAMES[c[0]]} ({m})" for c, m in found.items())
        raise Refused(f"{path}: objects of more than one CPU type: {kinds}")
    return next(iter(found))


def cpu_of(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) >= 4 and struct.unpack_from(">I", data, 0)[0] == FAT_MAGIC:
        raise Refused(f"{path}: already a universal file")
    if data.startswith(AR_MAGIC):
        return archive_cpu(data, path), data
    cpu = thin_cpu(data, path)
    if cpu is None:
        raise Refused(f"{path}: neither a 64-bit Mach-O file nor an archive")
    return cpu, data


def universal(inputs):
    """The bytes of a universal file holding each input as one slice, in order."""
    slices = []
    for path in inputs:
        (cputype, cpusubtype), data = cpu_of(path)
        for other_type, _, _, other_path in slices:
            if other_type == cputype:
                raise Refused(
                    f"{path} and {other_path} are both {CPU_NAMES[cputype]}"
                )
        slices.append((cputype, cpusubtype, data, path))
    align = 1 << ALIGN_LOG2
    header = struct.pack(">II", FAT_MAGIC, len(slices))
    offset = align
    records, body = [], b""
    for cputype, cpusubtype, data, _ in slices:
        padding = -offset % align  # none before the first slice
        body += b"\0" * padding
        offset += padding
        records.append(
            struct.pack(">iiIII", cputype, cpusubtype, offset, len(data), ALIGN_LOG2)
        )
        body += data
        offset += len(data)
    head = header + b"".join(records)
    return head + b"\0" * (align - len(head)) + body


def main(argv):
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        print("usage: macho-universal.py OUTPUT INPUT INPUT...", file=sys.stderr)
        return 2
    output, inputs = argv[1], argv[2:]
    try:
        data = universal(inputs)
    except (Refused, OSError, ValueError) as error:
        print(f"macho-universal: {error}", file=sys.stderr)
        return 1
    temporary = output + ".partial"
    with open(temporary, "wb") as f:
        f.write(data)
    # An executable input gives an executable output.
    mode = 0o755 if any(os.access(p, os.X_OK) for p in inputs) else 0o644
    os.chmod(temporary, mode)
    os.replace(temporary, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
