"""The Python grader sandbox's child process: ``python -I -B sandbox_child.py <limits json>``.

Started by ``finetune/graders/sandbox.py`` with a scrubbed environment, an empty temporary directory as its working
directory and the protocol on stdin/stdout. It imports nothing of tunegate. Before it reads a line of user code:

1. the protocol moves to private descriptors; 0, 1 and 2 point at /dev/null, and ``print`` is discarded;
2. it enters a new user namespace (so that even root keeps no capability outside it: no reboot, no module
   loading, no clock, no signals to others) and a new network namespace, whose only loopback is down — no
   address reaches anything, even through ctypes; ``socket.socket`` is replaced too, for a clear message;
3. Landlock (Linux ≥ 5.13) hides the file system: read-only under the Python installation and the system
   libraries, read-write in its own temporary directory, nothing elsewhere (/etc/passwd, tunegate's data directory
   and database, its code); from Landlock ABI 6 it can neither signal processes outside nor reach abstract sockets
   (file access stays Landlock's and the owner's: a sandbox started by root reads Python's files as their owner);
4. rlimits: address space ``memory_mib``, files written ``file_bytes``, 64 open files, no core dumps, CPU
   ``cpu_seconds`` per item (SIGXCPU ends the process);
5. seccomp: no new processes (fork, vfork, clone without CLONE_THREAD), no sockets, no ptrace, no unshare/setns.

Protocol: a JSON line ``{"source": str, "rows": [[sample, item], ...]}`` in; for each row a line ``{"score": x}``
or ``{"error": "…"}`` out, as soon as it is graded; a worker compiles its (one) source once. The parent owns
wall-clock timeouts and replaces a worker that dies.
"""

import ctypes
import io
import json
import math
import os
import resource
import signal
import sys
import sysconfig

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
SECCOMP = {  # audit arch, syscall numbers
    "x86_64": (
        0xC000003E,
        {
            "clone": 56,
            "fork": 57,
            "vfork": 58,
            "clone3": 435,
            "socket": 41,
            "ptrace": 101,
            "unshare": 272,
            "setns": 308,
        },
    ),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435, "socket": 198, "ptrace": 117, "unshare": 97, "setns": 268}),
}
_libc = ctypes.CDLL(None, use_errno=True)


class _Discard(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def _leave_network() -> str:
    """A new user namespace (so root keeps no capability outside it) and a new network namespace."""
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return f"no user/network namespace (errno {ctypes.get_errno()})"
    return "user+network namespace"


def _landlock(scratch: str) -> str:
    numbers = SYS_LANDLOCK.get(os.uname().machine)
    if numbers is None:
        return "no landlock (unknown architecture)"
    create, add_rule, restrict = numbers
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "no landlock (not enabled in this kernel)"
    read = 1 | 4 | 8  # execute, read file, read dir
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net = 3 if abi >= 4 else 0  # bind / connect TCP

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = Ruleset(fs, net, 3 if abi >= 6 else 0)  # scoped: abstract unix sockets, signals
    size = ctypes.sizeof(Ruleset) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return f"no landlock (errno {ctypes.get_errno()})"
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sys.base_prefix + "/lib", "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo"}
    rules = [(p, read) for p in paths if os.path.isdir(p)] + [(scratch, fs), ("/dev/null", 2 | 4)]
    for path, access in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(access & fs if os.path.isdir(path) else access, fd)
        syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(fd)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
        return f"no landlock (restrict failed, errno {ctypes.get_errno()})"
    os.close(ruleset)
    return f"landlock abi {abi}"


def _seccomp() -> str:
    """A seccomp filter: no new processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so that
    threads fall back to clone), no sockets, no ptrace, no unshare/setns."""
    known = SECCOMP.get(os.uname().machine)
    if known is None:
        return "no seccomp (unknown architecture)"
    arch, numbers = known

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    load, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, errno = 0x7FFF0000, 0x00050000
    code = [
        (load, 0, 0, 4),
        (jeq, 1, 0, arch),
        (ret, 0, 0, 0x80000000),
        (load, 0, 0, 0),
        (jeq, 0, 4, numbers["clone"]),
        (load, 0, 0, 16),
        (jset, 0, 1, 0x10000),
        (ret, 0, 0, allow),
        (ret, 0, 0, errno | 11),
    ]
    for name, error in (
        ("fork", 11),
        ("vfork", 11),
        ("clone3", 38),
        ("socket", 13),
        ("ptrace", 1),
        ("unshare", 1),
        ("setns", 1),
    ):
        if name in numbers:
            code += [(jeq, 0, 1, numbers[name]), (ret, 0, 0, errno | error)]
    code.append((ret, 0, 0, allow))
    filters = (Filter * len(code))(*(Filter(*c) for c in code))
    program = Program(len(code), filters)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # the weaker fallback (not for root)
        return f"no seccomp (errno {ctypes.get_errno()}); RLIMIT_NPROC 0"
    return "seccomp"


def _limits(limits: dict) -> None:
    memory = limits["memory_mib"] * 1024 * 1024
    for kind, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(kind, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing


def _no_network(*_: object, **__: object) -> None:
    raise PermissionError("network access is disabled in the grader sandbox")


def _cpu_budget(seconds: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = used + math.ceil(seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _compile(source: str):  # noqa: ANN202 - the user's grade function
    namespace = {"__name__": "grader", "__builtins__": __builtins__}
    exec(compile(source, "<grader>", "exec"), namespace)  # noqa: S102 - this process is the sandbox
    grade = namespace.get("grade")
    if not callable(grade):
        raise TypeError("the source defines no grade(sample, item) function")
    return grade


def _one(grade, sample, item) -> dict:  # noqa: ANN001
    try:
        value = grade(sample, item)
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, MemoryError: that item errored
        if isinstance(exc, SystemExit):
            return {"error": f"the grader called sys.exit({exc.code!r})"}
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {"error": f"grade() returned {type(value).__name__}, not a number"}
    if not math.isfinite(value):
        return {"error": f"grade() returned {value!r}"}
    return {"score": float(value)}


def main() -> None:
    limits = json.loads(sys.argv[1])
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    requests, replies = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb", buffering=0)
    sys.stdin = io.StringIO()
    sys.stdout = sys.stderr = _Discard()
    import socket

    protections = [_leave_network(), _landlock(os.getcwd())]
    _limits(limits)
    protections.append(_seccomp())
    # deliberately replaced: the grader's code gets no sockets (mypy forbids assigning over a class and a function)
    socket.socket = socket.create_connection = _no_network  # type: ignore[assignment,misc]
    socket.socketpair = socket.fromfd = _no_network  # type: ignore[assignment]
    replies.write(json.dumps({"ready": protections}).encode() + b"\n")
    compiled: dict[str, object] = {}
    for line in requests:
        request = json.loads(line)
        source = request["source"]
        try:
            if source not in compiled:
                compiled.clear()
                compiled[source] = _compile(source)
            grade, problem = compiled[source], None
        except BaseException as exc:  # noqa: BLE001
            grade, problem = None, f"the grader's source failed to load: {type(exc).__name__}: {exc}"[:2000]
        for sample, item in request["rows"]:
            if grade is None:
                reply = {"error": problem}
            else:
                _cpu_budget(limits["cpu_seconds"])
                reply = _one(grade, sample, item)
            replies.write(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    main()
