"""`python -m ebpfw` runs the command line (the same as the `ebpfw` entry point)."""

from ebpfw.cli import main

if __name__ == "__main__":
    main()
