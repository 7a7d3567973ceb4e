"""A function that leaves a trace of every run (to prove what ran, and how often)."""

import time

from spear_actors.agent import Agent, log

agent = Agent()


@agent.function
def run(path, value):
    """Append *value* to the file *path*, log it, return it doubled."""
    with open(path, "a") as out:
        out.write(f"{value}\n")
    log(f"ran {value}")
    return 2 * value


@agent.function
def chatty(lines, width):
    """Log *lines* lines of *width* characters."""
    for i in range(lines):
        log(f"{i:06d}" + "x" * (width - 6))
    return lines


@agent.function
def blob(n_bytes):
    return b"x" * n_bytes


@agent.function
def wait(seconds):
    time.sleep(seconds)
    return "waited"


if __name__ == "__main__":
    agent.run()
