#!/usr/bin/python3
"""sqlite_commits.py FILE SECONDS - the checkout bench's baseline: single-row INSERT commits per
second that one thread makes on a WAL SQLite database with synchronous=FULL (as gr opens 16's),
each commit waiting for its own fsync. Prints the rate; removes FILE and its -wal/-shm after."""
import os
import sqlite3
import sys
import time

path, secs = sys.argv[1], float(sys.argv[2])
con = sqlite3.connect(path, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA synchronous=FULL")
con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
    con.execute("COMMIT")
    n += 1
rate = n / (time.monotonic() - t0)
con.close()
for suffix in ("", "-wal", "-shm"):
    try:
        os.unlink(path + suffix)
    except FileNotFoundError:
        pass
print("%.0f" % rate)
