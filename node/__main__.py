"""`python -m node`: the same as `raftka node`."""

import sys

from node.main import main

sys.exit(main())
