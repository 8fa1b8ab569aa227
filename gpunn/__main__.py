"""``python -m gpunn``: the ``gpunn`` command line."""

from gpunn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
