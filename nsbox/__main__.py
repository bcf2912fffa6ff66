"""``python -m nsbox``: the ``nsbox`` command."""
import sys

from .cli import main

sys.exit(main())
