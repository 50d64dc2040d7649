#!/usr/bin/env python3
"""How full the resident pages of a process's heap are.

Usage: resident_pages.py PID   (root, or the process's own user)

Reads /proc/PID/maps, /proc/PID/pagemap and /proc/PID/mem, and for every resident page of the
heap and of anonymous read-write mappings (glibc's other arenas; mappings over 256 MiB, such
as reserved address space, are skipped) counts its non-zero bytes. Many resident pages with
only a few hundred non-zero bytes mean memory that is touched at one end and never used:
with the relay, the first page of each of hyper's 8 KiB connection buffers (BENCHMARKS.md,
"Relay"). Stop the process (or what drives it) first so that the pages hold still.
"""
import struct
import sys


def main() -> None:
    pid = int(sys.argv[1])
    present = 0
    # Pages by eighths of non-zero bytes: [0, 1/8), [1/8, 2/8), ..., the whole page.
    histogram = [0] * 9
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(
        f"/proc/{pid}/mem", "rb"
    ) as mem:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if "rw" not in fields[1] or (name and name != "[heap]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > 256 * 1024 * 1024:
                continue
            pages = (end - start) // 4096
            pagemap.seek(start // 4096 * 8)
            entries = pagemap.read(pages * 8)
            for page in range(pages):
                entry = struct.unpack_from("<Q", entries, page * 8)[0]
                if not entry >> 63 & 1:
                    continue
                present += 1
                mem.seek(start + page * 4096)
                try:
                    data = mem.read(4096)
                except OSError:
                    continue
                non_zero = 4096 - data.count(0)
                histogram[min(8, non_zero * 8 // 4096)] += 1
    print(f"resident heap pages: {present} ({present * 4 / 1024:.1f} MiB)")
    print("pages by non-zero bytes, in eighths of a page:", histogram)


if __name__ == "__main__":
    main()
