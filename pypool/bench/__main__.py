"""``python -m pypool.bench --child ...``: one GPU benchmark child (:mod:`pypool.bench.child`).

The suite itself starts its children with ``-c`` (Note [Child import path] in
:mod:`pypool.bench.common`); this is the same entry point by name.
"""

import sys

from .child import child_main

sys.exit(child_main(sys.argv[1:]))
