"""``python -m contextwarden.engine FD``: the engine process (see ``server``)."""

import sys

from .server import main

sys.exit(main())
