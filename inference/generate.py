"""``python inference/generate.py ARGS`` is ``gligen-ext generate ARGS``; see ``gligen-ext generate --help``."""

import sys

from gligen_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
