"""What tests/ and bench/ share to run the real stack: its processes (``processes``) and one
way to wait for something to happen (``polling``). Plain Python, no pytest, not installed
with the product (run from the repository root)."""
