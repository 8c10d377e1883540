"""Local schedules: what one worker process does each step. One file per algorithm, one screen each."""
