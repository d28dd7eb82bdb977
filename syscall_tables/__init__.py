"""Generated per-ABI syscall tables (data/*.json); see generate.py and PROVENANCE.json."""
