"""``python -m digitrec`` is the ``digitrec`` command."""

from digitrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
