"""Multi-process training support: shard-local helpers (:mod:`.shards`) and FSDP2 (:mod:`.fsdp`).

Kept import-light: :mod:`.fsdp` (which imports the methods) is loaded only when used.
"""
