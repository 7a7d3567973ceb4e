"""How agent processes are confined: environment, resource limits, user, output caps.

Agent processes run client-chosen code, so they start with almost nothing from the
node: a short allowlist of the node's environment variables plus the task's own
``config.env`` (dynamic-loader and interpreter-injection variables are refused),
resource limits set in the child between fork and exec, their own session and
process group, and, optionally, another user. docs/security.md describes what this
does and does not isolate.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import resource
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["DEFAULT_AGENT_ENV", "Sandbox", "agent_environment", "refused_env_name"]

DEFAULT_AGENT_ENV: Final = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
"""Variables of the node's environment an agent sees by default."""

_REFUSED_PREFIXES: Final = ("LD_", "DYLD_", "SPEAR_")
_REFUSED_NAMES: Final = frozenset(
    {
        "SERVICE_ADDR",
        "SECRET",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RES_OPTIONS",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "PS4",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
    }
)
_PYTHON_ALLOWED: Final = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONUTF8"}
)


def refused_env_name(name: str) -> bool:
    """Whether a task may not set *name*: dynamic-loader variables (``LD_*``,
    ``DYLD_*``, ``GLIBC_TUNABLES``, ...), variables that make an interpreter load
    other code (``PYTHONPATH`` and every other ``PYTHON*`` but a harmless few,
    ``BASH_ENV``, ``PERL5OPT``, ``NODE_OPTIONS``, ...), the node's own variables
    (``SERVICE_ADDR``, ``SECRET``, ``SPEAR_*``), and malformed names."""
    if not name or "=" in name or "\0" in name:
        return True
    upper = name.upper()
    if upper.startswith(_REFUSED_PREFIXES) or upper in _REFUSED_NAMES:
        return True
    return upper.startswith("PYTHON") and upper not in _PYTHON_ALLOWED


@dataclasses.dataclass(frozen=True, slots=True)
class Sandbox:
    """The confinement of every agent process (from the operator's policy).

    A limit of 0 leaves that resource as the node has it.
    """

    env_passthrough: tuple[str, ...] = DEFAULT_AGENT_ENV
    max_address_space_bytes: int = 4 * 1024**3
    """RLIMIT_AS: virtual memory of the agent (and of each process it starts)."""
    max_cpu_s: int = 3600
    """RLIMIT_CPU: CPU seconds over the agent process's life (SIGXCPU, then SIGKILL)."""
    max_open_files: int = 1024
    """RLIMIT_NOFILE."""
    max_processes: int = 4096
    """RLIMIT_NPROC: processes and threads of the agent's user (all of them, system
    wide; not enforced for root)."""
    user: str | None = None
    """Run as this user (and its primary group, no supplementary groups)."""
    max_line_bytes: int = 64 * 1024
    """Longest stdout/stderr line copied to the node log."""
    max_execution_log_bytes: int = 1024 * 1024
    """Log bytes kept for one execution."""
    cgroup_parent: str | None = None
    """A delegated cgroup v2 directory: each instance gets a cgroup under it."""
    cgroup_memory_bytes: int = 0
    """memory.max of an instance's cgroup (the agent and all its descendants); 0: none."""
    cgroup_cpus: float = 0.0
    """cpu.max of an instance's cgroup, in CPUs (1.0 = one core); 0: none."""
    cgroup_pids: int = 0
    """pids.max of an instance's cgroup; 0: none."""

    def limits(self) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) for each limit to set in the child."""
        chosen: list[tuple[int, int, int]] = [(resource.RLIMIT_CORE, 0, 0)]  # no core dumps holding secrets
        for kind, value, slack in (
            (resource.RLIMIT_AS, self.max_address_space_bytes, 0),
            (resource.RLIMIT_CPU, self.max_cpu_s, 1),  # soft: SIGXCPU; hard a second later: SIGKILL
            (resource.RLIMIT_NOFILE, self.max_open_files, 0),
            (resource.RLIMIT_NPROC, self.max_processes, 0),
        ):
            if value <= 0:
                continue
            _, hard = resource.getrlimit(kind)
            ceiling = hard if hard != resource.RLIM_INFINITY else value + slack
            chosen.append((kind, min(value, ceiling), min(value + slack, ceiling)))
        return chosen

    def preexec(self, then: Callable[[], None] | None = None) -> Callable[[], None]:
        """The function run in the child between fork and exec: it sets the limits,
        then runs *then* (joining a cgroup).

        It only calls ``setrlimit`` on values computed beforehand: no locks, no
        imports, nothing that could deadlock in a child forked from a threaded node.
        """
        limits = self.limits()
        setrlimit = resource.setrlimit

        def apply() -> None:
            if then is not None:
                then()
            for kind, soft, hard in limits:
                setrlimit(kind, (soft, hard))

        return apply

    def user_ids(self) -> tuple[int, int] | None:
        """(uid, gid) of :attr:`user`, if set; KeyError for an unknown user."""
        if self.user is None:
            return None
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid


def agent_environment(sandbox: Sandbox, task_env: Mapping[str, str], node_env: Mapping[str, str]) -> dict[str, str]:
    """The environment an agent starts with (before the node adds SERVICE_ADDR,
    SECRET and SPEAR_*): the allowlisted node variables, then the task's own."""
    env = {name: node_env[name] for name in sandbox.env_passthrough if name in node_env}
    env.update(task_env)
    if "PATH" not in env:
        env["PATH"] = os.defpath
    return env
