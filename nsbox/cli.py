"""The ``nsbox`` command (also ``python -m nsbox``).  (Being written: issue 11.)"""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    print("nsbox: the command line is not written yet", file=sys.stderr)
    return 2
