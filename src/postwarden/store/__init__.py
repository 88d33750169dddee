"""The store: the only package that talks to the database.

``db`` connects (SQLite with its write lock, PostgreSQL) and migrates; ``tables`` is the
schema; ``batch`` holds the only hand-written SQL, behind named functions; the other modules
are the store's operations, one per kind of thing kept.
"""
