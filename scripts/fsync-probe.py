#!/usr/bin/env python3
"""How long this machine's disk takes to flush (BENCHMARKS.md, "The log
flushed after the write turn"): 64 KB written then fdatasync'd, 400 times,
by 1, 2, 4 and 8 threads at once. Prints flushes per second and latency.

Usage: scripts/fsync-probe.py [directory, default: the current one]
"""
import os, sys, threading, time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
path = os.path.join(directory, "fsync-probe.tmp")
size, count = 65536, 400
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
try:
    os.write(fd, b"\0" * size * count * 8)
    os.fsync(fd)
    for threads in (1, 2, 4, 8):
        waits = []
        def flush(k):
            for i in range(count // threads):
                os.pwrite(fd, b"y" * size, ((k * count + i) % (count * 8)) * size)
                began = time.perf_counter()
                os.fdatasync(fd)
                waits.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        workers = [threading.Thread(target=flush, args=(k,)) for k in range(threads)]
        for w in workers: w.start()
        for w in workers: w.join()
        elapsed = time.perf_counter() - began
        waits.sort()
        print(f"{threads} thread(s): {len(waits) / elapsed:.0f} flushes/s, "
              f"p50 {waits[len(waits) // 2]:.2f} ms, p99 {waits[int(len(waits) * 0.99)]:.2f} ms")
finally:
    os.close(fd)
    os.remove(path)
