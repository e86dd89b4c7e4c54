import sys

from contextwarden.cli import main

sys.exit(main())
