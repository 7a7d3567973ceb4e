"""A program that never dials back: it writes to stderr and waits forever."""

import sys
import time

print("silent agent: starting but never dialing back", file=sys.stderr, flush=True)
time.sleep(3600)
