"""`python -m gptresume` (also what `torchrun -m gptresume` runs)."""

from gptresume.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
