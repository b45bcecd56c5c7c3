"""What the TUI tests share: the recorded run folders and a wait on a running app."""

import time
from pathlib import Path

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"


async def until(pilot, condition, seconds: float = 20.0) -> bool:
    """Let the app run until condition() holds (the watcher thread reads run folders twice a
    second), or the time is up; returns whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await pilot.pause(0.1)
    return True
