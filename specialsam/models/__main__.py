"""``python -m specialsam.models list|download|check``: the registry's command line."""

import sys

from specialsam.models.registry import main

if __name__ == "__main__":
    sys.exit(main())
